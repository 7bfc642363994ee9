//! The one seam between perftramp and CPython's internals: everything that differs between
//! CPython 3.9 and 3.15 (frame layout, symbol names, exception save/restore) lives here, selected
//! by the `Py_3_X` cfgs that build.rs emits. Nothing else in the crate spells a version.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::ptr;

use pyo3::ffi::{self, PyObject, PyThreadState, Py_ssize_t};

/// `PyFrameObject` (3.9, 3.10) or `_PyInterpreterFrame` (3.11+); only [`frame_code`] looks in.
pub type Frame = c_void;

/// CPython's `_PyFrameEvalFunction`: `(tstate, frame, throwflag) -> result`.
pub type EvalFrameFn = unsafe extern "C" fn(*mut PyThreadState, *mut Frame, c_int) -> *mut PyObject;

/// A trampoline: `(tstate, frame, throwflag, evaluator) -> evaluator(tstate, frame, throwflag)`.
pub type TrampolineFn =
    unsafe extern "C" fn(*mut PyThreadState, *mut Frame, c_int, EvalFrameFn) -> *mut PyObject;

// Declared here rather than taken from pyo3-ffi: pyo3-ffi dropped the private eval-frame
// functions, and these signatures use our own `Frame`/`EvalFrameFn` types.
extern "C" {
    fn _PyEval_EvalFrameDefault(
        t: *mut PyThreadState,
        f: *mut Frame,
        throwflag: c_int,
    ) -> *mut PyObject;
    fn _PyInterpreterState_GetEvalFrameFunc(interp: *mut ffi::PyInterpreterState) -> EvalFrameFn;
    fn _PyInterpreterState_SetEvalFrameFunc(interp: *mut ffi::PyInterpreterState, f: EvalFrameFn);

    // 3.12 moved these to the unstable API; before that only the underscore names exist.
    #[cfg_attr(Py_3_12, link_name = "PyUnstable_Eval_RequestCodeExtraIndex")]
    #[cfg_attr(not(Py_3_12), link_name = "_PyEval_RequestCodeExtraIndex")]
    fn request_code_extra_index(free: Option<unsafe extern "C" fn(*mut c_void)>) -> Py_ssize_t;
    #[cfg_attr(Py_3_12, link_name = "PyUnstable_Code_GetExtra")]
    #[cfg_attr(not(Py_3_12), link_name = "_PyCode_GetExtra")]
    fn code_get_extra(code: *mut PyObject, index: Py_ssize_t, extra: *mut *mut c_void) -> c_int;
    #[cfg_attr(Py_3_12, link_name = "PyUnstable_Code_SetExtra")]
    #[cfg_attr(not(Py_3_12), link_name = "_PyCode_SetExtra")]
    fn code_set_extra(code: *mut PyObject, index: Py_ssize_t, extra: *mut c_void) -> c_int;
}

/// Whether this is a free-threaded (PEP 703, `--disable-gil`) build: Python threads run at once,
/// and nothing perftramp shares between them is serialized by a GIL. What changes with it is
/// chosen here and in [`crate::runtime::profiler`]'s lock (see its comments); the hot path is the
/// same code on both builds.
pub const FREE_THREADED: bool = cfg!(Py_GIL_DISABLED);

/// Why this interpreter cannot be hooked safely, if it cannot.
pub fn unsupported_reason() -> Option<&'static str> {
    // 3.13t: perftramp's own C-stack guard (a table keyed by thread, written from the hook) and
    // the 3.12/3.13 C-recursion refund were designed under the GIL, and 3.13t's
    // `_PyCode_SetExtra` reallocates `co_extra` under readers with no deferred free. 3.14t+ has
    // neither of the first two (CPython guards the C stack itself) and is the target.
    if cfg!(all(Py_GIL_DISABLED, not(Py_3_14))) {
        return Some("free-threaded CPython 3.13t is not supported (3.14t and newer are)");
    }
    // 3.15 keeps 3.14's frame layout (tagged f_executable) and eval-frame API; checked on
    // Debian's 3.15.2. Versions after 3.15 are refused until someone verifies them.
    if cfg!(Py_3_16) {
        return Some("CPython 3.16 and newer: the frame layout has not been verified yet");
    }
    None
}

/// The code object a frame runs, or a non-code object (or null) for shims and other
/// executables; callers must check with [`is_code`].
///
/// # Safety
/// `frame` is the frame pointer CPython passed to the eval-frame function.
#[inline(always)]
pub unsafe fn frame_code(frame: *mut Frame) -> *mut PyObject {
    #[cfg(not(Py_3_11))]
    {
        // PyFrameObject: PyObject_VAR_HEAD (24 bytes), f_back, then f_code.
        *(frame as *const u8).add(32).cast::<*mut PyObject>()
    }
    #[cfg(all(Py_3_11, not(Py_3_12)))]
    {
        // _PyInterpreterFrame: f_func, f_globals, f_builtins, f_locals, then f_code.
        *(frame as *const *mut PyObject).add(4)
    }
    #[cfg(all(Py_3_12, not(Py_3_14)))]
    {
        // f_code (3.12) / f_executable (3.13) is the first field.
        *(frame as *const *mut PyObject)
    }
    #[cfg(Py_3_14)]
    {
        // 3.14 and 3.15: f_executable is a _PyStackRef: a pointer with tag bits in its low two bits.
        (*(frame as *const usize) & !3usize) as *mut PyObject
    }
}

/// Whether `obj` is exactly a code object (not a subclass: code cannot be subclassed).
///
/// # Safety
/// `obj` is null or points to a live object.
#[inline(always)]
pub unsafe fn is_code(obj: *mut PyObject) -> bool {
    !obj.is_null() && ffi::Py_TYPE(obj) == &raw mut ffi::PyCode_Type
}

/// A co_extra index of this interpreter. CPython allows 255 per interpreter: request once.
///
/// # Safety
/// Called with the GIL held.
pub unsafe fn new_code_extra_index() -> Option<Py_ssize_t> {
    // No free function: a trampoline outlives its code object (its address is never reused).
    let index = request_code_extra_index(None);
    if index < 0 {
        ffi::PyErr_Clear();
        None
    } else {
        Some(index)
    }
}

/// Offset of `co_extra` in `PyCodeObject` (Include/cpython/code.h; computed with offsetof
/// against each minor version's headers). Reading it directly saves the hot path a call through
/// the PLT into libpython per Python call. `None`: always use the API. The offset is checked
/// against the API at enable ([`verify_direct_code_extra`]) before it is used.
#[cfg(not(Py_3_11))]
const CO_EXTRA_OFFSET: Option<usize> = Some(144);
#[cfg(all(Py_3_11, not(Py_3_12)))]
const CO_EXTRA_OFFSET: Option<usize> = Some(176);
#[cfg(all(Py_3_12, not(Py_3_13)))]
const CO_EXTRA_OFFSET: Option<usize> = Some(184);
#[cfg(all(Py_3_13, not(Py_3_14)))]
const CO_EXTRA_OFFSET: Option<usize> = Some(192);
// 3.14 and 3.15 (Debian's 3.14.10 and 3.15.2 headers). Without it the hook calls
// PyUnstable_Code_GetExtra with an out-parameter on the stack, cannot tail-call the trampoline,
// and costs 64 bytes of C stack per Python call: 7% less recursion depth than `-X perf` (3.14).
#[cfg(all(Py_3_14, not(Py_GIL_DISABLED)))]
const CO_EXTRA_OFFSET: Option<usize> = Some(200);
// Free-threaded 3.14t/3.15t: the object header is 16 bytes longer (ob_tid, ob_flags, ob_mutex,
// ob_gc_bits, ob_ref_local, ob_ref_shared before ob_type), every later field moves by 16.
// Computed from 3.14's code.h, NOT yet checked against a built 3.14t: it is only used once
// [`verify_direct_code_extra`] agrees with the API, which it checks without dereferencing the
// field until the field has been seen to change from null to non-null when the API set it.
#[cfg(all(Py_3_14, Py_GIL_DISABLED))]
const CO_EXTRA_OFFSET: Option<usize> = Some(216);

/// CPython's `_PyCodeObjectExtra`, the same in every version.
#[repr(C)]
struct CodeObjectExtra {
    ce_size: Py_ssize_t,
    ce_extras: [*mut c_void; 1],
}

static DIRECT_CODE_EXTRA: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The pointer stored in `code`'s extra slot `index`, if any. `DIRECT`: read `co_extra` at
/// [`CO_EXTRA_OFFSET`] (only once [`verify_direct_code_extra`] said the layout matches);
/// otherwise call CPython's API.
///
/// # Safety
/// `code` is a live code object, `index` came from [`new_code_extra_index`]; GIL held.
#[inline(always)]
pub unsafe fn code_extra<const DIRECT: bool>(
    code: *mut PyObject,
    index: Py_ssize_t,
) -> *mut c_void {
    if let (true, Some(offset)) = (DIRECT, CO_EXTRA_OFFSET) {
        // What _PyCode_GetExtra does, inline.
        #[cfg(not(Py_GIL_DISABLED))]
        {
            let extra = *(code as *const u8).add(offset).cast::<*const CodeObjectExtra>();
            if extra.is_null() || index >= (*extra).ce_size {
                return ptr::null_mut();
            }
            return *(&raw const (*extra).ce_extras).cast::<*mut c_void>().offset(index);
        }
        // Free-threaded: what 3.14t/3.15t's PyUnstable_Code_GetExtra does since gh-144981, an
        // acquire load of `co_extra` and of the slot, pairing with the release stores of
        // PyUnstable_Code_SetExtra (a grown array is published whole, the old one freed only
        // after every thread passed a quiescent state (QSBR): this thread passes none between
        // these loads and its use of the pointer, so the array cannot be freed under it). The
        // slot's acquire load also orders the read of the trampoline after perftramp's writes
        // to its sinks and arena (all before the SetExtra). On x86_64 both are plain loads.
        #[cfg(Py_GIL_DISABLED)]
        {
            use std::sync::atomic::{AtomicPtr, Ordering::Acquire};
            let field = (code as *const u8).add(offset).cast::<AtomicPtr<CodeObjectExtra>>();
            let extra = (*field).load(Acquire);
            if extra.is_null() || index >= (*extra).ce_size {
                return ptr::null_mut();
            }
            let slots = (&raw const (*extra).ce_extras).cast::<AtomicPtr<c_void>>();
            return (*slots.offset(index)).load(Acquire);
        }
    }
    let mut extra = ptr::null_mut();
    // With a valid index and a code object this cannot fail; a failure leaves extra null.
    code_get_extra(code, index, &mut extra);
    extra
}

/// Whether the hot path reads `co_extra` directly (layout verified) rather than through the API.
pub fn direct_code_extra() -> bool {
    DIRECT_CODE_EXTRA.load(std::sync::atomic::Ordering::Relaxed)
}

/// Whether new trampolines are named from the code object's fields (layout verified) rather
/// than through attribute lookups.
pub fn direct_code_names() -> bool {
    DIRECT_CODE_NAMES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Checks the direct `co_extra` read against CPython's API on a fresh code object and turns it
/// on if they agree (else the API is used). Returns whether the direct read is on.
///
/// # Safety
/// GIL held; `index` came from [`new_code_extra_index`].
pub unsafe fn verify_direct_code_extra(index: Py_ssize_t) -> bool {
    use std::sync::atomic::Ordering::Relaxed;
    if CO_EXTRA_OFFSET.is_none() || DIRECT_CODE_EXTRA.load(Relaxed) {
        return DIRECT_CODE_EXTRA.load(Relaxed);
    }
    let saved = SavedError::take();
    // Three blank lines: a first line number no other field could hold by chance.
    let code = ffi::Py_CompileString(
        c"\n\n\n0".as_ptr(),
        c"<perftramp layout check>".as_ptr(),
        ffi::Py_eval_input,
    );
    let mut ok = false;
    if is_code(code) {
        if let Some(offsets) = CODE_NAME_OFFSETS {
            DIRECT_CODE_NAMES.store(code_names_match(code, offsets), Relaxed);
        }
        let offset = CO_EXTRA_OFFSET.unwrap_or(0);
        // The raw field only, not yet followed: a fresh code object has no co_extra, and the
        // field must become non-null when the API sets one. Only then is it dereferenced, so an
        // offset that is wrong for this build (an unverified layout) never reads through a
        // pointer that is not `co_extra`.
        let raw = || *(code as *const u8).add(offset).cast::<*const c_void>();
        let sentinel = 0x5eed_usize as *mut c_void;
        let empty = raw().is_null();
        let set = code_set_extra(code, index, sentinel) == 0;
        let changed = !raw().is_null();
        ok = empty && set && changed && code_extra::<true>(code, index) == sentinel;
        code_set_extra(code, index, ptr::null_mut());
    }
    ffi::Py_XDECREF(code);
    ffi::PyErr_Clear();
    saved.restore();
    DIRECT_CODE_EXTRA.store(ok, Relaxed);
    ok
}

/// Stores `value` in `code`'s extra slot `index`; false (with no exception left set) on failure.
///
/// # Safety
/// As [`code_extra`].
pub unsafe fn set_code_extra(code: *mut PyObject, index: Py_ssize_t, value: *mut c_void) -> bool {
    if code_set_extra(code, index, value) != 0 {
        ffi::PyErr_Clear();
        return false;
    }
    true
}

/// Runs `f` with this thread detached from the interpreter (the GIL released; on a free-threaded
/// build, the thread parked, so a stop-the-world, e.g. the one `_PyInterpreterState_SetEvalFrameFunc`
/// or the garbage collector does, need not wait for it), then attaches again. For waits on
/// perftramp's own lock: a thread blocked there while attached would deadlock with a thread that
/// holds the lock and stops the world.
///
/// # Safety
/// The thread is attached (holds the GIL) and `f` calls no C API.
pub unsafe fn detached<R>(f: impl FnOnce() -> R) -> R {
    let state = ffi::PyEval_SaveThread();
    let result = f();
    ffi::PyEval_RestoreThread(state);
    result
}

/// The eval-frame function of the current interpreter (CPython's own when none is set).
///
/// # Safety
/// GIL held.
pub unsafe fn current_eval_frame() -> EvalFrameFn {
    _PyInterpreterState_GetEvalFrameFunc(ffi::PyInterpreterState_Get())
}

/// CPython's own evaluator.
pub fn default_eval_frame() -> EvalFrameFn {
    _PyEval_EvalFrameDefault
}

// 3.15 (gh-146031): a custom eval-frame function turns CPython's specializer off unless the hook
// opts in (`_PyInterpreterState_SetEvalFrameAllowSpecialization`). perftramp does not opt in:
// measured on Debian's 3.15.2 with perf 7.2 (--call-graph fp, map mode), the opt-in changes
// neither the share of full Python stacks (100% with and without it, through plain calls,
// methods, __init__, properties, __getitem__ and generators: CPython's own loop still
// deoptimizes every specialized instruction that would push a frame without calling the hook)
// nor the speed (best of 25 interleaved runs, call-heavy and loop-heavy micro benchmarks: within
// 2%), and CPython would then be free to inline calls past the hook (tier-2 traces, later
// releases), which is the one thing perftramp cannot allow. Setting an eval-frame function resets
// the opt-in, so a hook perftramp chained over that had opted in gets it back on restore.
#[cfg(Py_3_15)]
extern "C" {
    fn _PyInterpreterState_SetEvalFrameAllowSpecialization(
        interp: *mut ffi::PyInterpreterState,
        allow: c_int,
    );
    fn _PyInterpreterState_IsSpecializationEnabled(interp: *mut ffi::PyInterpreterState) -> c_int;
}

/// Whether the hook perftramp was installed over had opted in to specialization (3.15+).
#[cfg(Py_3_15)]
static PREVIOUS_ALLOWED_SPECIALIZATION: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Installs perftramp's hook `f` over the current eval-frame function.
///
/// # Safety
/// GIL held; `f` must stay callable for the life of the process.
pub unsafe fn install_eval_frame(f: EvalFrameFn) {
    let interp = ffi::PyInterpreterState_Get();
    #[cfg(Py_3_15)]
    {
        // With no hook installed, "enabled" says nothing about an opt-in.
        let previous = _PyInterpreterState_GetEvalFrameFunc(interp) as usize;
        let allowed = previous != default_eval_frame() as usize
            && _PyInterpreterState_IsSpecializationEnabled(interp) != 0;
        PREVIOUS_ALLOWED_SPECIALIZATION.store(allowed, std::sync::atomic::Ordering::Relaxed);
    }
    _PyInterpreterState_SetEvalFrameFunc(interp, f);
}

/// Puts back `previous`, the eval-frame function perftramp's hook was installed over, with its
/// specialization opt-in (3.15+).
///
/// # Safety
/// GIL held; `previous` is what [`current_eval_frame`] returned before [`install_eval_frame`].
pub unsafe fn restore_eval_frame(previous: EvalFrameFn) {
    let interp = ffi::PyInterpreterState_Get();
    _PyInterpreterState_SetEvalFrameFunc(interp, previous);
    #[cfg(Py_3_15)]
    if PREVIOUS_ALLOWED_SPECIALIZATION.load(std::sync::atomic::Ordering::Relaxed) {
        _PyInterpreterState_SetEvalFrameAllowSpecialization(interp, 1);
    }
}

/// CPython 3.12 and 3.13 charge `PY_EVAL_C_STACK_UNITS` (2) of `tstate->c_recursion_remaining`
/// per entry into the evaluator. Without a hook, Python-to-Python calls are inlined and cost
/// nothing; with any hook, every call re-enters and the usable recursion depth halves (3.12:
/// about 750 frames whatever the recursion limit; CPython's own `-X perf` has the same flaw).
/// perftramp refunds those units around calls made through its hook: the C stack itself is
/// guarded precisely by [`crate::runtime::stack_guard`] instead.
#[cfg(all(Py_3_12, not(Py_3_14)))]
mod c_recursion {
    /// Offsets in `struct _ts` (Include/cpython/pystate.h of the minor version; public struct,
    /// stable within a minor version). Checked at enable against `sys.getrecursionlimit()`.
    #[cfg(not(Py_3_13))]
    pub const PY_RECURSION_LIMIT: usize = 32;
    #[cfg(not(Py_3_13))]
    pub const C_RECURSION_REMAINING: usize = 36;
    #[cfg(Py_3_13)]
    pub const PY_RECURSION_LIMIT: usize = 48;
    #[cfg(Py_3_13)]
    pub const C_RECURSION_REMAINING: usize = 52;
}

#[cfg(all(Py_3_12, not(Py_3_14)))]
static REFUND_C_RECURSION: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// Below this many C-recursion units left, calls through the hook are refunded. Above it they
/// are charged like any evaluator entry: shallow code (the common case) pays nothing extra, deep
/// Python recursion stops consuming units once half of 3.12's budget (1500) is used, and C code
/// recursing at that depth still has that half.
pub const C_RECURSION_REFUND_BELOW: i32 = 750;

/// Checks the thread-state layout the refund relies on, and turns the refund on if it matches.
/// Returns whether the refund is on (always false where CPython has no such counter).
///
/// # Safety
/// GIL held.
pub unsafe fn enable_c_recursion_refund(recursion_limit: i32) -> bool {
    #[cfg(all(Py_3_12, not(Py_3_14)))]
    {
        let tstate = ffi::PyThreadState_Get().cast::<u8>();
        let limit = *tstate.add(c_recursion::PY_RECURSION_LIMIT).cast::<i32>();
        let ok = limit == recursion_limit;
        REFUND_C_RECURSION.store(ok, std::sync::atomic::Ordering::Relaxed);
        ok
    }
    #[cfg(not(all(Py_3_12, not(Py_3_14))))]
    {
        let _ = recursion_limit;
        false
    }
}

/// Whether the C-recursion refund is on (3.12/3.13, layout verified).
pub fn c_recursion_refund() -> bool {
    #[cfg(all(Py_3_12, not(Py_3_14)))]
    return REFUND_C_RECURSION.load(std::sync::atomic::Ordering::Relaxed);
    #[cfg(not(all(Py_3_12, not(Py_3_14))))]
    false
}

/// The thread's C-recursion counter, where CPython has one and its layout was verified.
///
/// # Safety
/// `tstate` is the running thread's state, as CPython passed it to the hook; only called by a
/// hook selected because [`c_recursion_refund`] is true.
#[inline(always)]
pub unsafe fn c_recursion_remaining(tstate: *mut PyThreadState) -> *mut i32 {
    #[cfg(all(Py_3_12, not(Py_3_14)))]
    return tstate.cast::<u8>().add(c_recursion::C_RECURSION_REMAINING).cast::<i32>();
    #[cfg(not(all(Py_3_12, not(Py_3_14))))]
    {
        let _ = tstate;
        unreachable!("no C-recursion counter on this version")
    }
}

/// Whether CPython's evaluator checks the C stack itself on every entry. 3.14 replaced the
/// C-recursion counter with stack-pointer limits (`c_stack_soft_limit`, checked by
/// `_Py_EnterRecursiveCallTstate` at the top of `_PyEval_EvalFrameDefault`, raising
/// RecursionError there and allowing more depth while one is being handled). Every call through
/// the hook enters the evaluator, so that check already covers it; perftramp's own guard
/// (256 KiB before the end) would only trip earlier than CPython does and disagree with it
/// (CPython's test_exceptions saw RecursionError inside sys.unraisablehook), so it is off there.
pub const EVALUATOR_GUARDS_C_STACK: bool = cfg!(Py_3_14);

/// Units the evaluator charges per entry (`PY_EVAL_C_STACK_UNITS`).
pub const C_RECURSION_UNITS: i32 = 2;

/// Raises RecursionError with `message` (replacing any pending exception).
///
/// # Safety
/// GIL held.
pub unsafe fn set_recursion_error(message: &CStr) {
    ffi::PyErr_SetString(ffi::PyExc_RecursionError, message.as_ptr());
}

/// The name, file name and first line of a code object, as UTF-8 bytes.
pub struct CodeNames<'a> {
    /// `co_qualname` (3.11+) or `co_name` (3.9/3.10, which have no qualified name on code).
    pub qualname: &'a [u8],
    pub filename: &'a [u8],
    pub firstlineno: i32,
}

#[cfg(Py_3_11)]
const QUALNAME_ATTR: &CStr = c"co_qualname";
#[cfg(not(Py_3_11))]
const QUALNAME_ATTR: &CStr = c"co_name";

/// Calls `f` with the names of `code`. Any pending exception (a generator being thrown into, for
/// example) is saved and restored around the lookups, so the running program never sees them.
///
/// # Safety
/// `code` is a live code object; GIL held.
pub unsafe fn with_code_names<R>(code: *mut PyObject, f: impl FnOnce(&CodeNames<'_>) -> R) -> R {
    let saved = SavedError::take();
    let (qualname, filename, firstlineno) = match CODE_NAME_OFFSETS {
        Some(offsets) if DIRECT_CODE_NAMES.load(std::sync::atomic::Ordering::Relaxed) => {
            // The fields themselves (layout verified at enable): no attribute lookups.
            let field = |offset: usize| {
                let obj = *(code as *const u8).add(offset).cast::<*mut PyObject>();
                ffi::Py_XINCREF(obj);
                obj
            };
            let line = *(code as *const u8).add(offsets.firstlineno).cast::<i32>();
            (
                OwnedUtf8::of_str(field(offsets.qualname)),
                OwnedUtf8::of_str(field(offsets.filename)),
                line.max(0),
            )
        }
        _ => (
            OwnedUtf8::of_attr(code, QUALNAME_ATTR),
            OwnedUtf8::of_attr(code, c"co_filename"),
            firstlineno_attr(code),
        ),
    };
    let result = f(&CodeNames {
        qualname: qualname.bytes().unwrap_or(b"<unknown>"),
        filename: filename.bytes().unwrap_or(b"<unknown>"),
        firstlineno,
    });
    drop((qualname, filename));
    ffi::PyErr_Clear();
    saved.restore();
    result
}

unsafe fn firstlineno_attr(code: *mut PyObject) -> i32 {
    let obj = ffi::PyObject_GetAttrString(code, c"co_firstlineno".as_ptr());
    let line = if obj.is_null() { 0 } else { ffi::PyLong_AsLong(obj) };
    ffi::Py_XDECREF(obj);
    line.clamp(0, i32::MAX as _) as i32
}

/// Where `PyCodeObject` keeps the fields perftramp names trampolines with (offsetof against
/// each minor version's headers; checked against the attributes at enable).
#[derive(Clone, Copy)]
struct CodeNameOffsets {
    /// `co_qualname` (3.11+) or `co_name`.
    qualname: usize,
    filename: usize,
    /// An `int`.
    firstlineno: usize,
}

#[cfg(not(Py_3_11))]
const CODE_NAME_OFFSETS: Option<CodeNameOffsets> =
    Some(CodeNameOffsets { qualname: 112, filename: 104, firstlineno: 40 });
#[cfg(all(Py_3_11, not(Py_3_12)))]
const CODE_NAME_OFFSETS: Option<CodeNameOffsets> =
    Some(CodeNameOffsets { qualname: 128, filename: 112, firstlineno: 72 });
// The same in 3.12, 3.13, 3.14 and 3.15.
#[cfg(all(Py_3_12, not(Py_GIL_DISABLED)))]
const CODE_NAME_OFFSETS: Option<CodeNameOffsets> =
    Some(CodeNameOffsets { qualname: 128, filename: 112, firstlineno: 68 });
// Free-threaded: 16 bytes more of object header (see CO_EXTRA_OFFSET); computed, checked at
// enable like the others (a mismatch only means attribute lookups).
#[cfg(all(Py_3_12, Py_GIL_DISABLED))]
const CODE_NAME_OFFSETS: Option<CodeNameOffsets> =
    Some(CodeNameOffsets { qualname: 144, filename: 128, firstlineno: 84 });

static DIRECT_CODE_NAMES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Checks [`CODE_NAME_OFFSETS`] on `code` against its attributes.
unsafe fn code_names_match(code: *mut PyObject, offsets: CodeNameOffsets) -> bool {
    let same = |offset: usize, attr: &CStr| {
        let value = ffi::PyObject_GetAttrString(code, attr.as_ptr());
        let field = *(code as *const u8).add(offset).cast::<*mut PyObject>();
        ffi::Py_XDECREF(value);
        !value.is_null() && value == field
    };
    same(offsets.qualname, QUALNAME_ATTR)
        && same(offsets.filename, c"co_filename")
        && *(code as *const u8).add(offsets.firstlineno).cast::<i32>() == firstlineno_attr(code)
}

/// UTF-8 bytes of a str attribute, kept alive by the object that owns them.
struct OwnedUtf8 {
    owner: *mut PyObject,
    data: *const c_char,
    len: Py_ssize_t,
}

impl OwnedUtf8 {
    unsafe fn of_attr(obj: *mut PyObject, attr: &CStr) -> Self {
        Self::of_str(ffi::PyObject_GetAttrString(obj, attr.as_ptr()))
    }

    /// Takes ownership of `value` (a new reference, or null).
    unsafe fn of_str(value: *mut PyObject) -> Self {
        let none = OwnedUtf8 { owner: ptr::null_mut(), data: ptr::null(), len: 0 };
        if value.is_null() || ffi::PyUnicode_Check(value) == 0 {
            ffi::Py_XDECREF(value);
            ffi::PyErr_Clear();
            return none;
        }
        let mut len: Py_ssize_t = 0;
        let data = ffi::PyUnicode_AsUTF8AndSize(value, &mut len);
        if !data.is_null() {
            // The UTF-8 buffer is cached in the str, which `value` keeps alive.
            return OwnedUtf8 { owner: value, data, len };
        }
        // Lone surrogates (undecodable file names) have no UTF-8 form: escape them instead.
        ffi::PyErr_Clear();
        let bytes =
            ffi::PyUnicode_AsEncodedString(value, c"utf-8".as_ptr(), c"backslashreplace".as_ptr());
        ffi::Py_DECREF(value);
        if bytes.is_null() {
            ffi::PyErr_Clear();
            return none;
        }
        let mut data: *mut c_char = ptr::null_mut();
        if ffi::PyBytes_AsStringAndSize(bytes, &mut data, &mut len) != 0 {
            ffi::PyErr_Clear();
            ffi::Py_DECREF(bytes);
            return none;
        }
        OwnedUtf8 { owner: bytes, data, len }
    }

    fn bytes(&self) -> Option<&[u8]> {
        if self.data.is_null() {
            return None;
        }
        // SAFETY: data/len describe a buffer owned by `owner`, which we hold a reference to.
        Some(unsafe { std::slice::from_raw_parts(self.data.cast::<u8>(), self.len as usize) })
    }
}

impl Drop for OwnedUtf8 {
    fn drop(&mut self) {
        // SAFETY: owner is null or a reference we own; the GIL is held by with_code_names' caller.
        unsafe { ffi::Py_XDECREF(self.owner) }
    }
}

/// The exception pending in this thread, taken out so C-API calls cannot disturb it.
struct SavedError {
    #[cfg(Py_3_12)]
    exc: *mut PyObject,
    #[cfg(not(Py_3_12))]
    parts: [*mut PyObject; 3],
}

impl SavedError {
    unsafe fn take() -> Self {
        #[cfg(Py_3_12)]
        {
            SavedError { exc: ffi::PyErr_GetRaisedException() }
        }
        #[cfg(not(Py_3_12))]
        {
            let mut parts = [ptr::null_mut(); 3];
            ffi::PyErr_Fetch(&mut parts[0], &mut parts[1], &mut parts[2]);
            SavedError { parts }
        }
    }

    unsafe fn restore(self) {
        #[cfg(Py_3_12)]
        {
            ffi::PyErr_SetRaisedException(self.exc)
        }
        #[cfg(not(Py_3_12))]
        {
            ffi::PyErr_Restore(self.parts[0], self.parts[1], self.parts[2])
        }
    }
}
