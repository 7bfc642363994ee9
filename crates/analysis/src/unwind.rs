//! DWARF-mode unwinding with framehop: one unwinder per process, holding a module per mapped
//! ELF file at that process's own address, for the recording's architecture (not the host's).

use framehop::aarch64::{CacheAarch64, PtrAuthMask, UnwindRegsAarch64, UnwinderAarch64};
use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder};

use crate::elf_file::{ElfFile, SectionBytes};

/// The recording's CPU architecture (perf.data's `arch` header, `uname -m` of the recorder).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Aarch64,
}

impl Arch {
    pub fn from_uname(machine: &str) -> Option<Arch> {
        match machine {
            "x86_64" | "amd64" => Some(Arch::X86_64),
            "aarch64" | "arm64" => Some(Arch::Aarch64),
            _ => None,
        }
    }

    /// perf's register numbers (arch/*/include/uapi/asm/perf_regs.h): (ip, sp, fp, lr).
    pub fn perf_regs(self) -> (u64, u64, u64, Option<u64>) {
        match self {
            Arch::X86_64 => (8, 7, 6, None),
            Arch::Aarch64 => (32, 31, 29, Some(30)),
        }
    }
}

pub type ElfModule = Module<SectionBytes>;

/// A framehop module for `file` mapped at `start..end` with `bias` (avma = svma + bias).
pub fn module_for(name: &str, file: &ElfFile, start: u64, end: u64, bias: u64) -> ElfModule {
    let range = |s: &Option<crate::elf_file::Section>| s.as_ref().map(|s| s.svma.clone());
    let data = |s: &Option<crate::elf_file::Section>| s.as_ref().map(|s| s.data.clone());
    let info = ExplicitModuleSectionInfo {
        base_svma: 0, // ELF: svmas are relative to 0
        text_svma: range(&file.text),
        text: data(&file.text),
        got_svma: range(&file.got),
        eh_frame_svma: range(&file.eh_frame),
        eh_frame: data(&file.eh_frame),
        eh_frame_hdr_svma: range(&file.eh_frame_hdr),
        eh_frame_hdr: data(&file.eh_frame_hdr),
        debug_frame: data(&file.debug_frame),
        ..Default::default()
    };
    Module::new(name.to_string(), start..end, bias, info)
}

/// A process's unwinder and rule cache (the cache is per process: its rules are only valid for
/// this module list).
pub enum ProcessUnwinder {
    X86_64(UnwinderX86_64<SectionBytes>, Box<CacheX86_64>),
    Aarch64(UnwinderAarch64<SectionBytes>, Box<CacheAarch64>),
}

impl ProcessUnwinder {
    pub fn new(arch: Arch, modules: impl IntoIterator<Item = ElfModule>) -> Self {
        match arch {
            Arch::X86_64 => {
                let mut unwinder = UnwinderX86_64::new();
                for module in modules {
                    unwinder.add_module(module);
                }
                ProcessUnwinder::X86_64(unwinder, Box::new(CacheX86_64::new()))
            }
            Arch::Aarch64 => {
                let mut unwinder = UnwinderAarch64::new();
                for module in modules {
                    unwinder.add_module(module);
                }
                ProcessUnwinder::Aarch64(unwinder, Box::new(CacheAarch64::new()))
            }
        }
    }

    /// Unwinds from the sampled registers over the stack copy (which starts at `sp`), appending
    /// frame addresses innermost first: the ip as is, return addresses as they are on the
    /// stack (callers subtract 1 to look them up). Stops at `max_frames`, at the end of the
    /// stack, or where unwinding fails (frames found so far are kept, as perf does).
    pub fn unwind(
        &mut self,
        regs: &UserRegs,
        stack: &[u8],
        max_frames: usize,
        out: &mut Vec<FrameAddress>,
    ) {
        let sp = regs.sp;
        let mut read_stack = |address: u64| -> Result<u64, ()> {
            let offset = usize::try_from(address.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let bytes = stack.get(offset..offset.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(bytes.try_into().map_err(|_| ())?))
        };
        match self {
            ProcessUnwinder::X86_64(unwinder, cache) => {
                let start = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.fp);
                let mut frames = unwinder.iter_frames(regs.ip, start, cache, &mut read_stack);
                while out.len() < max_frames {
                    match frames.next() {
                        Ok(Some(frame)) => out.push(frame),
                        _ => break,
                    }
                }
            }
            ProcessUnwinder::Aarch64(unwinder, cache) => {
                let mask = PtrAuthMask::from_max_known_address(unwinder.max_known_code_address());
                let start = UnwindRegsAarch64::new_with_ptr_auth_mask(
                    mask,
                    regs.lr.unwrap_or(0),
                    regs.sp,
                    regs.fp,
                );
                let mut frames = unwinder.iter_frames(regs.ip, start, cache, &mut read_stack);
                while out.len() < max_frames {
                    match frames.next() {
                        Ok(Some(frame)) => out.push(frame),
                        _ => break,
                    }
                }
            }
        }
    }
}

/// The user registers a DWARF-mode sample carries that unwinding starts from.
#[derive(Debug, Clone, Copy)]
pub struct UserRegs {
    pub ip: u64,
    pub sp: u64,
    pub fp: u64,
    pub lr: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_pointer_chain_without_modules() {
        // No module: framehop follows the frame pointers (x86_64: [bp] = caller bp, [bp+8] =
        // return address). Stack at 0x1000: bp0 at 0x1010 -> (0x1020, ret 0x4444), bp1 at
        // 0x1020 -> (0, ret 0x5555).
        let mut stack = vec![0u8; 0x40];
        let put = |stack: &mut Vec<u8>, at: usize, v: u64| {
            stack[at..at + 8].copy_from_slice(&v.to_le_bytes())
        };
        put(&mut stack, 0x10, 0x1020);
        put(&mut stack, 0x18, 0x4444);
        put(&mut stack, 0x20, 0);
        put(&mut stack, 0x28, 0x5555);
        let mut unwinder = ProcessUnwinder::new(Arch::X86_64, []);
        let regs = UserRegs { ip: 0x3333, sp: 0x1000, fp: 0x1010, lr: None };
        let mut out = Vec::new();
        unwinder.unwind(&regs, &stack, 127, &mut out);
        let addresses: Vec<u64> = out.iter().map(|f| f.address()).collect();
        assert_eq!(&addresses[..2], &[0x3333, 0x4444]);
        assert!(addresses.len() <= 3);
    }

    #[test]
    fn arch_from_header() {
        assert_eq!(Arch::from_uname("x86_64"), Some(Arch::X86_64));
        assert_eq!(Arch::from_uname("aarch64"), Some(Arch::Aarch64));
        assert_eq!(Arch::from_uname("riscv64"), None);
    }
}
