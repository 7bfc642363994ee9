//! Executable memory for trampolines.
//!
//! Arenas are mapped read-write, filled completely with copies of the stub, then switched to
//! read-execute once: no page is ever writable and executable at the same time. Slots are
//! handed out by bumping an offset, so making a trampoline writes no code at all.
//!
//! Arenas are never unmapped while the process lives: a frame in another thread, or further up
//! this thread's stack, may still be running through a trampoline after perftramp is disabled
//! (CPython shipped exactly that bug: cpython issue 112367). The perf map also forbids reusing
//! an address for another function while the map file exists.

use std::io;
use std::ptr::NonNull;

use crate::arch::{self, Arch};

/// Size of one arena, as CPython's perf trampoline uses: 4096 map-mode slots on x86_64.
pub const ARENA_SIZE: usize = 64 * 1024;

/// Rounds `n` up to a multiple of `align` (a power of two).
pub const fn align_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// Offsets of the slots an arena of `arena_size` bytes holds for `slot_size`-byte slots.
/// Pure, so the slot arithmetic is unit-tested without mapping anything.
pub fn slots_per_arena(arena_size: usize, slot_size: usize) -> usize {
    arena_size / slot_size
}

/// Where arenas come from. Anonymous memory ([`Anonymous`]) for the perf map and the jitdump;
/// the elf mode's sink maps each arena from an ELF file it writes (`elf_sink`).
pub trait ArenaBacking {
    /// Maps a read-execute arena of [`ARENA_SIZE`] bytes whose every `slot_size` slot starts
    /// with `arch`'s stub (traps elsewhere), never writable while executable. Returns its start.
    fn map_arena(&mut self, arch: &'static Arch, slot_size: usize) -> io::Result<NonNull<u8>>;
}

/// Anonymous private memory, filled then switched to read-execute.
pub struct Anonymous;

impl ArenaBacking for Anonymous {
    fn map_arena(&mut self, arch: &'static Arch, slot_size: usize) -> io::Result<NonNull<u8>> {
        map_arena(arch, slot_size, ARENA_SIZE)
    }
}

/// Bump allocator over a growing list of read-execute arenas of equal-sized slots.
pub struct ExecMemory {
    arch: &'static Arch,
    /// Bytes per slot: the arch's stride in map mode, stub + unwind room in jit mode.
    slot_size: usize,
    /// Start of the current arena and the offset of its next free byte.
    current: Option<(NonNull<u8>, usize)>,
    /// Bytes of executable memory mapped so far (never decreases).
    mapped_bytes: usize,
    /// Bytes handed out as slots.
    used_bytes: usize,
}

// SAFETY: the raw pointers are addresses of process-wide, never-unmapped mappings; the struct is
// only mutated behind the profiler's mutex, which is what makes the bump allocation atomic when
// threads run at once (free-threaded builds): no slot is handed out twice. An arena is filled and
// made read-execute before its first slot is handed out, so a slot another thread receives
// through `co_extra` is executable already.
unsafe impl Send for ExecMemory {}

impl ExecMemory {
    pub fn new(arch: &'static Arch, slot_size: usize) -> Self {
        assert!(
            slot_size >= arch.code.len() && slot_size.is_multiple_of(16) && slot_size <= ARENA_SIZE
        );
        ExecMemory { arch, slot_size, current: None, mapped_bytes: 0, used_bytes: 0 }
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    pub fn arch(&self) -> &'static Arch {
        self.arch
    }

    pub fn mapped_bytes(&self) -> usize {
        self.mapped_bytes
    }

    pub fn used_bytes(&self) -> usize {
        self.used_bytes
    }

    /// Stops handing out slots of the current arena: the next slot comes from a new one.
    ///
    /// A fork child calls this. The arena it inherited is a mapping perf attributes to the
    /// parent (perf copies a parent's mappings to the child at fork, and names addresses in them
    /// from the parent's perf map or jitdump), and the parent goes on filling it. A child that
    /// made trampolines there would have them named by the parent's files: perf would show the
    /// parent's functions for the child's code. An arena the child maps itself is the child's in
    /// perf's eyes, named from the child's own files. The inherited arenas stay mapped, so
    /// inherited trampolines keep working (and keep the parent's names, which are theirs).
    pub fn retire_current_arena(&mut self) {
        self.current = None;
    }

    /// Returns the address of a fresh slot, whose first bytes are the stub. Maps a new arena
    /// from `backing` when the current one is full.
    pub fn allocate(&mut self, backing: &mut dyn ArenaBacking) -> io::Result<NonNull<u8>> {
        let slot_size = self.slot_size;
        let (base, used) = match self.current {
            Some((base, used)) if used + slot_size <= ARENA_SIZE => (base, used),
            _ => (backing.map_arena(self.arch, slot_size)?, 0),
        };
        if used == 0 {
            self.mapped_bytes += ARENA_SIZE;
        }
        self.current = Some((base, used + slot_size));
        self.used_bytes += slot_size;
        // SAFETY: used + slot_size <= ARENA_SIZE, so the slot lies inside the arena.
        Ok(unsafe { NonNull::new_unchecked(base.as_ptr().add(used)) })
    }
}

/// Maps `size` bytes, fills them with traps and a stub at the start of every `slot_size` slot,
/// and makes them read-execute.
fn map_arena(arch: &Arch, slot_size: usize, size: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous private mapping with no address hint cannot alias existing memory.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = ptr.cast::<u8>();
    {
        // SAFETY: the mapping is `size` bytes, readable and writable, and ours alone.
        let bytes = unsafe { std::slice::from_raw_parts_mut(base, size) };
        fill_arena(arch, slot_size, bytes);
    }
    // SAFETY: [base, base+size) is the mapping made above.
    if unsafe { libc::mprotect(ptr, size, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
        let err = io::Error::last_os_error();
        // SAFETY: nothing points into the arena yet.
        unsafe { libc::munmap(ptr, size) };
        return Err(err);
    }
    // SAFETY: the range is mapped (read-execute now).
    unsafe { arch::flush_instruction_cache(base, size) };
    // SAFETY: mmap never returns null on success without MAP_FIXED.
    Ok(unsafe { NonNull::new_unchecked(base) })
}

/// Trap instructions everywhere, then the stub at the start of each whole slot. Pure, so the
/// layout is unit-tested for every arch on any host.
pub fn fill_arena(arch: &Arch, slot_size: usize, bytes: &mut [u8]) {
    for chunk in bytes.chunks_mut(arch.trap.len()) {
        chunk.copy_from_slice(&arch.trap[..chunk.len()]);
    }
    for slot in bytes.chunks_exact_mut(slot_size) {
        slot[..arch.code.len()].copy_from_slice(arch.code);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_arithmetic() {
        assert_eq!(align_up(12, 16), 16);
        assert_eq!(align_up(16, 16), 16);
        assert_eq!(align_up(17, 8), 24);
        assert_eq!(slots_per_arena(ARENA_SIZE, 16), 4096);
        assert_eq!(slots_per_arena(ARENA_SIZE, 48), 1365);
    }

    #[test]
    fn map_slots_are_exactly_the_template_and_jit_slots_start_with_the_stub() {
        for arch in arch::ALL {
            let mut bytes = vec![0u8; 4096];
            fill_arena(arch, arch.slot_stride, &mut bytes);
            for slot in bytes.chunks_exact(arch.slot_stride) {
                assert_eq!(slot, arch.slot_template, "{}", arch.name);
            }
            fill_arena(arch, 96, &mut bytes);
            for slot in bytes.chunks_exact(96) {
                assert_eq!(&slot[..arch.code.len()], arch.code);
                assert!(slot[arch.code.len()..].chunks(arch.trap.len()).all(|t| t == arch.trap));
            }
        }
    }

    // Native arenas: x86_64 here, aarch64 under qemu-user (scripts/aarch64-tier.sh).
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn slots_hold_the_stub_and_arenas_grow() {
        let arch = arch::native().unwrap();
        let stride = arch.slot_stride;
        let mut mem = ExecMemory::new(arch, stride);
        let first = mem.allocate(&mut Anonymous).unwrap();
        let second = mem.allocate(&mut Anonymous).unwrap();
        assert_eq!(second.as_ptr() as usize - first.as_ptr() as usize, stride);
        // SAFETY: slots are mapped readable.
        let code = unsafe { std::slice::from_raw_parts(second.as_ptr(), stride) };
        assert_eq!(code, arch.slot_template);
        let per_arena = slots_per_arena(ARENA_SIZE, stride);
        for _ in 2..per_arena {
            mem.allocate(&mut Anonymous).unwrap();
        }
        assert_eq!(mem.mapped_bytes(), ARENA_SIZE);
        mem.allocate(&mut Anonymous).unwrap();
        assert_eq!(mem.mapped_bytes(), 2 * ARENA_SIZE);
        assert_eq!(mem.used_bytes(), (per_arena + 1) * stride);
    }

    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn a_retired_arena_gets_no_more_slots() {
        let arch = arch::native().unwrap();
        let mut mem = ExecMemory::new(arch, arch.slot_stride);
        let first = mem.allocate(&mut Anonymous).unwrap().as_ptr() as usize;
        mem.retire_current_arena();
        let second = mem.allocate(&mut Anonymous).unwrap().as_ptr() as usize;
        assert!(second < first || second >= first + ARENA_SIZE, "{first:#x} {second:#x}");
        assert_eq!(mem.mapped_bytes(), 2 * ARENA_SIZE);
        let third = mem.allocate(&mut Anonymous).unwrap().as_ptr() as usize;
        assert_eq!(third, second + arch.slot_stride, "the new arena is used from then on");
    }
}
