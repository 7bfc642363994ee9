//! A C-stack guard for the eval hook.
//!
//! With any eval hook installed, CPython 3.11+ stops inlining Python-to-Python calls: every
//! Python call costs C stack (hook, trampoline, evaluator). A recursion limit raised far enough
//! that plain CPython survives would then overflow the C stack and crash (cpython issue 105003;
//! CPython's own `-X perf` crashes there). The hook checks the stack pointer against this
//! thread's stack bounds and, close to the end, raises RecursionError instead.
//!
//! Where CPython's evaluator checks the C stack itself on entry
//! ([`crate::cpython::EVALUATOR_GUARDS_C_STACK`], 3.14+), every call through the hook is already
//! covered by CPython's own check, and the guard stands aside so that RecursionError comes
//! exactly where plain CPython raises it.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use crate::arch;

/// Headroom kept below the guard for the evaluator, C code between Python frames, and raising
/// and handling the RecursionError itself.
const MARGIN: usize = 256 * 1024;

/// Per-thread guard addresses, keyed by thread pointer (direct-mapped). The hook runs with the
/// GIL held, so entries are never raced (atomics keep Rust's model sound); a collision between
/// two live threads only costs a recomputation. Free-threaded builds (3.14t+) never use the table:
/// from 3.14 the guard is compiled out ([`crate::cpython::EVALUATOR_GUARDS_C_STACK`]), and 3.13t
/// is refused, since a key and its floor are two stores another thread could interleave.
const SLOTS: usize = 256;
static KEYS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];
static FLOORS: [AtomicUsize; SLOTS] = [const { AtomicUsize::new(0) }; SLOTS];

#[inline(always)]
fn slot_of(thread: usize) -> usize {
    // Thread pointers are page-aligned-ish and far apart: mix the middle bits.
    (thread.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) % SLOTS
}

/// True when this thread's guard is cached and the stack pointer is above it: the hot path's
/// whole check (no call). False means "ask [`near_stack_end`]" (first call on this thread, or
/// really near the end).
#[inline(always)]
pub fn clear_of_stack_end() -> bool {
    if crate::cpython::EVALUATOR_GUARDS_C_STACK {
        return true; // compiled out: no thread-pointer lookup on the hot path
    }
    let thread = arch::thread_pointer();
    let slot = slot_of(thread);
    KEYS[slot].load(Relaxed) == thread && arch::stack_pointer() >= FLOORS[slot].load(Relaxed)
}

/// True when the current stack pointer is within [`MARGIN`] of this thread's stack end.
#[inline(always)]
pub fn near_stack_end() -> bool {
    if crate::cpython::EVALUATOR_GUARDS_C_STACK {
        return false;
    }
    let sp = arch::stack_pointer();
    let thread = arch::thread_pointer();
    let slot = slot_of(thread);
    let floor = if KEYS[slot].load(Relaxed) == thread {
        FLOORS[slot].load(Relaxed)
    } else {
        remember(thread, slot, sp)
    };
    sp < floor
}

/// Computes this thread's guard address and caches it. The first time on a thread, registers a
/// thread-exit destructor that forgets the entry, so a later thread reusing the same thread
/// pointer (and perhaps a different stack) never inherits a stale guard.
#[cold]
#[inline(never)]
fn remember(thread: usize, slot: usize, sp: usize) -> usize {
    struct Forget(usize);
    impl Drop for Forget {
        fn drop(&mut self) {
            for (key, floor) in KEYS.iter().zip(FLOORS.iter()) {
                if key.load(Relaxed) == self.0 {
                    key.store(0, Relaxed);
                    floor.store(0, Relaxed);
                }
            }
        }
    }
    thread_local!(static FORGET: std::cell::Cell<Option<Forget>> = const { std::cell::Cell::new(None) });
    // try_with: during thread teardown TLS may be gone; then simply do not cache.
    let registered = FORGET.try_with(|f| {
        let current = f.take();
        let ok = current.as_ref().map(|c| c.0) == Some(thread) || current.is_none();
        f.set(Some(current.unwrap_or(Forget(thread))));
        ok
    });
    let floor = compute_floor(sp);
    if registered == Ok(true) {
        KEYS[slot].store(thread, Relaxed);
        FLOORS[slot].store(floor, Relaxed);
    }
    floor
}

/// Where the guard trips for this thread, from its stack bounds.
#[cold]
#[inline(never)]
fn compute_floor(sp: usize) -> usize {
    if crate::cpython::EVALUATOR_GUARDS_C_STACK {
        return 1;
    }
    match thread_stack_bounds() {
        Some((low, size)) if sp > low && sp <= low + size => floor_for(low, size),
        // Unknown bounds: never trip (1 is below any stack address).
        _ => 1,
    }
}

/// The guard address for a stack `[low, low+size)`: leave MARGIN, or a quarter of a small stack.
pub fn floor_for(low: usize, size: usize) -> usize {
    low + MARGIN.min(size / 4)
}

/// `(lowest address, size)` of the calling thread's stack.
fn thread_stack_bounds() -> Option<(usize, usize)> {
    // SAFETY: pthread_attr_t is plain data initialised by pthread_getattr_np before use and
    // destroyed after; all pointers passed are to locals.
    unsafe {
        let mut attr: libc::pthread_attr_t = std::mem::zeroed();
        if libc::pthread_getattr_np(libc::pthread_self(), &mut attr) != 0 {
            return None;
        }
        let mut addr: *mut libc::c_void = std::ptr::null_mut();
        let mut size: libc::size_t = 0;
        let ok = libc::pthread_attr_getstack(&attr, &mut addr, &mut size) == 0;
        libc::pthread_attr_destroy(&mut attr);
        ok.then_some((addr as usize, size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_leaves_a_margin_or_a_quarter_of_small_stacks() {
        assert_eq!(floor_for(0x1000_0000, 8 << 20), 0x1000_0000 + MARGIN);
        assert_eq!(floor_for(0x1000_0000, 64 * 1024), 0x1000_0000 + 16 * 1024);
    }

    #[test]
    fn this_thread_is_not_near_its_end() {
        assert!(!near_stack_end());
        if crate::cpython::EVALUATOR_GUARDS_C_STACK {
            assert_eq!(compute_floor(arch::stack_pointer()), 1);
        }
        let bounds = thread_stack_bounds().expect("stack bounds");
        assert!(bounds.1 > MARGIN);
    }

    #[test]
    #[cfg_attr(Py_3_14, ignore = "CPython's evaluator guards the C stack itself there")]
    fn deep_recursion_trips_the_guard_before_overflow() {
        // A thread with a 1 MiB stack recursing until the guard trips: it must trip, not crash.
        fn recurse(depth: usize) -> usize {
            let pad = [depth as u8; 512];
            if near_stack_end() {
                return depth;
            }
            std::hint::black_box(&pad);
            recurse(depth + 1) + std::hint::black_box(0)
        }
        let depth = std::thread::Builder::new()
            .stack_size(1 << 20)
            .spawn(|| recurse(0))
            .unwrap()
            .join()
            .unwrap();
        assert!(depth > 100, "{depth}");
    }
}
