//! The PEP 523 eval-frame hook: the hot path.
//!
//! Per Python frame: find the code object, look its trampoline up in a co_extra slot (one
//! pointer load after CPython's bounds checks), and call `trampoline(tstate, frame, throwflag,
//! evaluator)`. Nothing is allocated and no lock is taken unless the code object has no
//! trampoline yet; then [`make_trampoline`] (cold) makes one.
//!
//! The evaluator is whatever was installed before perftramp (normally
//! `_PyEval_EvalFrameDefault`, or a debugger's/JIT's hook, which we chain to and restore).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::Relaxed};

use pyo3::ffi::{PyObject, PyThreadState};

use crate::cpython::{self, EvalFrameFn, Frame, TrampolineFn};
use crate::profiler;
use crate::stack_guard;

/// The evaluator perftramp chains to (an `EvalFrameFn`, stored as an address).
static PREVIOUS: AtomicUsize = AtomicUsize::new(0);
/// perftramp's co_extra index, requested once per process; -1 until then.
static EXTRA_INDEX: AtomicIsize = AtomicIsize::new(-1);
/// Whether frames get trampolines. Off means the hook, where still installed, passes through.
static ACTIVE: AtomicBool = AtomicBool::new(false);
/// Whether our hook is in the interpreter's chain (possibly under another hook installed later).
static INSTALLED: AtomicBool = AtomicBool::new(false);

#[inline(always)]
fn previous() -> EvalFrameFn {
    // SAFETY: PREVIOUS is set from a valid EvalFrameFn before the hook is ever installed, and
    // never reset to anything else.
    unsafe { std::mem::transmute::<usize, EvalFrameFn>(PREVIOUS.load(Relaxed)) }
}

/// The hook CPython calls for every frame while it is installed.
///
/// # Safety
/// Called by CPython with the arguments of an eval-frame function, GIL held.
pub unsafe extern "C" fn eval_frame(
    tstate: *mut PyThreadState,
    frame: *mut Frame,
    throwflag: c_int,
) -> *mut PyObject {
    let evaluator = previous();
    if stack_guard::near_stack_end() {
        return overflow(tstate, frame, evaluator);
    }
    cpython::refund_c_recursion(tstate);
    let result = 'run: {
        if ACTIVE.load(Relaxed) {
            let code = cpython::frame_code(frame);
            if cpython::is_code(code) {
                let mut trampoline = cpython::code_extra(code, EXTRA_INDEX.load(Relaxed));
                if trampoline.is_null() {
                    trampoline = make_trampoline(code);
                }
                if !trampoline.is_null() {
                    // SAFETY: every non-null extra under our index is a slot holding the stub.
                    let trampoline = std::mem::transmute::<*mut c_void, TrampolineFn>(trampoline);
                    break 'run trampoline(tstate, frame, throwflag, evaluator);
                }
            }
        }
        evaluator(tstate, frame, throwflag)
    };
    cpython::recharge_c_recursion(tstate);
    result
}

/// The C stack is nearly exhausted: raise RecursionError in the frame instead of running it.
/// The evaluator is entered in "throw" mode, exactly as for `generator.throw()`, so CPython
/// unwinds and clears the frame itself.
#[cold]
#[inline(never)]
unsafe fn overflow(tstate: *mut PyThreadState, frame: *mut Frame, evaluator: EvalFrameFn) -> *mut PyObject {
    cpython::set_recursion_error(
        c"maximum recursion depth exceeded: the C stack is nearly exhausted (with perftramp on, every \
          Python call uses C stack; lower sys.setrecursionlimit() or give the thread a larger stack: \
          ulimit -s, threading.stack_size())",
    );
    evaluator(tstate, frame, 1)
}

/// Makes, names and records a trampoline for `code`; null if none could be made (the frame
/// then runs without one).
#[cold]
#[inline(never)]
unsafe fn make_trampoline(code: *mut PyObject) -> *mut c_void {
    cpython::with_code_names(code, |names| {
        let Some(slot) = profiler::make_trampoline(names) else {
            return std::ptr::null_mut();
        };
        // If storing fails (out of memory) the slot is simply made again next time.
        cpython::set_code_extra(code, EXTRA_INDEX.load(Relaxed), slot);
        slot
    })
}

/// Makes `code`'s trampoline now if it has none (precompiling before fork). Returns whether one
/// was made; `None` if none could be.
///
/// # Safety
/// `code` is a live code object; GIL held; [`ensure_extra_index`] returned true.
pub unsafe fn precompile(code: *mut PyObject) -> Option<bool> {
    if !cpython::code_extra(code, EXTRA_INDEX.load(Relaxed)).is_null() {
        return Some(false);
    }
    (!make_trampoline(code).is_null()).then_some(true)
}

/// Makes sure the co_extra index exists. Returns false if CPython has none left.
///
/// # Safety
/// GIL held.
pub unsafe fn ensure_extra_index() -> bool {
    if EXTRA_INDEX.load(Relaxed) >= 0 {
        return true;
    }
    match cpython::new_code_extra_index() {
        Some(index) => {
            cpython::verify_direct_code_extra(index);
            EXTRA_INDEX.store(index, Relaxed);
            true
        }
        None => false,
    }
}

/// Turns trampolines on, installing the hook on top of the current evaluator if it is not
/// already in the chain.
///
/// # Safety
/// GIL held; [`ensure_extra_index`] returned true.
pub unsafe fn activate() {
    let ours = eval_frame as EvalFrameFn;
    let current = cpython::current_eval_frame();
    if current as usize != ours as usize && !INSTALLED.load(Relaxed) {
        PREVIOUS.store(current as usize, Relaxed);
        cpython::set_eval_frame(ours);
    }
    INSTALLED.store(true, Relaxed);
    ACTIVE.store(true, Relaxed);
}

/// What [`deactivate`] could do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deactivated {
    /// The evaluator that was there before perftramp is back.
    Restored,
    /// Another hook was installed on top of ours and still calls it: ours stays in its chain
    /// but passes every frame straight through.
    PassThrough,
}

/// Turns trampolines off and puts the previous evaluator back if nobody chained over us.
///
/// # Safety
/// GIL held.
pub unsafe fn deactivate() -> Deactivated {
    ACTIVE.store(false, Relaxed);
    let ours = eval_frame as EvalFrameFn;
    if cpython::current_eval_frame() as usize == ours as usize {
        cpython::set_eval_frame(previous());
        INSTALLED.store(false, Relaxed);
        Deactivated::Restored
    } else {
        Deactivated::PassThrough
    }
}

pub fn is_active() -> bool {
    ACTIVE.load(Relaxed)
}

/// Whether perftramp chains to something other than CPython's own evaluator.
///
/// # Safety
/// GIL held.
pub unsafe fn chains_to_other_hook() -> bool {
    INSTALLED.load(Relaxed) && PREVIOUS.load(Relaxed) != cpython::default_eval_frame() as usize
}
