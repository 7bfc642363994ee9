//! Deterministic property tests of the pure encoders over many generated inputs: the same
//! properties `fuzz/` checks with cargo-fuzz (coverage-guided, nightly), here on every
//! `cargo test` with a fixed-seed xorshift generator.
//!
//! - [`names::symbol_name`] and [`names::push_escaped`]: never panic; output is valid UTF-8
//!   with no control character (C0, DEL, C1), no line/paragraph separator and no bidi
//!   formatting character; bounded length; printable input short enough to keep is unchanged.
//! - [`jitdump::encode_debug_info`], [`jitdump::encode_unwinding_info`],
//!   [`jitdump::encode_code_load`]: a dump of them parses back with linux-perf-data's
//!   `JitDumpReader`, field for field, with exact record sizes.
//! - [`jitdump::retarget_records`] (re-reads a file another process could have damaged): never
//!   panics on arbitrary bytes and never claims more than it was given.

use linux_perf_data::jitdump::{JitDumpReader, JitDumpRecord, JitDumpRecordType};

use crate::arch;
use crate::sink::eh_frame::unwind_info;
use crate::sink::jitdump;
use crate::sink::names::{self, MAX_FILENAME, MAX_NAME, MAX_QUALNAME};

/// xorshift64* (Vigna): tiny, deterministic, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// UTF-8 (or deliberately broken) encodings of what hostile names are made of.
const PIECES: &[&[u8]] = &[
    b"\n",
    b"\r",
    b"\t",
    b"\0",
    b"\x1b[31m",
    b"\x7f",
    b"\\",
    b"\\x41",
    b":",
    b" ",
    b"...",
    b"py::",
    "\u{85}".as_bytes(),     // NEL (C1)
    "\u{9b}".as_bytes(),     // CSI (C1)
    "\u{2028}".as_bytes(),   // line separator
    "\u{2029}".as_bytes(),   // paragraph separator
    "\u{200f}".as_bytes(),   // right-to-left mark
    "\u{202e}".as_bytes(),   // right-to-left override
    "\u{2066}".as_bytes(),   // left-to-right isolate
    "\u{feff}".as_bytes(),   // BOM
    "\u{20ac}".as_bytes(),   // 3 bytes
    "\u{1f600}".as_bytes(),  // 4 bytes
    "\u{10ffff}".as_bytes(), // highest code point
    b"\xed\xa0\x80",         // a lone surrogate in WTF-8
    b"\xed\xb3\xbf",
    b"\xc0\x80",         // overlong NUL
    b"\xe2\x82",         // truncated sequence
    b"\xf4\x90\x80\x80", // above U+10FFFF
    b"\x80",
    b"\xbf",
    b"\xfe",
    b"\xff",
];

fn random_bytes(rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    let pieces = if rng.chance(10) { 0 } else { rng.below(24) };
    for _ in 0..pieces {
        match rng.below(5) {
            0 | 1 => out.extend_from_slice(PIECES[rng.below(PIECES.len())]),
            2 => out.push(rng.next() as u8),
            3 => out.push(b'a' + rng.below(26) as u8),
            _ => {
                if let Some(c) = char::from_u32(rng.below(0x11_0000) as u32) {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
    }
    if rng.chance(8) {
        // One long run, somewhere: what crosses the length bounds, at any alignment.
        let piece = PIECES[rng.below(PIECES.len())];
        let at = rng.below(out.len() + 1);
        let run = piece.repeat(rng.below(2600 / piece.len()) + 1);
        out.splice(at..at, run);
    }
    out
}

/// A character that must never appear in a record: it ends a line for perf or for Python's
/// `str.splitlines()`, drives a terminal, or reorders what a viewer shows.
pub(crate) fn forbidden(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0x9f).contains(&u)
        || matches!(u, 0x2028 | 0x2029 | 0x061c | 0x200e | 0x200f | 0x202a..=0x202e | 0x2066..=0x2069)
}

/// The start of `text`, for failure messages.
fn short(text: &str) -> String {
    text.chars().take(120).collect()
}

/// Checks every property of `symbol_name(q, f)`; returns the name.
pub(crate) fn check_symbol_name(q: &[u8], f: &[u8]) -> String {
    let mut out = Vec::new();
    names::symbol_name(q, f, &mut out);
    let name = String::from_utf8(out.clone()).expect("symbol names are UTF-8");
    assert!(out.len() <= MAX_NAME, "{} > MAX_NAME for {:?}", out.len(), short(&name));
    assert!(name.starts_with("py::"));
    assert!(!name.contains(forbidden), "forbidden char in {:?}", short(&name));
    // The output does not depend on what the buffer held before.
    let mut reused = b"stale\nbytes\0".to_vec();
    names::symbol_name(q, f, &mut reused);
    assert_eq!(reused, out);
    // Printable text short enough to keep comes out verbatim.
    let clean = |b: &[u8], max: usize| {
        std::str::from_utf8(b).is_ok_and(|s| s.len() <= max && !s.contains(forbidden))
    };
    if clean(q, MAX_QUALNAME) && clean(f, MAX_FILENAME) {
        let mut expected = b"py::".to_vec();
        expected.extend_from_slice(q);
        expected.push(b':');
        expected.extend_from_slice(f);
        assert_eq!(out, expected);
    }
    name
}

pub(crate) fn check_escaped(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    names::push_escaped(&mut out, input);
    let text = std::str::from_utf8(&out).expect("escaped text is UTF-8");
    assert!(!text.contains(forbidden), "forbidden char in {:?}", short(text));
    assert!(!out.contains(&0));
    if std::str::from_utf8(input).is_ok_and(|s| !s.contains(forbidden)) {
        assert_eq!(out, input);
    }
    out
}

/// Encodes one trampoline's records the way jitdump_file.rs does and reads them back.
pub(crate) fn check_jitdump_roundtrip(
    q: &[u8],
    f: &[u8],
    raw_name: &[u8],
    line: i32,
    addr: u64,
    seeds: [u64; 3],
) {
    let [a, b, c] = seeds;
    for arch in arch::ALL {
        let unwind = unwind_info(arch);
        let mut name = Vec::new();
        names::symbol_name(q, f, &mut name);
        let filename = check_escaped(f);
        let code = jitdump::salted_code(arch, a, b);
        let (pid, tid, ts, index) = (a as u32, b as u32, c, a ^ c);
        let mut buf = Vec::new();
        jitdump::encode_header(&mut buf, arch.elf_machine, pid, ts);
        let records_start = buf.len();
        jitdump::encode_debug_info(&mut buf, ts, addr, code.len() as u64, &filename, line);
        let debug_end = buf.len();
        jitdump::encode_unwinding_info(&mut buf, ts, &unwind);
        let unwind_end = buf.len();
        jitdump::encode_code_load(&mut buf, pid, tid, ts, addr, &code, index, &name);
        // A second load with an arbitrary NUL-free name and arbitrary code bytes (the encoder's
        // only precondition is a NUL-free name).
        let raw_name: Vec<u8> = raw_name.iter().copied().filter(|&b| b != 0).collect();
        let raw_code: Vec<u8> = raw_name.iter().rev().copied().take((c % 300) as usize).collect();
        jitdump::encode_code_load(
            &mut buf,
            pid,
            tid,
            ts,
            addr + 1,
            &raw_code,
            index.wrapping_add(1),
            &raw_name,
        );
        assert_eq!((debug_end - records_start) % 8, 0);
        assert_eq!((unwind_end - debug_end) % 8, 0);

        let mut reader = JitDumpReader::new(&buf[..]).expect("header");
        assert_eq!(reader.header().pid, pid);
        let mut seen = Vec::new();
        while let Some(raw) = reader.next_record().expect("record") {
            assert_eq!(raw.timestamp, ts);
            seen.push(raw.record_type);
            let size = raw.record_size as usize;
            match raw.parse().expect("parses") {
                JitDumpRecord::CodeDebugInfo(d) => {
                    assert_eq!(d.code_addr, addr);
                    assert_eq!(d.entries.len(), 2);
                    for (e, at) in d.entries.iter().zip([addr, addr + code.len() as u64]) {
                        assert_eq!((e.code_addr, e.line), (at, line as u32));
                        assert_eq!(e.file_path.as_slice(), &filename[..]);
                    }
                }
                JitDumpRecord::CodeUnwindingInfo(u) => {
                    assert_eq!(u.mapped_size as usize, unwind.mapped_size());
                }
                JitDumpRecord::CodeLoad(l) => {
                    let first = l.code_index == index;
                    let (want_name, want_code, want_addr) = if first {
                        (&name[..], &code[..], addr)
                    } else {
                        (&raw_name[..], &raw_code[..], addr + 1)
                    };
                    assert_eq!(l.function_name.as_slice(), want_name);
                    assert_eq!(l.code_bytes.as_slice(), want_code);
                    assert_eq!(
                        (l.pid, l.tid, l.vma, l.code_addr),
                        (pid, tid, want_addr, want_addr)
                    );
                    // Nothing after the code bytes: perf reads them at record_end - code_size.
                    assert_eq!(
                        l.code_bytes_offset_from_record_header_start() + want_code.len(),
                        size
                    );
                    if first {
                        let text = std::str::from_utf8(l.function_name.as_slice().as_ref())
                            .expect("names are UTF-8")
                            .to_owned();
                        assert!(!text.contains(forbidden), "forbidden char in {:?}", short(&text));
                    }
                }
                other => panic!("unexpected record {other:?}"),
            }
        }
        assert_eq!(
            seen,
            [
                JitDumpRecordType::JIT_CODE_DEBUG_INFO,
                JitDumpRecordType::JIT_CODE_UNWINDING_INFO,
                JitDumpRecordType::JIT_CODE_LOAD,
                JitDumpRecordType::JIT_CODE_LOAD
            ]
        );
        // Re-targeting (fork children re-emit a parent's records) keeps them whole.
        let mut records = buf[records_start..].to_vec();
        assert_eq!(jitdump::retarget_records(&mut records, 7, 8, 9), buf.len() - records_start);
    }
}

/// `retarget_records` over bytes a damaged or foreign file could hold.
pub(crate) fn check_retarget_garbage(bytes: &[u8], seed: u64) {
    let mut copy = bytes.to_vec();
    let complete = jitdump::retarget_records(&mut copy, seed as u32, (seed >> 32) as u32, seed);
    assert!(complete <= bytes.len());
    // Past `complete`, nothing was touched.
    assert_eq!(copy[complete..], bytes[complete..]);
}

#[test]
fn symbol_names_of_random_bytes() {
    let mut rng = Rng::new(0x5eed_0001);
    for _ in 0..20_000 {
        let (q, f) = (random_bytes(&mut rng), random_bytes(&mut rng));
        check_symbol_name(&q, &f);
        check_escaped(&q);
    }
}

#[test]
fn symbol_names_at_the_length_bounds() {
    // Every piece repeated to just below, at and above each bound, at every byte alignment.
    for piece in PIECES {
        for pad in 0..4 {
            for target in [MAX_QUALNAME - 1, MAX_QUALNAME, MAX_QUALNAME + 1, MAX_FILENAME + 1] {
                let mut q = vec![b'a'; pad];
                while q.len() < target {
                    q.extend_from_slice(piece);
                }
                check_symbol_name(&q, &q);
                check_symbol_name(&q[..target.min(q.len())], b"f.py");
            }
        }
    }
    // Escaping's worst case: every byte becomes 4 (\xHH) or 6 (\uHHHH) bytes.
    check_symbol_name(&vec![0u8; 100_000], &vec![0xffu8; 100_000]);
    check_symbol_name("\u{2028}".repeat(50_000).as_bytes(), "\u{202e}".repeat(50_000).as_bytes());
}

#[test]
fn every_code_point_alone_and_in_context() {
    for u in 0..=0x10_ffffu32 {
        let Some(c) = char::from_u32(u) else { continue };
        if u > 0x3000 && u % 61 != 0 && !(0xfe00..=0xffff).contains(&u) {
            continue; // a sample of the upper planes keeps this fast
        }
        let mut buf = [0u8; 4];
        let s = c.encode_utf8(&mut buf).as_bytes();
        check_symbol_name(s, s);
        let mut wrapped = b"x".to_vec();
        wrapped.extend_from_slice(s);
        wrapped.push(b'y');
        check_escaped(&wrapped);
    }
}

#[test]
fn jitdump_records_of_random_names_read_back() {
    let mut rng = Rng::new(0x5eed_0002);
    for _ in 0..3_000 {
        let (q, f, raw) = (random_bytes(&mut rng), random_bytes(&mut rng), random_bytes(&mut rng));
        let line = rng.next() as i32;
        // A user-space address (perf's addresses are below 2^56; the end address must not wrap).
        let addr = rng.next() >> 8;
        check_jitdump_roundtrip(&q, &f, &raw, line, addr, [rng.next(), rng.next(), rng.next()]);
    }
}

#[test]
fn retarget_never_panics_on_garbage() {
    let mut rng = Rng::new(0x5eed_0003);
    for _ in 0..20_000 {
        let mut bytes = random_bytes(&mut rng);
        // Sometimes a plausible record prefix: id 0..5 and a size around the buffer's length.
        if rng.chance(50) && bytes.len() >= 16 {
            let id = rng.below(6) as u32;
            let size = (bytes.len() as i64 + rng.below(48) as i64 - 24).max(0) as u32;
            bytes[0..4].copy_from_slice(&id.to_ne_bytes());
            bytes[4..8].copy_from_slice(&size.to_ne_bytes());
        }
        check_retarget_garbage(&bytes, rng.next());
    }
}
