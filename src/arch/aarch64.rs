//! aarch64 stub: `stp x29, x30, [sp, #-16]!; mov x29, sp; blr x3; ldp x29, x30, [sp], #16; ret`.
//!
//! AAPCS64 passes the evaluator in x3 (4th argument) and leaves x0-x2 (tstate, frame,
//! throwflag) for it. The stub stores a frame record {x29, x30} and points x29 at it, as the
//! AAPCS64 frame-record chain expects, so frame-pointer unwinding walks through the stub. The
//! 16-byte `stp` keeps sp 16-byte aligned. Instructions are 4-byte little-endian words.

use super::{Arch, UnwindRow};

/// DWARF register numbers (DWARF for the Arm 64-bit Architecture, section 4.1).
pub const X29: u16 = 29;
pub const X30: u16 = 30;
pub const SP: u16 = 31;

pub const CODE: [u8; 20] = [
    0xfd, 0x7b, 0xbf, 0xa9, // 0:  stp x29, x30, [sp, #-16]!   (a9bf7bfd)
    0xfd, 0x03, 0x00, 0x91, // 4:  mov x29, sp                 (910003fd)
    0x60, 0x00, 0x3f, 0xd6, // 8:  blr x3                      (d63f0060)
    0xfd, 0x7b, 0xc1, 0xa8, // 12: ldp x29, x30, [sp], #16     (a8c17bfd)
    0xc0, 0x03, 0x5f, 0xd6, // 16: ret                         (d65f03c0)
];

/// `brk #0` (d4200000), little-endian.
pub const BRK0: [u8; 4] = [0x00, 0x00, 0x20, 0xd4];

/// `CODE` then `brk #0` up to the 32-byte slot: a stray jump into padding traps.
pub const SLOT_TEMPLATE: [u8; 32] = [
    0xfd, 0x7b, 0xbf, 0xa9, 0xfd, 0x03, 0x00, 0x91, 0x60, 0x00, 0x3f, 0xd6, 0xfd, 0x7b, 0xc1, 0xa8,
    0xc0, 0x03, 0x5f, 0xd6, 0x00, 0x00, 0x20, 0xd4, 0x00, 0x00, 0x20, 0xd4, 0x00, 0x00, 0x20, 0xd4,
];

pub const UNWIND: [UnwindRow; 4] = [
    // Entry: the return address is still in x30 and nothing is pushed; CFA is sp.
    UnwindRow { offset: 0, cfa_register: SP, cfa_offset: 0, saved: &[] },
    // After stp: the frame record {x29, x30} sits at the bottom of the 16 pushed bytes.
    UnwindRow { offset: 4, cfa_register: SP, cfa_offset: 16, saved: &[(X29, -16), (X30, -8)] },
    // After mov x29, sp: the frame pointer now anchors the CFA through the call.
    UnwindRow { offset: 8, cfa_register: X29, cfa_offset: 16, saved: &[(X29, -16), (X30, -8)] },
    // After ldp: x29/x30 restored and sp back to entry, at the ret.
    UnwindRow { offset: 16, cfa_register: SP, cfa_offset: 0, saved: &[] },
];

pub static ARCH: Arch = Arch {
    name: "aarch64",
    elf_machine: 183, // EM_AARCH64
    code: &CODE,
    slot_template: &SLOT_TEMPLATE,
    slot_stride: 32,
    trap: &BRK0,
    return_address_register: X30,
    code_alignment_factor: 4,
    data_alignment_factor: -8,
    unwind: &UNWIND,
    max_page_size: 64 * 1024, // kernels may use 4, 16 or 64 KiB pages
};

#[cfg(test)]
mod tests {
    use super::*;

    /// Instruction `i` of `CODE` as a 32-bit word.
    fn word(i: usize) -> u32 {
        u32::from_le_bytes(CODE[4 * i..4 * i + 4].try_into().unwrap())
    }

    /// Bits `hi..=lo` of `w`.
    fn bits(w: u32, hi: u32, lo: u32) -> u32 {
        (w >> lo) & ((1 << (hi - lo + 1)) - 1)
    }

    #[test]
    fn template_is_code_then_brk() {
        assert_eq!(CODE.len(), 20);
        assert_eq!(&SLOT_TEMPLATE[..CODE.len()], &CODE);
        assert_eq!((SLOT_TEMPLATE.len() - CODE.len()) % 4, 0);
        assert!(SLOT_TEMPLATE[CODE.len()..].chunks(4).all(|w| w == BRK0));
        assert_eq!(u32::from_le_bytes(BRK0), 0xd420_0000);
    }

    #[test]
    fn instructions_decode_as_documented() {
        // stp x29, x30, [sp, #-16]!: 64-bit store pair, pre-index, imm7 = -2 (scaled by 8).
        let w = word(0);
        assert_eq!(bits(w, 31, 30), 0b10, "64-bit pair");
        assert_eq!(bits(w, 29, 22), 0b1010_0110, "STP pre-index, L=0");
        assert_eq!(bits(w, 21, 15), 0x7e, "imm7 = -2");
        assert_eq!((bits(w, 14, 10), bits(w, 9, 5), bits(w, 4, 0)), (30, 31, 29));

        // mov x29, sp = add x29, sp, #0 (64-bit, no shift).
        let w = word(1);
        assert_eq!(bits(w, 31, 22), 0b10_0100_0100, "ADD imm, sf=1, sh=0");
        assert_eq!(bits(w, 21, 10), 0, "imm12 = 0");
        assert_eq!((bits(w, 9, 5), bits(w, 4, 0)), (31, 29));

        // blr x3: branch with link to register.
        let w = word(2);
        assert_eq!(w & !(0x1f << 5), 0xd63f_0000);
        assert_eq!(bits(w, 9, 5), 3);

        // ldp x29, x30, [sp], #16: 64-bit load pair, post-index, imm7 = +2.
        let w = word(3);
        assert_eq!(bits(w, 31, 30), 0b10, "64-bit pair");
        assert_eq!(bits(w, 29, 22), 0b1010_0011, "LDP post-index, L=1");
        assert_eq!(bits(w, 21, 15), 2, "imm7 = +2");
        assert_eq!((bits(w, 14, 10), bits(w, 9, 5), bits(w, 4, 0)), (30, 31, 29));

        // ret (x30).
        let w = word(4);
        assert_eq!(w & !(0x1f << 5), 0xd65f_0000);
        assert_eq!(bits(w, 9, 5), 30);
    }

    #[test]
    fn unwind_rows_match_instruction_boundaries() {
        for row in &UNWIND {
            assert_eq!(row.offset % 4, 0, "row at {} is mid-instruction", row.offset);
            assert!((row.offset as usize) < CODE.len());
            // The frame record is pushed and popped whole.
            assert!(row.saved.is_empty() || row.saved == [(X29, -16), (X30, -8)]);
        }
        // Around the call the CFA is x29-based, so unwinding from the evaluator works.
        let at_call = UNWIND.iter().rev().find(|r| r.offset <= 8).unwrap();
        assert_eq!((at_call.cfa_register, at_call.cfa_offset), (X29, 16));
        // At the ret everything is back to the entry state.
        assert_eq!(
            (UNWIND[3].cfa_register, UNWIND[3].cfa_offset, UNWIND[3].saved),
            (UNWIND[0].cfa_register, UNWIND[0].cfa_offset, UNWIND[0].saved)
        );
    }
}
