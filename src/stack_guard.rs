//! A C-stack guard for the eval hook.
//!
//! With any eval hook installed, CPython 3.11+ stops inlining Python-to-Python calls: every
//! Python call costs C stack (hook, trampoline, evaluator). A recursion limit raised far enough
//! that plain CPython survives would then overflow the C stack and crash (cpython issue 105003;
//! CPython's own `-X perf` crashes there). The hook checks the stack pointer against this
//! thread's stack bounds and, close to the end, raises RecursionError instead.

use std::cell::Cell;

/// Headroom kept below the guard for the evaluator, C code between Python frames, and raising
/// and handling the RecursionError itself.
const MARGIN: usize = 256 * 1024;

thread_local! {
    /// Lowest usable stack address of this thread plus the margin; 0 until first computed, 1
    /// when the bounds are unknown (the guard never trips).
    static FLOOR: Cell<usize> = const { Cell::new(0) };
}

/// True when the current stack pointer is within [`MARGIN`] of this thread's stack end.
#[inline(always)]
pub fn near_stack_end() -> bool {
    let marker = 0u8;
    let sp = std::ptr::addr_of!(marker) as usize;
    let floor = FLOOR.with(|f| {
        let v = f.get();
        if v != 0 {
            v
        } else {
            let computed = compute_floor(sp);
            f.set(computed);
            computed
        }
    });
    sp < floor
}

/// Where the guard trips for this thread, from its stack bounds.
#[cold]
#[inline(never)]
fn compute_floor(sp: usize) -> usize {
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
        let bounds = thread_stack_bounds().expect("stack bounds");
        assert!(bounds.1 > MARGIN);
    }

    #[test]
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
