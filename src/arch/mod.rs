//! Per-architecture facts: the trampoline stub, how it unwinds, and how its memory is made
//! executable. Every architecture is plain data plus small functions that compile and unit-test
//! on any host, so an x86_64 machine checks the aarch64 encodings too; only [`native`] is chosen
//! by `cfg`.
//!
//! The stub is called as `stub(tstate, frame, throwflag, evaluator)`: the first three arguments
//! pass through untouched to `evaluator`, which is the fourth argument. It pushes a frame record
//! (saved frame pointer + return address) so that frame-pointer unwinding walks through it, and
//! each Python code object gets its own copy at its own address, which perf names.

pub mod aarch64;
pub mod x86_64;

/// The register state at one instruction offset of the stub, as DWARF call-frame information
/// describes it: the CFA is `cfa_register + cfa_offset`, and each `(register, offset)` in
/// `saved` says that register is saved at `CFA + offset`. Registers not listed keep their
/// value (same-value), except the return address, whose rule the CIE gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnwindRow {
    /// Offset of the first instruction this row applies to (it holds until the next row).
    pub offset: u32,
    /// DWARF register number the CFA is computed from.
    pub cfa_register: u16,
    pub cfa_offset: i32,
    /// Callee-saved registers stored on the stack at this point: (DWARF register, CFA offset).
    pub saved: &'static [(u16, i32)],
}

/// Everything that differs between architectures.
#[derive(Debug)]
pub struct Arch {
    /// Name as Python's `platform.machine()` and `stub_code()` spell it.
    pub name: &'static str,
    /// ELF `e_machine`, written into the jitdump header.
    pub elf_machine: u32,
    /// The stub's instructions (what perf is told the code size is).
    pub code: &'static [u8],
    /// Exact bytes copied into every slot: `code` followed by trapping padding up to
    /// `slot_stride`. Slots of any mode start on a multiple of `slot_stride`.
    pub slot_template: &'static [u8],
    /// Size of a map-mode slot: a multiple of 16 that holds the whole stub (slots never split
    /// it). Jit-mode slots are larger (room for unwind data) but also multiples of 16.
    pub slot_stride: usize,
    /// One trapping instruction; arenas are filled with it around the stubs.
    pub trap: &'static [u8],
    /// DWARF number of the return-address column.
    pub return_address_register: u16,
    /// DWARF code and data alignment factors for this architecture's CIE.
    pub code_alignment_factor: u8,
    pub data_alignment_factor: i8,
    /// Register state at each instruction boundary where it changes; the first row is at 0.
    pub unwind: &'static [UnwindRow],
    /// The largest page size a kernel for this architecture may use: file offsets that are
    /// mapped separately (elf mode's arena images) are aligned to it.
    pub max_page_size: usize,
}

/// All architectures perftramp knows, whether or not this host is one of them.
pub const ALL: &[&Arch] = &[&x86_64::ARCH, &aarch64::ARCH];

/// The architecture named `name`, on any host (for `stub_code` and tests).
pub fn by_name(name: &str) -> Option<&'static Arch> {
    ALL.iter().copied().find(|arch| arch.name == name)
}

/// The architecture this process runs on, or `None` where perftramp has no stub for it.
pub fn native() -> Option<&'static Arch> {
    #[cfg(target_arch = "x86_64")]
    return Some(&x86_64::ARCH);
    #[cfg(target_arch = "aarch64")]
    return Some(&aarch64::ARCH);
    #[allow(unreachable_code)]
    None
}

/// A value unique to the calling thread for as long as it lives, read without a call: the
/// thread pointer (x86_64 `%fs:0`, the TCB's self pointer; aarch64 `tpidr_el0`). Used as a
/// cache key on the hot path, where a `thread_local!` in a shared library costs a call to
/// `__tls_get_addr` per Python call.
#[inline(always)]
pub fn thread_pointer() -> usize {
    let tp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: reads the TCB self pointer the x86_64 TLS ABI keeps at %fs:0; no side effects.
    unsafe {
        std::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: reads the thread pointer register; no side effects.
    unsafe {
        std::arch::asm!("mrs {}, tpidr_el0", out(reg) tp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        thread_local!(static MARKER: u8 = const { 0 });
        tp = MARKER.with(|m| m as *const u8 as usize);
    }
    tp
}

/// The current stack pointer. Read with one instruction rather than by taking a local's
/// address: an address-taken local would stop the compiler from turning the hook's call into the
/// trampoline into a tail call.
#[inline(always)]
pub fn stack_pointer() -> usize {
    let sp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: copies rsp into a register; no memory access.
    unsafe {
        std::arch::asm!("mov {}, rsp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: copies sp into a register; no memory access.
    unsafe {
        std::arch::asm!("mov {}, sp", out(reg) sp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        let marker = 0u8;
        sp = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
    }
    sp
}

/// The frame-pointer register (x86_64 rbp, aarch64 x29): the address of the current function's
/// frame record {caller's frame pointer, return address} when frame pointers are kept.
#[cfg(test)]
#[inline(always)]
pub fn frame_pointer() -> usize {
    let fp: usize;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: copies rbp into a register; no memory access.
    unsafe {
        std::arch::asm!("mov {}, rbp", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(target_arch = "aarch64")]
    // SAFETY: copies x29 into a register; no memory access.
    unsafe {
        std::arch::asm!("mov {}, x29", out(reg) fp, options(nomem, nostack, preserves_flags))
    };
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        fp = 0;
    }
    fp
}

/// Makes freshly written code visible to instruction fetch on the native architecture. Call
/// after writing an arena and before any of it runs.
///
/// # Safety
/// `start..start+len` must be a mapped range of this process.
pub unsafe fn flush_instruction_cache(start: *const u8, len: usize) {
    // x86_64 keeps instruction and data caches coherent: nothing to do.
    // aarch64 does not: the new code must be cleaned from the data cache and the stale lines
    // invalidated in the instruction cache (dc cvau / ic ivau per line, then dsb + isb), which is
    // exactly what libgcc's `__clear_cache` (exported by libgcc_s, which std links) does.
    #[cfg(target_arch = "aarch64")]
    {
        unsafe extern "C" {
            fn __clear_cache(begin: *mut core::ffi::c_char, end: *mut core::ffi::c_char);
        }
        unsafe { __clear_cache(start as *mut _, start.add(len) as *mut _) };
    }
    let _ = (start, len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arch_is_consistent() {
        for arch in ALL {
            assert_eq!(arch.slot_stride % 16, 0, "{}: stride not a multiple of 16", arch.name);
            assert!(arch.code.len() <= arch.slot_stride, "{}: stub split across slots", arch.name);
            assert_eq!(arch.slot_template.len(), arch.slot_stride, "{}", arch.name);
            assert_eq!(&arch.slot_template[..arch.code.len()], arch.code, "{}", arch.name);
            assert_eq!((arch.slot_template.len() - arch.code.len()) % arch.trap.len(), 0);
            assert!(arch.slot_template[arch.code.len()..]
                .chunks(arch.trap.len())
                .all(|t| t == arch.trap));
            assert_eq!(arch.unwind.first().map(|r| r.offset), Some(0), "{}", arch.name);
            assert!(
                arch.unwind.windows(2).all(|w| w[0].offset < w[1].offset),
                "{}: unwind rows out of order",
                arch.name
            );
            assert!(
                arch.unwind.iter().all(|r| (r.offset as usize) < arch.code.len()),
                "{}: unwind row past the code",
                arch.name
            );
            assert_eq!(by_name(arch.name).map(|a| a.name), Some(arch.name));
        }
        assert!(by_name("sparc").is_none());
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn native_is_x86_64_here() {
        assert_eq!(native().map(|a| a.name), Some("x86_64"));
    }

    #[cfg(target_arch = "aarch64")]
    #[test]
    fn native_is_aarch64_here() {
        assert_eq!(native().map(|a| a.name), Some("aarch64"));
    }

    /// What the evaluator saw: its caller's frame record (the stub's) and the record that one
    /// links to (the test function's).
    static SEEN: [std::sync::atomic::AtomicUsize; 4] =
        [const { std::sync::atomic::AtomicUsize::new(0) }; 4];

    extern "C" fn evaluator(a: usize, b: usize, c: core::ffi::c_int) -> usize {
        use std::sync::atomic::Ordering::SeqCst;
        let fp = frame_pointer() as *const usize;
        // SAFETY: frame pointers are forced (.cargo/config.toml), so fp is this function's frame
        // record {caller fp, return address} and the caller's fp is the stub's live record.
        unsafe {
            let stub_record = *fp as *const usize;
            SEEN[0].store(*fp.add(1), SeqCst); // return address: inside the stub
            SEEN[1].store(stub_record as usize, SeqCst);
            SEEN[2].store(*stub_record, SeqCst); // the test function's frame pointer
            SEEN[3].store(*stub_record.add(1), SeqCst); // return address into the test function
        }
        a * 1000 + b * 10 + c as usize
    }

    /// The native stub, run from a real arena (mapped, filled, made r-x and flushed as in
    /// production): arguments and result pass through, and the frame-record chain goes
    /// evaluator -> stub -> caller, which is what perf's frame-pointer unwinding walks.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    #[test]
    fn native_stub_runs_from_an_arena_and_links_the_frame_records() {
        use std::sync::atomic::Ordering::SeqCst;
        type Evaluator = extern "C" fn(usize, usize, core::ffi::c_int) -> usize;
        type Stub = unsafe extern "C" fn(usize, usize, core::ffi::c_int, Evaluator) -> usize;
        let arch = native().unwrap();
        let mut mem = crate::runtime::arena::ExecMemory::new(arch, arch.slot_stride);
        let mut backing = crate::runtime::arena::Anonymous;
        mem.allocate(&mut backing).unwrap();
        // The second slot: not at the arena's start.
        let slot = mem.allocate(&mut backing).unwrap().as_ptr() as usize;
        // SAFETY: the slot holds the native stub, mapped read-execute, with this signature.
        let stub = unsafe { std::mem::transmute::<usize, Stub>(slot) };
        let caller_fp = frame_pointer();
        // SAFETY: see above; the evaluator only reads live frame records.
        let result = unsafe { stub(7, 5, 3, evaluator) };
        assert_eq!(result, 7053);
        let seen: Vec<usize> = SEEN.iter().map(|s| s.load(SeqCst)).collect();
        assert!(
            (slot..slot + arch.code.len()).contains(&seen[0]),
            "return into the stub: {seen:x?}"
        );
        assert!(seen[1] < caller_fp, "the stub's record is below the caller's: {seen:x?}");
        assert_eq!(seen[2], caller_fp, "the stub's record links to its caller's");
        assert!(seen[3] != 0 && !(slot..slot + arch.slot_stride).contains(&seen[3]));
    }
}
