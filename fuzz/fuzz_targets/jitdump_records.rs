//! The jitdump encoders on arbitrary names, file names, lines, addresses and code bytes: the
//! records a trampoline gets (DEBUG_INFO, UNWINDING_INFO, CODE_LOAD, built as jitdump_file.rs
//! builds them) parse back with linux-perf-data's JitDumpReader field for field, with exact
//! sizes; and `retarget_records` never panics on arbitrary bytes.
#![no_main]

use _perftramp::arch;
use _perftramp::sink::{eh_frame, jitdump, names};
use libfuzzer_sys::fuzz_target;
use linux_perf_data::jitdump::{JitDumpReader, JitDumpRecord};

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    for (i, byte) in b.iter_mut().enumerate() {
        *byte = data.get(at + i).copied().unwrap_or(i as u8);
    }
    u64::from_le_bytes(b)
}

fuzz_target!(|data: &[u8]| {
    let (a, b, c) = (u64_at(data, 0), u64_at(data, 8), u64_at(data, 16));
    let rest = data.get(24..).unwrap_or(&[]);
    let cut1 = if rest.is_empty() { 0 } else { (a as usize) % (rest.len() + 1) };
    let (q, tail) = rest.split_at(cut1);
    let cut2 = if tail.is_empty() { 0 } else { (b as usize) % (tail.len() + 1) };
    let (f, raw) = tail.split_at(cut2);

    // Arbitrary bytes as a damaged file's records: no panic, no overclaim, no write past them.
    let mut garbage = data.to_vec();
    let complete = jitdump::retarget_records(&mut garbage, a as u32, b as u32, c);
    assert!(complete <= data.len());
    assert_eq!(garbage[complete..], data[complete..]);

    let line = c as i32;
    let addr = a >> 8; // a user-space address: the range end must not wrap
    let index = b;
    for arch in arch::ALL {
        let unwind = eh_frame::unwind_info(arch);
        let mut name = Vec::new();
        names::symbol_name(q, f, &mut name);
        let mut filename = Vec::new();
        names::push_escaped(&mut filename, f);
        let code = jitdump::salted_code(arch, index, c);
        let raw_name: Vec<u8> = raw.iter().copied().filter(|&x| x != 0).collect();
        let raw_code = &raw[..raw.len().min((c % 200) as usize)];

        let mut buf = Vec::new();
        jitdump::encode_header(&mut buf, arch.elf_machine, a as u32, c);
        let start = buf.len();
        jitdump::encode_debug_info(&mut buf, c, addr, code.len() as u64, &filename, line);
        assert_eq!((buf.len() - start) % 8, 0);
        jitdump::encode_unwinding_info(&mut buf, c, &unwind);
        jitdump::encode_code_load(&mut buf, a as u32, b as u32, c, addr, &code, index, &name);
        jitdump::encode_code_load(
            &mut buf,
            a as u32,
            b as u32,
            c,
            addr + 1,
            raw_code,
            index ^ 1,
            &raw_name,
        );

        let mut reader = JitDumpReader::new(&buf[..]).expect("header");
        let mut n = 0;
        while let Some(record) = reader.next_record().expect("record") {
            n += 1;
            let size = record.record_size as usize;
            match record.parse().expect("parses") {
                JitDumpRecord::CodeDebugInfo(d) => {
                    assert_eq!((d.code_addr, d.entries.len()), (addr, 2));
                    for e in &d.entries {
                        assert_eq!(e.line, line as u32);
                        assert_eq!(e.file_path.as_slice(), &filename[..]);
                    }
                }
                JitDumpRecord::CodeUnwindingInfo(u) => {
                    assert_eq!(u.mapped_size as usize, unwind.mapped_size())
                }
                JitDumpRecord::CodeLoad(l) => {
                    let (want_name, want_code, want_addr) = if l.code_index == index {
                        (&name[..], &code[..], addr)
                    } else {
                        (&raw_name[..], raw_code, addr + 1)
                    };
                    assert_eq!(l.function_name.as_slice(), want_name);
                    assert_eq!(l.code_bytes.as_slice(), want_code);
                    assert_eq!((l.vma, l.code_addr), (want_addr, want_addr));
                    assert_eq!(
                        l.code_bytes_offset_from_record_header_start() + want_code.len(),
                        size
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(n, 4);
        let mut records = buf[start..].to_vec();
        assert_eq!(jitdump::retarget_records(&mut records, 1, 2, 3), buf.len() - start);
    }
});
