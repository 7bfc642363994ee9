//! DWARF unwind data for one trampoline: the `.eh_frame` and `.eh_frame_hdr` that a jitdump
//! `CODE_UNWINDING_INFO` record carries and `perf inject -j` copies into each `jitted-*.so`.
//!
//! Every pointer in them is relative, so they must be computed for the layout perf's genelf
//! (tools/perf/util/genelf.c, `jit_write_elf`) gives that ELF:
//!
//! - `.text` at `GEN_ELF_TEXT_OFFSET` (`sizeof(Elf64_Ehdr)` = 0x40; a multiple of 8),
//! - `.eh_frame` at `ALIGN_8(GEN_ELF_TEXT_OFFSET + csize)`, where `csize` is the `code_size` of
//!   the CODE_LOAD record (not the stub length: see [`crate::sink::jitdump::code_size`]),
//! - `.eh_frame_hdr` at `.eh_frame + (unwinding_size - eh_frame_hdr_size)`, i.e. right after
//!   the `.eh_frame` bytes with no padding.
//!
//! Because the text base is a multiple of 8, `.eh_frame` is always `align8(csize)` bytes after the
//! text start, so the bytes do not depend on the base (nor on the load address): they are the
//! same for every trampoline of an architecture and are computed once. Getting these distances
//! wrong (e.g. forgetting the `ALIGN_8`) is CPython bug gh-136541 ("wrong FDE offsets"): perf
//! then finds no FDE for the samples and unwinding stops at the trampoline.

use gimli::write::{
    Address, CallFrameInstruction, CommonInformationEntry, EhFrame, EndianVec,
    FrameDescriptionEntry, FrameTable,
};
use gimli::{constants, Encoding, Format, NativeEndian, Register};

use crate::arch::{Arch, UnwindRow};

/// Size of the hand-written `.eh_frame_hdr`: 4 encoding bytes, eh_frame_ptr, fde_count and one
/// (initial location, FDE address) table entry, 4 bytes each.
pub const EH_FRAME_HDR_SIZE: usize = 20;

/// The unwind data of one trampoline, identical for every trampoline of an architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnwindInfo {
    /// One CIE, one FDE covering the stub, then a zero terminator.
    pub eh_frame: Vec<u8>,
    /// [`EH_FRAME_HDR_SIZE`] bytes indexing the FDE.
    pub eh_frame_hdr: Vec<u8>,
}

impl UnwindInfo {
    /// `.eh_frame` + `.eh_frame_hdr`: what CODE_UNWINDING_INFO's `unwinding_size` and
    /// `mapped_size` hold (perf maps each load as `[addr, addr + align8(code_size) + mapped_size)`).
    pub fn mapped_size(&self) -> usize {
        self.eh_frame.len() + self.eh_frame_hdr.len()
    }
}

/// Rounds up to a multiple of 8, as genelf's `ALIGN_8` does.
pub const fn align8(n: usize) -> usize {
    (n + 7) & !7
}

/// Distance from the start of `.text` to `.eh_frame` in genelf's ELF (`.eh_frame_hdr` follows at
/// this plus `eh_frame.len()`).
pub fn eh_frame_offset(arch: &Arch) -> usize {
    align8(crate::sink::jitdump::code_size(arch))
}

/// The rule for one register at one row. `Unspecified` is what DWARF leaves a register with no
/// instruction (unwinders treat callee-saved ones as unchanged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    Unspecified,
    SameValue,
    Offset(i32),
}

/// The return address's rule where no row saves it. `UnwindRow` leaves it to the CIE, and it
/// follows from the entry row: if the CFA starts above the stack pointer, the call pushed the
/// return address there (x86_64: CFA = rsp + 8, return address at CFA - 8); if it starts at the
/// stack pointer, the return address is still in its link register (aarch64: x30), unchanged.
fn return_address_default(arch: &Arch) -> Rule {
    match arch.unwind[0].cfa_offset {
        0 => Rule::SameValue,
        entry => Rule::Offset(-entry),
    }
}

fn rule(arch: &Arch, row: &UnwindRow, register: u16) -> Rule {
    match row.saved.iter().find(|(r, _)| *r == register) {
        Some(&(_, offset)) => Rule::Offset(offset),
        None if register == arch.return_address_register => return_address_default(arch),
        None => Rule::Unspecified,
    }
}

/// The instruction that sets `register` to `rule` from scratch (CIE) or from another rule.
fn set_rule(register: u16, rule: Rule) -> CallFrameInstruction {
    let register = Register(register);
    match rule {
        Rule::Offset(offset) => CallFrameInstruction::Offset(register, offset),
        // A register saved earlier and restored by the code holds its own value again.
        Rule::SameValue | Rule::Unspecified => CallFrameInstruction::SameValue(register),
    }
}

/// The registers any row (or the CIE) gives a rule to, in a fixed order.
fn registers(arch: &Arch) -> Vec<u16> {
    let mut regs: Vec<u16> = arch.unwind.iter().flat_map(|r| r.saved.iter().map(|s| s.0)).collect();
    regs.push(arch.return_address_register);
    regs.sort_unstable();
    regs.dedup();
    regs
}

/// The CIE shared by every stub's FDE: the entry state (row 0), including the return
/// address's rule.
fn stub_cie(arch: &Arch) -> CommonInformationEntry {
    let first = &arch.unwind[0];
    // .eh_frame CIEs are version 1; both supported architectures have 8-byte pointers.
    let encoding = Encoding { format: Format::Dwarf32, version: 1, address_size: 8 };
    let mut cie = CommonInformationEntry::new(
        encoding,
        arch.code_alignment_factor,
        arch.data_alignment_factor,
        Register(arch.return_address_register),
    );
    // pcrel|sdata4: position-independent, so the same bytes are right at every load address.
    cie.fde_address_encoding = constants::DW_EH_PE_pcrel | constants::DW_EH_PE_sdata4;
    cie.add_instruction(CallFrameInstruction::Cfa(Register(first.cfa_register), first.cfa_offset));
    for reg in registers(arch) {
        if let r @ (Rule::Offset(_) | Rule::SameValue) = rule(arch, first, reg) {
            cie.add_instruction(set_rule(reg, r));
        }
    }
    cie
}

/// The FDE of one stub starting at `initial` (for pcrel, relative to the `.eh_frame` start:
/// gimli subtracts the field's own offset).
fn stub_fde(arch: &Arch, initial: u64) -> FrameDescriptionEntry {
    let first = &arch.unwind[0];
    let code_len = u32::try_from(arch.code.len()).expect("stub fits in u32");
    let mut fde = FrameDescriptionEntry::new(Address::Constant(initial), code_len);
    for pair in arch.unwind.windows(2) {
        let (prev, row) = (&pair[0], &pair[1]);
        let at = row.offset;
        match (prev.cfa_register != row.cfa_register, prev.cfa_offset != row.cfa_offset) {
            (true, true) => fde.add_instruction(
                at,
                CallFrameInstruction::Cfa(Register(row.cfa_register), row.cfa_offset),
            ),
            (true, false) => fde
                .add_instruction(at, CallFrameInstruction::CfaRegister(Register(row.cfa_register))),
            (false, true) => {
                fde.add_instruction(at, CallFrameInstruction::CfaOffset(row.cfa_offset))
            }
            (false, false) => {}
        }
        for reg in registers(arch) {
            let new = rule(arch, row, reg);
            if new == rule(arch, prev, reg) {
                continue;
            }
            if new == rule(arch, first, reg) {
                // Back to the CIE's rule (e.g. after the epilogue pops what the prologue pushed).
                fde.add_instruction(at, CallFrameInstruction::Restore(Register(reg)));
            } else {
                fde.add_instruction(at, set_rule(reg, new));
            }
        }
    }
    fde
}

/// `.eh_frame` with one CIE and one FDE per stub, the stubs starting at the given distances
/// from the start of `.eh_frame` (negative: the text comes first), then a zero terminator.
/// Returns the bytes and the offset of each FDE in them.
pub fn stubs_eh_frame(arch: &Arch, stubs_from_eh_frame: &[i64]) -> (Vec<u8>, Vec<usize>) {
    let mut table = FrameTable::default();
    let cie_id = table.add_cie(stub_cie(arch));
    for &at in stubs_from_eh_frame {
        table.add_fde(cie_id, stub_fde(arch, at as u64));
    }
    let mut section = EhFrame(EndianVec::new(NativeEndian));
    table
        .write_eh_frame(&mut section)
        .expect("arch unwind rows are encodable (offsets multiples of the alignment factors)");
    let mut eh_frame = section.0.into_vec();
    // gimli writes the CIE first, then the FDEs in order; walk the length fields to find them.
    let mut offsets = Vec::with_capacity(stubs_from_eh_frame.len());
    let mut at = 4 + u32::from_ne_bytes(eh_frame[0..4].try_into().unwrap()) as usize;
    while at < eh_frame.len() {
        offsets.push(at);
        at += 4 + u32::from_ne_bytes(eh_frame[at..at + 4].try_into().unwrap()) as usize;
    }
    debug_assert_eq!(offsets.len(), stubs_from_eh_frame.len());
    // Zero terminator, as crtend.o ends a linked .eh_frame: readers that walk the section rather
    // than the header's table (libgcc's registered frames, some elfutils paths) stop on it.
    eh_frame.extend_from_slice(&[0; 4]);
    (eh_frame, offsets)
}

/// A `.eh_frame_hdr` at `hdr` (all positions relative to one origin, e.g. the file's vaddr 0)
/// for `.eh_frame` at `eh_frame` and a table of (initial location, FDE address) pairs, sorted
/// by location as the binary search of every unwinder requires.
pub fn eh_frame_hdr_table(hdr: i64, eh_frame: i64, entries: &[(i64, i64)]) -> Vec<u8> {
    let sdata4 = |v: i64| i32::try_from(v).expect("unwind data spans < 2 GiB").to_ne_bytes();
    debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    let mut out = vec![
        1,                                                            // version
        (constants::DW_EH_PE_pcrel | constants::DW_EH_PE_sdata4).0,   // eh_frame_ptr_enc
        constants::DW_EH_PE_udata4.0,                                 // fde_count_enc
        (constants::DW_EH_PE_datarel | constants::DW_EH_PE_sdata4).0, // table_enc
    ];
    // pcrel: relative to the eh_frame_ptr field itself, at hdr + 4.
    out.extend_from_slice(&sdata4(eh_frame - (hdr + 4)));
    out.extend_from_slice(&u32::try_from(entries.len()).expect("few FDEs").to_ne_bytes());
    // datarel: relative to the start of .eh_frame_hdr.
    for &(location, fde) in entries {
        out.extend_from_slice(&sdata4(location - hdr));
        out.extend_from_slice(&sdata4(fde - hdr));
    }
    out
}

/// Builds the `.eh_frame` and `.eh_frame_hdr` for one trampoline of `arch`.
pub fn unwind_info(arch: &Arch) -> UnwindInfo {
    // .text begins eh_frame_offset bytes before .eh_frame.
    let text = -(eh_frame_offset(arch) as i64);
    let (eh_frame, fdes) = stubs_eh_frame(arch, &[text]);
    let eh_frame_hdr = eh_frame_hdr(eh_frame_offset(arch), eh_frame.len(), fdes[0]);
    UnwindInfo { eh_frame, eh_frame_hdr }
}

/// The 20-byte header for genelf's layout: `.text` at 0, `.eh_frame` at `eh_frame_offset`, the
/// header right after `.eh_frame` (`eh_frame_len` bytes), one FDE at `fde_offset` in `.eh_frame`.
fn eh_frame_hdr(eh_frame_offset: usize, eh_frame_len: usize, fde_offset: usize) -> Vec<u8> {
    let eh_frame = eh_frame_offset as i64;
    let out = eh_frame_hdr_table(
        eh_frame + eh_frame_len as i64,
        eh_frame,
        &[(0, eh_frame + fde_offset as i64)],
    );
    debug_assert_eq!(out.len(), EH_FRAME_HDR_SIZE);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{self, UnwindRow};
    use gimli::{
        BaseAddresses, CfaRule, CieOrFde, EhFrameHdr, Pointer, RegisterRule, UnwindContext,
        UnwindSection,
    };

    /// Section addresses as genelf's jit_write_elf assigns them for a text start of `text`,
    /// restated from genelf.c rather than taken from the writer: `.eh_frame` at
    /// `ALIGN_8(text + csize)` with csize the CODE_LOAD's code_size, the header right after it.
    fn genelf_bases(arch: &Arch, info: &UnwindInfo, text: u64) -> BaseAddresses {
        let eh_frame = (text + crate::sink::jitdump::code_size(arch) as u64 + 7) & !7;
        BaseAddresses::default()
            .set_text(text)
            .set_eh_frame(eh_frame)
            .set_eh_frame_hdr(eh_frame + info.eh_frame.len() as u64)
    }

    /// Text starts to check: genelf's GEN_ELF_TEXT_OFFSET (sizeof(Elf64_Ehdr)), and a page
    /// boundary, since the bytes must not depend on the (8-aligned) base.
    const TEXT_BASES: [u64; 2] = [0x40, 0x1000];

    /// The row in effect at byte `offset` of the stub.
    fn row_at(arch: &Arch, offset: u32) -> &UnwindRow {
        arch.unwind.iter().rev().find(|r| r.offset <= offset).unwrap()
    }

    /// What the return address's rule must be where no row saves it, stated independently of
    /// the writer: pushed by the call just below the entry CFA, or still in the link register.
    fn expected_return_address(arch: &Arch) -> Option<RegisterRule<usize>> {
        match arch.unwind[0].cfa_offset {
            0 => Some(RegisterRule::SameValue),
            n => Some(RegisterRule::Offset(-(n as i64))),
        }
    }

    fn check_row(arch: &Arch, offset: u32, got: &gimli::UnwindTableRow<usize>) {
        let want = row_at(arch, offset);
        let ctx = format!("{} at +{offset}", arch.name);
        assert_eq!(
            got.cfa(),
            &CfaRule::RegisterAndOffset {
                register: Register(want.cfa_register),
                offset: want.cfa_offset as i64
            },
            "{ctx}: CFA"
        );
        for &(reg, off) in want.saved {
            assert_eq!(
                got.register(Register(reg)),
                Some(RegisterRule::Offset(off as i64)),
                "{ctx}: r{reg}"
            );
        }
        let ra = arch.return_address_register;
        if !want.saved.iter().any(|s| s.0 == ra) {
            assert_eq!(got.register(Register(ra)), expected_return_address(arch), "{ctx}: RA");
        }
        // Nothing else may claim a register was saved: every other rule is "unchanged".
        for (reg, rule) in got.registers() {
            if reg.0 != ra && !want.saved.iter().any(|s| s.0 == reg.0) {
                assert_eq!(rule, &RegisterRule::SameValue, "{ctx}: stray rule for r{}", reg.0);
            }
        }
    }

    #[test]
    fn eh_frame_rules_match_arch_rows_at_every_offset() {
        for arch in arch::ALL {
            let info = unwind_info(arch);
            for text in TEXT_BASES {
                let bases = genelf_bases(arch, &info, text);
                let eh_frame = gimli::EhFrame::new(&info.eh_frame, NativeEndian);
                let mut ctx = UnwindContext::new();
                for off in 0..arch.code.len() as u32 {
                    let row = eh_frame
                        .unwind_info_for_address(
                            &bases,
                            &mut ctx,
                            text + off as u64,
                            gimli::EhFrame::cie_from_offset,
                        )
                        .unwrap_or_else(|e| panic!("{} +{off}: {e}", arch.name));
                    check_row(arch, off, row);
                }
                // Nothing outside the stub is covered (the salt bytes are never executed).
                for addr in [text - 1, text + arch.code.len() as u64] {
                    let r = eh_frame.unwind_info_for_address(
                        &bases,
                        &mut ctx,
                        addr,
                        gimli::EhFrame::cie_from_offset,
                    );
                    assert!(
                        matches!(r, Err(gimli::Error::NoUnwindInfoForAddress)),
                        "{}: {addr:#x} covered",
                        arch.name
                    );
                }
            }
        }
    }

    #[test]
    fn eh_frame_is_one_cie_one_fde_over_the_stub_then_terminator() {
        for arch in arch::ALL {
            let info = unwind_info(arch);
            assert_eq!(
                &info.eh_frame[info.eh_frame.len() - 4..],
                &[0; 4],
                "{}: terminator",
                arch.name
            );
            for text in TEXT_BASES {
                let bases = genelf_bases(arch, &info, text);
                let eh_frame = gimli::EhFrame::new(&info.eh_frame, NativeEndian);
                let mut entries = eh_frame.entries(&bases);
                let mut fdes = Vec::new();
                let mut cies = 0;
                while let Some(entry) = entries.next().unwrap() {
                    match entry {
                        CieOrFde::Cie(cie) => {
                            cies += 1;
                            assert_eq!(
                                cie.return_address_register(),
                                Register(arch.return_address_register)
                            );
                            assert_eq!(
                                cie.code_alignment_factor(),
                                arch.code_alignment_factor as u64
                            );
                            assert_eq!(
                                cie.data_alignment_factor(),
                                arch.data_alignment_factor as i64
                            );
                        }
                        CieOrFde::Fde(partial) => {
                            fdes.push(partial.parse(gimli::EhFrame::cie_from_offset).unwrap())
                        }
                    }
                }
                assert_eq!((cies, fdes.len()), (1, 1), "{}", arch.name);
                let fde = &fdes[0];
                assert_eq!(fde.initial_address(), text, "{}: FDE start", arch.name);
                assert_eq!(
                    fde.end_address(),
                    text + arch.code.len() as u64,
                    "{}: FDE end",
                    arch.name
                );
                assert_eq!(
                    fde.cie().fde_address_encoding(),
                    Some(constants::DW_EH_PE_pcrel | constants::DW_EH_PE_sdata4)
                );
            }
        }
    }

    #[test]
    fn eh_frame_hdr_table_points_to_the_fde() {
        for arch in arch::ALL {
            let info = unwind_info(arch);
            assert_eq!(info.eh_frame_hdr.len(), EH_FRAME_HDR_SIZE);
            assert_eq!(&info.eh_frame_hdr[..4], &[1, 0x1b, 0x03, 0x3b], "{}", arch.name);
            for text in TEXT_BASES {
                let bases = genelf_bases(arch, &info, text);
                let eh_frame_addr = (text + crate::sink::jitdump::code_size(arch) as u64 + 7) & !7;
                let eh_frame = gimli::EhFrame::new(&info.eh_frame, NativeEndian);
                let hdr =
                    EhFrameHdr::new(&info.eh_frame_hdr, NativeEndian).parse(&bases, 8).unwrap();
                assert_eq!(hdr.eh_frame_ptr(), Pointer::Direct(eh_frame_addr), "{}", arch.name);
                let table = hdr.table().expect("a search table");
                let rows: Vec<(Pointer, Pointer)> = {
                    let mut it = table.iter(&bases);
                    let mut v = Vec::new();
                    while let Some(row) = it.next().unwrap() {
                        v.push(row);
                    }
                    v
                };
                assert_eq!(rows.len(), 1, "{}", arch.name);
                assert_eq!(
                    rows[0].0,
                    Pointer::Direct(text),
                    "{}: table initial location",
                    arch.name
                );
                // The table's FDE address must be where the entry walk finds the FDE.
                let fde_offset = table.pointer_to_offset(rows[0].1).unwrap();
                let fde = eh_frame
                    .fde_from_offset(&bases, fde_offset, gimli::EhFrame::cie_from_offset)
                    .unwrap();
                assert_eq!(fde.initial_address(), text);
                // And lookups through the header resolve every instruction to the right row.
                let mut ctx = UnwindContext::new();
                for off in 0..arch.code.len() as u32 {
                    let row = table
                        .unwind_info_for_address(
                            &eh_frame,
                            &bases,
                            &mut ctx,
                            text + off as u64,
                            gimli::EhFrame::cie_from_offset,
                        )
                        .unwrap_or_else(|e| panic!("{} +{off} via hdr: {e}", arch.name));
                    check_row(arch, off, row);
                }
            }
        }
    }

    #[test]
    fn x86_64_spot_check() {
        // Hard-coded expectations, independent of the row-to-rule logic above.
        use arch::x86_64::{ARCH, RBP, RIP, RSP};
        let info = unwind_info(&ARCH);
        let bases = genelf_bases(&ARCH, &info, 0x40);
        let eh_frame = gimli::EhFrame::new(&info.eh_frame, NativeEndian);
        let mut ctx = UnwindContext::new();
        let mut at = |off: u64| {
            let row = eh_frame
                .unwind_info_for_address(
                    &bases,
                    &mut ctx,
                    0x40 + off,
                    gimli::EhFrame::cie_from_offset,
                )
                .unwrap();
            let CfaRule::RegisterAndOffset { register, offset } = *row.cfa() else { panic!() };
            (register.0, offset, row.register(Register(RBP)), row.register(Register(RIP)))
        };
        let ra = || Some(RegisterRule::Offset(-8));
        assert_eq!(at(0), (RSP, 8, None, ra()));
        assert_eq!(at(4), (RSP, 8, None, ra())); // push rbp not yet executed
        assert_eq!(at(5), (RSP, 16, Some(RegisterRule::Offset(-16)), ra()));
        assert_eq!(at(9), (RBP, 16, Some(RegisterRule::Offset(-16)), ra())); // inside call *rcx
        assert_eq!(at(11), (RSP, 8, None, ra())); // at ret
                                                  // Stub 12 bytes + 4 salt bytes: code_size 16, .eh_frame at align8(16) = 16 after .text,
                                                  // so the hdr's initial location is -(16 + eh_frame.len()).
        let loc = i32::from_ne_bytes(info.eh_frame_hdr[12..16].try_into().unwrap());
        assert_eq!(loc, -(16 + info.eh_frame.len() as i32));
    }

    #[test]
    fn unwind_info_is_deterministic() {
        for arch in arch::ALL {
            assert_eq!(unwind_info(arch), unwind_info(arch));
            assert_eq!(
                unwind_info(arch).mapped_size() % 4,
                0,
                "{}: hdr stays 4-aligned",
                arch.name
            );
        }
    }
}
