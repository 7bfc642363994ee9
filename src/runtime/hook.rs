//! The PEP 523 eval-frame hook: the hot path.
//!
//! Per Python frame: check the C stack, find the code object, look its trampoline up in a
//! co_extra slot (a few loads), and tail-call `trampoline(tstate, frame, throwflag, evaluator)`. Nothing is allocated and no lock is taken unless the code object has no
//! trampoline yet; then [`make_trampoline`] (cold) makes one.
//!
//! The evaluator is whatever was installed before perftramp (normally
//! `_PyEval_EvalFrameDefault`, or a debugger's/JIT's hook, which we chain to and restore).
//!
//! Threads: on a free-threaded build the hook runs in many threads at once, and it is the same
//! code. Every static it reads is an atomic written before the hook is installed
//! (`_PyInterpreterState_SetEvalFrameFunc` stops the world around the store on free-threaded
//! builds, which orders those writes before any thread's first call) or a flag whose stale value
//! is harmless (ACTIVE: a frame that starts just after `disable()` may still get its trampoline,
//! which stays valid forever). The `co_extra` read is synchronized in [`cpython::code_extra`];
//! a trampoline is only ever published there after it is named and its arena is executable
//! ([`profiler::make_trampoline`]).

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicUsize, Ordering::Relaxed};

use pyo3::ffi::{PyObject, PyThreadState};

use crate::cpython::{self, EvalFrameFn, Frame, TrampolineFn};
use crate::runtime::profiler;
use crate::runtime::stack_guard;

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

/// The hook CPython calls for every frame while it is installed, specialised at activation
/// for what was verified on this interpreter (see [`selected`]): `DIRECT`, read `co_extra`
/// without a call; `REFUND`, the 3.12/3.13 C-recursion refund.
///
/// Every way out is a tail call (into the trampoline, the evaluator, or [`eval_frame_slow`]),
/// so the hook saves no registers and leaves no frame of its own on the stack: the trampoline's
/// frame record links straight to the caller's.
///
/// # Safety
/// Called by CPython with the arguments of an eval-frame function, GIL held.
pub unsafe extern "C" fn eval_frame<const DIRECT: bool, const REFUND: bool>(
    tstate: *mut PyThreadState,
    frame: *mut Frame,
    throwflag: c_int,
) -> *mut PyObject {
    if !stack_guard::clear_of_stack_end() {
        return eval_frame_slow::<DIRECT, REFUND>(tstate, frame, throwflag);
    }
    let evaluator = previous();
    if !ACTIVE.load(Relaxed) {
        return evaluator(tstate, frame, throwflag);
    }
    let code = cpython::frame_code(frame);
    if !cpython::is_code(code) {
        return evaluator(tstate, frame, throwflag);
    }
    let trampoline = cpython::code_extra::<DIRECT>(code, EXTRA_INDEX.load(Relaxed));
    if trampoline.is_null()
        || (REFUND && *cpython::c_recursion_remaining(tstate) < cpython::C_RECURSION_REFUND_BELOW)
    {
        return eval_frame_slow::<DIRECT, REFUND>(tstate, frame, throwflag);
    }
    // SAFETY: every non-null extra under our index is a slot holding the stub.
    let trampoline = std::mem::transmute::<*mut c_void, TrampolineFn>(trampoline);
    trampoline(tstate, frame, throwflag, evaluator)
}

/// Everything the hot path leaves out: the first call on a thread (its stack bounds), the C
/// stack nearly exhausted, a code object without a trampoline yet, and the C-recursion refund.
#[cold]
#[inline(never)]
unsafe extern "C" fn eval_frame_slow<const DIRECT: bool, const REFUND: bool>(
    tstate: *mut PyThreadState,
    frame: *mut Frame,
    throwflag: c_int,
) -> *mut PyObject {
    let evaluator = previous();
    if stack_guard::near_stack_end() {
        return overflow(tstate, frame, evaluator);
    }
    let trampoline = trampoline_for::<DIRECT>(frame);
    if trampoline.is_null() {
        return evaluator(tstate, frame, throwflag);
    }
    // SAFETY: every non-null extra under our index is a slot holding the stub.
    let trampoline = std::mem::transmute::<*mut c_void, TrampolineFn>(trampoline);
    if REFUND {
        let remaining = cpython::c_recursion_remaining(tstate);
        if *remaining < cpython::C_RECURSION_REFUND_BELOW {
            return refunded(remaining, trampoline, tstate, frame, throwflag, evaluator);
        }
    }
    trampoline(tstate, frame, throwflag, evaluator)
}

/// The trampoline of the frame's code object (made on first sight), or null: perftramp off,
/// not a code object, or none could be made.
#[inline(always)]
unsafe fn trampoline_for<const DIRECT: bool>(frame: *mut Frame) -> *mut c_void {
    if !ACTIVE.load(Relaxed) {
        return std::ptr::null_mut();
    }
    let code = cpython::frame_code(frame);
    if !cpython::is_code(code) {
        return std::ptr::null_mut();
    }
    let trampoline = cpython::code_extra::<DIRECT>(code, EXTRA_INDEX.load(Relaxed));
    if !trampoline.is_null() {
        return trampoline;
    }
    make_trampoline(code)
}

/// A call deep enough that the thread's C-recursion budget runs low: give back the units the
/// evaluator charges for this entry, and take them again after (see
/// [`cpython::C_RECURSION_REFUND_BELOW`]).
#[inline(always)]
unsafe fn refunded(
    remaining: *mut i32,
    trampoline: TrampolineFn,
    tstate: *mut PyThreadState,
    frame: *mut Frame,
    throwflag: c_int,
    evaluator: EvalFrameFn,
) -> *mut PyObject {
    *remaining += cpython::C_RECURSION_UNITS;
    let result = trampoline(tstate, frame, throwflag, evaluator);
    // The evaluator gave its own units back on return; take back the refund.
    *remaining -= cpython::C_RECURSION_UNITS;
    result
}

/// The hook variant for what was verified at enable.
fn selected() -> EvalFrameFn {
    match (cpython::direct_code_extra(), cpython::c_recursion_refund()) {
        (true, true) => eval_frame::<true, true>,
        (true, false) => eval_frame::<true, false>,
        (false, true) => eval_frame::<false, true>,
        (false, false) => eval_frame::<false, false>,
    }
}

/// The variant installed (an `EvalFrameFn` address), 0 before the first activation.
static OURS: AtomicUsize = AtomicUsize::new(0);

/// The C stack is nearly exhausted: raise RecursionError in the frame instead of running it.
/// The evaluator is entered in "throw" mode, exactly as for `generator.throw()`, so CPython
/// unwinds and clears the frame itself.
#[cold]
#[inline(never)]
unsafe fn overflow(
    tstate: *mut PyThreadState,
    frame: *mut Frame,
    evaluator: EvalFrameFn,
) -> *mut PyObject {
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
    let index = EXTRA_INDEX.load(Relaxed);
    cpython::with_code_names(code, |names| {
        profiler::make_trampoline(
            names,
            // Read again under the profiler's lock: another thread may have made it meanwhile.
            || cpython::code_extra::<false>(code, index),
            // Published under that lock, after every sink named it. If storing fails (out of
            // memory) the slot is simply made again next time.
            |slot| {
                cpython::set_code_extra(code, index, slot);
            },
        )
        .unwrap_or(std::ptr::null_mut())
    })
}

/// Makes `code`'s trampoline now if it has none (precompiling before fork). Returns whether one
/// was made; `None` if none could be.
///
/// # Safety
/// `code` is a live code object; GIL held; [`ensure_extra_index`] returned true.
pub unsafe fn precompile(code: *mut PyObject) -> Option<bool> {
    if !cpython::code_extra::<false>(code, EXTRA_INDEX.load(Relaxed)).is_null() {
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
    if OURS.load(Relaxed) == 0 {
        OURS.store(selected() as usize, Relaxed);
    }
    let ours = OURS.load(Relaxed);
    let current = cpython::current_eval_frame() as usize;
    if current != ours && !INSTALLED.load(Relaxed) {
        PREVIOUS.store(current, Relaxed);
        // SAFETY: OURS holds one of the eval_frame variants.
        cpython::install_eval_frame(std::mem::transmute::<usize, EvalFrameFn>(ours));
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
    if cpython::current_eval_frame() as usize == OURS.load(Relaxed) {
        cpython::restore_eval_frame(previous());
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
