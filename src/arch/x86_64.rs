//! x86_64 stub: `endbr64; push rbp; mov rbp, rsp; call *rcx; pop rbp; ret`.
//!
//! SysV passes the evaluator in rcx (4th argument) and leaves rdi/rsi/edx (tstate, frame,
//! throwflag) for it. After `push rbp` the stack is 16-byte aligned again, so the evaluator is
//! entered with the alignment the ABI promises. `endbr64` lets the stub run under CET/IBT and is
//! a no-op elsewhere.

use super::{Arch, UnwindRow};

/// DWARF register numbers (System V AMD64 psABI, figure 3.36).
pub const RBP: u16 = 6;
pub const RSP: u16 = 7;
pub const RIP: u16 = 16;

pub const CODE: [u8; 12] = [
    0xf3, 0x0f, 0x1e, 0xfa, // 0:  endbr64
    0x55, //                   4:  push rbp
    0x48, 0x89, 0xe5, //       5:  mov rbp, rsp
    0xff, 0xd1, //             8:  call *rcx
    0x5d, //                   10: pop rbp
    0xc3, //                   11: ret
];

/// `CODE` then `int3` up to the 16-byte slot: a stray jump into padding traps.
pub const SLOT_TEMPLATE: [u8; 16] = [
    0xf3, 0x0f, 0x1e, 0xfa, 0x55, 0x48, 0x89, 0xe5, 0xff, 0xd1, 0x5d, 0xc3, 0xcc, 0xcc, 0xcc, 0xcc,
];

pub const UNWIND: [UnwindRow; 4] = [
    // Entry: the call pushed the return address; CFA is the caller's rsp before the call.
    UnwindRow { offset: 0, cfa_register: RSP, cfa_offset: 8, saved: &[] },
    // After push rbp.
    UnwindRow { offset: 5, cfa_register: RSP, cfa_offset: 16, saved: &[(RBP, -16)] },
    // After mov rbp, rsp: the frame pointer now anchors the CFA through the call.
    UnwindRow { offset: 8, cfa_register: RBP, cfa_offset: 16, saved: &[(RBP, -16)] },
    // After pop rbp: back to the entry state, at the ret.
    UnwindRow { offset: 11, cfa_register: RSP, cfa_offset: 8, saved: &[] },
];

pub static ARCH: Arch = Arch {
    name: "x86_64",
    elf_machine: 62, // EM_X86_64
    code: &CODE,
    slot_template: &SLOT_TEMPLATE,
    slot_stride: 16,
    trap: &[0xcc], // int3
    return_address_register: RIP,
    code_alignment_factor: 1,
    data_alignment_factor: -8,
    unwind: &UNWIND,
    max_page_size: 4096, // 4 KiB pages only
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_is_code_then_int3() {
        assert_eq!(&SLOT_TEMPLATE[..CODE.len()], &CODE);
        assert!(SLOT_TEMPLATE[CODE.len()..].iter().all(|&b| b == 0xcc));
    }

    #[test]
    fn call_goes_through_rcx_and_frame_is_balanced() {
        // ff /2 with modrm 0xd1 = call rcx; push rbp (55) is undone by pop rbp (5d) before ret.
        assert_eq!(&CODE[8..10], &[0xff, 0xd1]);
        assert_eq!(CODE.iter().filter(|&&b| b == 0x55).count(), 1);
        assert_eq!(CODE[10], 0x5d);
        assert_eq!(*CODE.last().unwrap(), 0xc3);
    }

    #[test]
    fn unwind_rows_match_instruction_boundaries() {
        // Boundaries of the five instructions after endbr64.
        let boundaries = [0u32, 4, 5, 8, 10, 11];
        for row in &UNWIND {
            assert!(boundaries.contains(&row.offset), "row at {} is mid-instruction", row.offset);
        }
        // Around the call the CFA is rbp-based, so unwinding from the evaluator works.
        let at_call = UNWIND.iter().rev().find(|r| r.offset <= 8).unwrap();
        assert_eq!((at_call.cfa_register, at_call.cfa_offset), (RBP, 16));
    }
}
