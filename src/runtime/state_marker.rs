//! perftramp's on/off state, visible from outside the process: while perftramp is enabled, one
//! read-only page of a memfd named `perftramp-enabled` is mapped, so /proc/PID/maps shows
//! `/memfd:perftramp-enabled (deleted)`. `python -m perftramp toggle` and `record --pid` read it
//! to say whether a signal turned perftramp on or off. Nothing is written to disk, and perf
//! ignores it (not executable, not a jitdump name).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// The name /proc/PID/maps shows (after `/memfd:`).
pub const NAME: &std::ffi::CStr = c"perftramp-enabled";

const PAGE: usize = 4096;

/// Address of the mapping while shown, else 0. Changed only with the profiler's lock held.
static MAPPED: AtomicUsize = AtomicUsize::new(0);

/// Maps the marker (no-op if shown). Best effort: without it only the outside view is lost.
pub fn show() {
    if MAPPED.load(Relaxed) != 0 {
        return;
    }
    // SAFETY: NAME is a NUL-terminated string; memfd_create has no other preconditions.
    let fd = unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return;
    }
    // SAFETY: fd is the memfd made above; a fresh shared read-only mapping of its one page
    // cannot alias other memory. The descriptor is closed right after (the mapping keeps it).
    let addr = unsafe {
        let sized = libc::ftruncate(fd, PAGE as libc::off_t) == 0;
        let addr = if sized {
            libc::mmap(std::ptr::null_mut(), PAGE, libc::PROT_READ, libc::MAP_SHARED, fd, 0)
        } else {
            libc::MAP_FAILED
        };
        libc::close(fd);
        addr
    };
    if addr != libc::MAP_FAILED {
        MAPPED.store(addr as usize, Relaxed);
    }
}

/// Unmaps the marker (no-op if hidden).
pub fn hide() {
    let addr = MAPPED.swap(0, Relaxed);
    if addr != 0 {
        // SAFETY: `addr` is the one-page mapping made by `show`, which nothing reads.
        unsafe { libc::munmap(addr as *mut libc::c_void, PAGE) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn visible() -> bool {
        std::fs::read_to_string("/proc/self/maps").unwrap().contains("/memfd:perftramp-enabled")
    }

    #[test]
    fn shown_and_hidden_in_proc_maps() {
        show();
        show();
        assert!(visible());
        assert_eq!(
            std::fs::read_to_string("/proc/self/maps")
                .unwrap()
                .matches("/memfd:perftramp-enabled")
                .count(),
            1
        );
        hide();
        assert!(!visible());
        hide();
    }
}
