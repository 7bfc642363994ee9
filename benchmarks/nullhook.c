/* A PEP 523 eval-frame hook that does nothing but call CPython's evaluator.
 *
 * benchmarks/run.py --floor measures it beside CPython's -X perf and perftramp: it is what any
 * tool that gives Python functions their own native frames through an eval hook pays at least
 * (CPython stops inlining Python-to-Python calls while any hook is set), so `null hook / -X perf`
 * bounds from below the ratio such a tool can reach against -X perf.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <frameobject.h>

#if PY_VERSION_HEX >= 0x030B0000
typedef struct _PyInterpreterFrame Frame;
#else
typedef PyFrameObject Frame;
#endif

static PyObject *null_hook(PyThreadState *tstate, Frame *frame, int throwflag)
{
    return _PyEval_EvalFrameDefault(tstate, frame, throwflag);
}

static PyObject *install(PyObject *self, PyObject *unused)
{
    _PyInterpreterState_SetEvalFrameFunc(PyInterpreterState_Get(), null_hook);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"install", install, METH_NOARGS, "Install the null eval-frame hook."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_nullhook", NULL, -1, methods};

PyMODINIT_FUNC PyInit__nullhook(void) { return PyModule_Create(&module); }
