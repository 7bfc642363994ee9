//! Pure encoders for perf's jitdump format (`jit-<pid>.dump`), appending to a `Vec<u8>`; the
//! caller owns the file. Byte layout: tools/perf/util/jitdump.h, and what tools/perf/util/jitdump.c
//! does with it (the code wins where the spec text differs). Everything is native-endian.
//!
//! Per trampoline, write [`encode_debug_info`], [`encode_unwinding_info`] and then
//! [`encode_code_load`]: perf attaches debug and unwind info to the NEXT CODE_LOAD.
//!
//! # What the dump says about a trampoline
//!
//! `code_size` is [`code_size`]: the stub plus [`SALT_LEN`] salt bytes, and the code bytes are
//! [`salted_code`]. perf 6.17+ derives a jitted ELF's build-id from its code bytes alone and
//! merges ELFs with equal build-ids, so identical stubs would all resolve to one name. The salt
//! goes where the live slot only has padding (or unused room for unwind data), past the last
//! instruction, so the live code is untouched and the salt is never executed; the FDE covers the
//! stub only. perf inject maps each load as `[addr, addr + align8(code_size) + mapped_size)`,
//! and [`jit_slot_size`] is the slot that keeps those ranges disjoint.

use crate::arch::Arch;
use crate::sink::eh_frame::{align8, UnwindInfo};

/// "JiTD" read as a native u32 (perf also accepts the byte-swapped value).
pub const MAGIC: u32 = 0x4A69_5444;
/// perf rejects any other version.
pub const VERSION: u32 = 1;
/// perf mis-reads a larger header.
pub const HEADER_SIZE: usize = 40;
/// Record ids.
pub const JIT_CODE_LOAD: u32 = 0;
pub const JIT_CODE_MOVE: u32 = 1;
pub const JIT_CODE_DEBUG_INFO: u32 = 2;
pub const JIT_CODE_CLOSE: u32 = 3;
pub const JIT_CODE_UNWINDING_INFO: u32 = 4;
/// id, total_size, timestamp.
const PREFIX_SIZE: usize = 16;
/// Bytes of salt after the stub in the dumped code. Four keep x86_64's code_size at 16, so a
/// jit slot is the stub plus its unwind data rounded to 16 (96 bytes); indices are unique for
/// 2^32 trampolines per process.
pub const SALT_LEN: usize = 4;

/// The `code_size` reported in every CODE_LOAD of `arch`: the stub followed by the salt.
pub fn code_size(arch: &Arch) -> usize {
    arch.code.len() + SALT_LEN
}

/// The bytes written into the dump for trampoline `index`: `arch.code`, then
/// `(salt ^ index)` as a little-endian u32. XOR with a fixed salt is a bijection, so indices of
/// one process never collide (below 2^32); a random per-process `salt` keeps processes apart.
pub fn salted_code(arch: &Arch, index: u64, salt: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(code_size(arch));
    out.extend_from_slice(arch.code);
    out.extend_from_slice(&((salt ^ index) as u32).to_le_bytes());
    out
}

/// Bytes per trampoline in jit mode: `align8(code_size) + mapped_size` (what perf inject maps
/// for each load) rounded up to 16, so consecutive mapped ranges never overlap.
pub fn jit_slot_size(arch: &Arch, unwind: &UnwindInfo) -> usize {
    (align8(code_size(arch)) + unwind.mapped_size()).next_multiple_of(16).max(arch.slot_stride)
}

/// Makes a parent's records describe the same code in a fork child: every record's timestamp
/// becomes `timestamp` (the code exists in the child from now on) and every CODE_LOAD's pid and
/// tid become the child's. Returns the length of the complete records at the start of
/// `records` (anything after, such as zero filler or a torn record, is to be dropped).
pub fn retarget_records(records: &mut [u8], pid: u32, tid: u32, timestamp: u64) -> usize {
    let mut pos = 0;
    while pos + PREFIX_SIZE <= records.len() {
        let id = u32::from_ne_bytes(records[pos..pos + 4].try_into().expect("4 bytes"));
        let size =
            u32::from_ne_bytes(records[pos + 4..pos + 8].try_into().expect("4 bytes")) as usize;
        if size < PREFIX_SIZE || pos + size > records.len() {
            break;
        }
        records[pos + 8..pos + 16].copy_from_slice(&timestamp.to_ne_bytes());
        if id == JIT_CODE_LOAD && size >= PREFIX_SIZE + 8 {
            records[pos + 16..pos + 20].copy_from_slice(&pid.to_ne_bytes());
            records[pos + 20..pos + 24].copy_from_slice(&tid.to_ne_bytes());
        }
        pos += size;
    }
    pos
}

/// What an existing dump holds, if it is a dump this process may continue: a valid header for
/// `elf_machine` and `pid` (written by the program image this one was exec'd from, which has our
/// pid). Returns the length of its complete records (anything after, filler of an image that
/// never exited normally or a torn record, is to be cut) and the next unused code index.
pub fn continuable(dump: &[u8], elf_machine: u32, pid: u32) -> Option<(usize, u64)> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(dump.get(at..at + 4)?.try_into().ok()?))
    };
    let header_ok = dump.len() >= HEADER_SIZE
        && word(0) == Some(MAGIC)
        && word(4) == Some(VERSION)
        && word(8) == Some(HEADER_SIZE as u32)
        && word(12) == Some(elf_machine)
        && word(20) == Some(pid);
    if !header_ok {
        return None;
    }
    let mut pos = HEADER_SIZE;
    let mut next_index = 0;
    while pos + PREFIX_SIZE <= dump.len() {
        let id = word(pos)?;
        let size = word(pos + 4)? as usize;
        if size < PREFIX_SIZE || pos + size > dump.len() {
            break;
        }
        if id == JIT_CODE_LOAD && size >= PREFIX_SIZE + 40 {
            let at = pos + PREFIX_SIZE + 32;
            let index = u64::from_ne_bytes(dump[at..at + 8].try_into().ok()?);
            next_index = next_index.max(index + 1);
        }
        pos += size;
    }
    Some((pos, next_index))
}

/// The 40-byte file header (flags 0: timestamps are CLOCK_MONOTONIC nanoseconds).
pub fn encode_header(buf: &mut Vec<u8>, elf_machine: u32, pid: u32, timestamp_ns: u64) {
    let start = buf.len();
    for v in [MAGIC, VERSION, HEADER_SIZE as u32, elf_machine, 0, pid] {
        buf.extend_from_slice(&v.to_ne_bytes());
    }
    buf.extend_from_slice(&timestamp_ns.to_ne_bytes());
    buf.extend_from_slice(&0u64.to_ne_bytes()); // flags
    debug_assert_eq!(buf.len() - start, HEADER_SIZE);
}

fn prefix(buf: &mut Vec<u8>, id: u32, total_size: usize, timestamp: u64) {
    let total = u32::try_from(total_size).expect("jitdump record over 4 GiB");
    buf.extend_from_slice(&id.to_ne_bytes());
    buf.extend_from_slice(&total.to_ne_bytes());
    buf.extend_from_slice(&timestamp.to_ne_bytes());
}

/// Zero bytes up to a multiple of 8 from `start` (perf skips them: it reads `total_size`).
fn pad8(buf: &mut Vec<u8>, start: usize) {
    buf.resize(start + align8(buf.len() - start), 0);
}

/// CODE_LOAD: `vma` = `code_addr` (perf uses `code_addr`), NUL-terminated `name`, then the code
/// bytes LAST with no padding: perf reads them at `record_end - code_size`.
#[allow(clippy::too_many_arguments)]
pub fn encode_code_load(
    buf: &mut Vec<u8>,
    pid: u32,
    tid: u32,
    timestamp: u64,
    code_addr: u64,
    code_bytes: &[u8],
    code_index: u64,
    name: &[u8],
) {
    debug_assert!(!name.contains(&0), "names are sanitized by the caller");
    let total = PREFIX_SIZE + 4 + 4 + 8 * 4 + name.len() + 1 + code_bytes.len();
    prefix(buf, JIT_CODE_LOAD, total, timestamp);
    buf.extend_from_slice(&pid.to_ne_bytes());
    buf.extend_from_slice(&tid.to_ne_bytes());
    for v in [code_addr, code_addr, code_bytes.len() as u64, code_index] {
        buf.extend_from_slice(&v.to_ne_bytes());
    }
    buf.extend_from_slice(name);
    buf.push(0);
    buf.extend_from_slice(code_bytes);
}

/// CODE_DEBUG_INFO mapping the whole of `[code_addr, code_addr + code_size)` to
/// (`filename`, `line`): one entry at `code_addr`, and the closing entry at the end address
/// perf's line table needs to end the range. Addresses are absolute; perf rebases them.
pub fn encode_debug_info(
    buf: &mut Vec<u8>,
    timestamp: u64,
    code_addr: u64,
    code_size: u64,
    filename: &[u8],
    line: i32,
) {
    debug_assert!(!filename.contains(&0), "filenames are sanitized by the caller");
    let start = buf.len();
    let entry = 8 + 4 + 4 + filename.len() + 1;
    prefix(buf, JIT_CODE_DEBUG_INFO, align8(PREFIX_SIZE + 16 + 2 * entry), timestamp);
    buf.extend_from_slice(&code_addr.to_ne_bytes());
    buf.extend_from_slice(&2u64.to_ne_bytes()); // nr_entry
    for addr in [code_addr, code_addr + code_size] {
        buf.extend_from_slice(&addr.to_ne_bytes());
        buf.extend_from_slice(&line.to_ne_bytes());
        buf.extend_from_slice(&0i32.to_ne_bytes()); // discriminator
        buf.extend_from_slice(filename);
        buf.push(0);
    }
    pad8(buf, start);
}

/// CODE_UNWINDING_INFO: `unwinding_size` (= .eh_frame + .eh_frame_hdr), `eh_frame_hdr_size`,
/// `mapped_size`, then .eh_frame and the header LAST (genelf takes the header from the end:
/// `unwinding + unwinding_size - eh_frame_hdr_size`), padded to 8.
pub fn encode_unwinding_info(buf: &mut Vec<u8>, timestamp: u64, unwind: &UnwindInfo) {
    let start = buf.len();
    let size = unwind.mapped_size();
    prefix(buf, JIT_CODE_UNWINDING_INFO, align8(PREFIX_SIZE + 24 + size), timestamp);
    for v in [size, unwind.eh_frame_hdr.len(), size] {
        buf.extend_from_slice(&(v as u64).to_ne_bytes());
    }
    buf.extend_from_slice(&unwind.eh_frame);
    buf.extend_from_slice(&unwind.eh_frame_hdr);
    pad8(buf, start);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::{self, aarch64, x86_64};
    use crate::sink::eh_frame::unwind_info;
    use linux_perf_data::jitdump::{JitDumpReader, JitDumpRecord, JitDumpRecordType};

    #[test]
    fn retargeted_records_belong_to_the_child() {
        let arch = &x86_64::ARCH;
        let unwind = unwind_info(arch);
        let mut records = Vec::new();
        for index in 0..3u64 {
            let addr = 0x7000_0000 + index * 96;
            encode_debug_info(&mut records, 5, addr, 20, b"/t.py", 3);
            encode_unwinding_info(&mut records, 5, &unwind);
            encode_code_load(
                &mut records,
                100,
                101,
                5,
                addr,
                &salted_code(arch, index, 9),
                index,
                b"py::f:/t.py",
            );
        }
        let complete = records.len();
        records.extend_from_slice(&[0u8; 64]); // filler after the last record
        assert_eq!(retarget_records(&mut records, 200, 201, 77), complete);
        let mut dump = Vec::new();
        encode_header(&mut dump, 62, 200, 1);
        dump.extend_from_slice(&records[..complete]);
        let mut reader = JitDumpReader::new(&dump[..]).unwrap();
        let mut loads = 0;
        while let Some(record) = reader.next_record().unwrap() {
            assert_eq!(record.timestamp, 77);
            if let JitDumpRecord::CodeLoad(load) = record.parse().unwrap() {
                assert_eq!((load.pid, load.tid), (200, 201));
                loads += 1;
            }
        }
        assert_eq!(loads, 3);
        // A torn record at the end is left out.
        let mut torn = records[..complete - 10].to_vec();
        assert!(retarget_records(&mut torn, 1, 1, 1) < complete - 10);
    }

    #[test]
    fn a_dump_of_our_pid_is_continued_after_its_last_complete_record() {
        let arch = &x86_64::ARCH;
        let unwind = unwind_info(arch);
        let mut dump = Vec::new();
        encode_header(&mut dump, 62, 300, 1);
        for index in [0u64, 1, 7] {
            encode_debug_info(&mut dump, 5, 0x1000 * index, 16, b"/t.py", 1);
            encode_unwinding_info(&mut dump, 5, &unwind);
            encode_code_load(
                &mut dump,
                300,
                300,
                5,
                0x1000 * index,
                &salted_code(arch, index, 3),
                index,
                b"py::f:/t.py",
            );
        }
        let complete = dump.len();
        dump.extend_from_slice(&[0u8; 100]); // filler of an image that exec'd
        assert_eq!(continuable(&dump, 62, 300), Some((complete, 8)));
        assert_eq!(continuable(&dump, 62, 301), None, "another pid's dump");
        assert_eq!(continuable(&dump, 183, 300), None, "another machine's dump");
        assert_eq!(continuable(b"OLD-DUMP-BYTES", 62, 300), None);
        let mut torn = dump[..complete - 3].to_vec();
        let (end, _) = continuable(&torn, 62, 300).unwrap();
        assert!(end < complete - 3);
        torn.truncate(end);
        assert!(JitDumpReader::new(&torn[..]).is_ok());
    }

    #[test]
    fn header_is_40_bytes_and_reads_back() {
        let mut buf = Vec::new();
        encode_header(&mut buf, 62, 4242, 123_456_789);
        assert_eq!(buf.len(), HEADER_SIZE);
        let reader = JitDumpReader::new(&buf[..]).unwrap();
        let h = reader.header();
        assert_eq!(&h.magic, &MAGIC.to_ne_bytes());
        assert_eq!((h.version, h.total_size, h.elf_machine_arch), (1, 40, 62));
        assert_eq!((h.pid, h.timestamp, h.flags), (4242, 123_456_789, 0));
    }

    #[test]
    fn salted_code_keeps_the_stub_and_is_unique() {
        for arch in arch::ALL {
            let salt = 0x9e37_79b9_7f4a_7c15;
            let mut seen = std::collections::HashSet::new();
            for index in 0..10_000 {
                let bytes = salted_code(arch, index, salt);
                assert_eq!(bytes.len(), code_size(arch));
                assert_eq!(&bytes[..arch.code.len()], arch.code);
                assert!(seen.insert(bytes), "{}: duplicate dumped code", arch.name);
            }
            // Another process's salt gives other bytes for the same index.
            assert_ne!(salted_code(arch, 7, salt), salted_code(arch, 7, salt ^ 1));
        }
    }

    #[test]
    fn jit_slots_never_overlap() {
        for arch in arch::ALL {
            let unwind = unwind_info(arch);
            let slot = jit_slot_size(arch, &unwind);
            assert_eq!(slot % 16, 0, "{}", arch.name);
            // perf inject's mapping of load i, [addr, addr + align8(code_size) + mapped_size),
            // ends before load i+1 starts at addr + slot.
            assert!(align8(code_size(arch)) + unwind.mapped_size() <= slot, "{}", arch.name);
            assert!(slot >= arch.slot_template.len(), "{}", arch.name);
        }
        let unwind = unwind_info(&x86_64::ARCH);
        assert_eq!(
            jit_slot_size(&x86_64::ARCH, &unwind),
            96,
            "mapped_size {}",
            unwind.mapped_size()
        );
        // tests/conftest.py's STUBS states both; the aarch64 value is checked under qemu.
        let unwind = unwind_info(&aarch64::ARCH);
        assert_eq!(
            jit_slot_size(&aarch64::ARCH, &unwind),
            112,
            "mapped_size {}",
            unwind.mapped_size()
        );
    }

    #[test]
    fn records_are_padded_except_code_load() {
        let arch = &x86_64::ARCH;
        let unwind = unwind_info(arch);
        for name_len in 0..9 {
            let name = vec![b'a'; name_len];
            let mut buf = Vec::new();
            encode_debug_info(&mut buf, 1, 0x1000, 20, &name, 3);
            assert_eq!(buf.len() % 8, 0);
            assert_eq!(u32::from_ne_bytes(buf[4..8].try_into().unwrap()) as usize, buf.len());
            let mut buf = Vec::new();
            encode_unwinding_info(&mut buf, 1, &unwind);
            assert_eq!(buf.len() % 8, 0);
            assert_eq!(u32::from_ne_bytes(buf[4..8].try_into().unwrap()) as usize, buf.len());
            let code = salted_code(arch, 1, 2);
            let mut buf = Vec::new();
            encode_code_load(&mut buf, 1, 1, 1, 0x1000, &code, 1, &name);
            assert_eq!(u32::from_ne_bytes(buf[4..8].try_into().unwrap()) as usize, buf.len());
            assert!(buf.ends_with(&code), "code last, no padding");
        }
    }

    /// A dump as the writer will produce it, read back by linux-perf-data's JitDumpReader.
    #[test]
    fn full_dump_reads_back() {
        let arch = &x86_64::ARCH;
        let unwind = unwind_info(arch);
        let slot = jit_slot_size(arch, &unwind) as u64;
        let (pid, tid, salt, base) = (4242u32, 4243u32, 0xdead_beef_u64, 0x7f00_0000_0000u64);
        let names: [&[u8]; 3] =
            [b"py::foo:/t/a.py", b"py::Bar.baz:/t/a.py", b"py::<module>:/t/b.py"];
        let files: [&[u8]; 3] = [b"/t/a.py", b"/t/a.py", b"/t/b.py"];
        let lines = [1, 17, 1];
        let mut buf = Vec::new();
        encode_header(&mut buf, arch.elf_machine, pid, 1000);
        for i in 0..3u64 {
            let addr = base + i * slot;
            let ts = 2000 + i;
            encode_debug_info(
                &mut buf,
                ts,
                addr,
                code_size(arch) as u64,
                files[i as usize],
                lines[i as usize],
            );
            encode_unwinding_info(&mut buf, ts, &unwind);
            encode_code_load(
                &mut buf,
                pid,
                tid,
                ts,
                addr,
                &salted_code(arch, i, salt),
                i,
                names[i as usize],
            );
        }

        let mut reader = JitDumpReader::new(&buf[..]).unwrap();
        assert_eq!(reader.header().elf_machine_arch, 62);
        assert_eq!(reader.header().pid, pid);
        let mut kinds = Vec::new();
        let mut loads = Vec::new();
        let mut pending_debug = None;
        while let Some(raw) = reader.next_record().unwrap() {
            kinds.push(raw.record_type);
            let i = loads.len() as u64;
            let addr = base + i * slot;
            assert_eq!(raw.timestamp, 2000 + i);
            match raw.parse().unwrap() {
                JitDumpRecord::CodeDebugInfo(d) => {
                    assert_eq!(d.code_addr, addr);
                    let e: Vec<_> = d
                        .entries
                        .iter()
                        .map(|e| (e.code_addr, e.line, e.file_path.as_slice().into_owned()))
                        .collect();
                    let file = files[i as usize].to_vec();
                    let line = lines[i as usize] as u32;
                    assert_eq!(
                        e,
                        vec![
                            (addr, line, file.clone()),
                            (addr + code_size(arch) as u64, line, file)
                        ]
                    );
                    pending_debug = Some(d.code_addr);
                }
                JitDumpRecord::CodeUnwindingInfo(u) => {
                    assert_eq!(u.mapped_size as usize, unwind.mapped_size());
                    // linux-perf-data splits the data header-first (the spec text's order);
                    // perf's genelf takes .eh_frame first and the header last, as we write it.
                    // Check the bytes, whichever way the reader labels them.
                    let mut data = u.eh_frame_hdr.as_slice().into_owned();
                    data.extend_from_slice(&u.eh_frame.as_slice());
                    assert_eq!(&data[..unwind.eh_frame.len()], &unwind.eh_frame[..]);
                    assert_eq!(&data[unwind.eh_frame.len()..], &unwind.eh_frame_hdr[..]);
                }
                JitDumpRecord::CodeLoad(l) => {
                    assert_eq!(pending_debug.take(), Some(addr), "debug info precedes its load");
                    assert_eq!(
                        (l.pid, l.tid, l.vma, l.code_addr, l.code_index),
                        (pid, tid, addr, addr, i)
                    );
                    assert_eq!(l.function_name.as_slice(), names[i as usize]);
                    assert_eq!(l.code_bytes.as_slice(), salted_code(arch, i, salt));
                    // Nothing after the code: perf reads it at record_end - code_size.
                    assert_eq!(
                        l.code_bytes_offset_from_record_header_start() + code_size(arch),
                        raw.record_size as usize
                    );
                    loads.push((l.code_index, l.code_bytes.as_slice().into_owned()));
                }
                other => panic!("unexpected record {other:?}"),
            }
        }
        let order = [
            JitDumpRecordType::JIT_CODE_DEBUG_INFO,
            JitDumpRecordType::JIT_CODE_UNWINDING_INFO,
            JitDumpRecordType::JIT_CODE_LOAD,
        ];
        assert_eq!(kinds, order.repeat(3));
        assert_eq!(loads.len(), 3);
        let indices: std::collections::HashSet<_> = loads.iter().map(|l| l.0).collect();
        let codes: std::collections::HashSet<_> = loads.iter().map(|l| l.1.clone()).collect();
        assert_eq!((indices.len(), codes.len()), (3, 3), "unique code_index and build-id input");
    }
}
