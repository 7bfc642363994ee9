//! `names::symbol_name` and `names::push_escaped` on arbitrary bytes: never panic; the output
//! is valid UTF-8 with no control character (C0, DEL, C1), line/paragraph separator or bidi
//! formatting character, at most `MAX_NAME` bytes, independent of the buffer's old content;
//! printable input short enough to keep comes out verbatim.
#![no_main]

use _perftramp::sink::names::{self, MAX_FILENAME, MAX_NAME, MAX_QUALNAME};
use libfuzzer_sys::fuzz_target;

fn forbidden(c: char) -> bool {
    let u = c as u32;
    u < 0x20
        || (0x7f..=0x9f).contains(&u)
        || matches!(u, 0x2028 | 0x2029 | 0x061c | 0x200e | 0x200f | 0x202a..=0x202e | 0x2066..=0x2069)
}

fn clean(b: &[u8], max: usize) -> bool {
    std::str::from_utf8(b).is_ok_and(|s| s.len() <= max && !s.contains(forbidden))
}

fuzz_target!(|data: &[u8]| {
    // First byte: where the qualname ends and the file name starts; second: a repeat count,
    // so that short inputs also reach the length bounds.
    let (split, repeat, rest) = match data {
        [s, r, rest @ ..] => (*s as usize, 1 + (*r as usize % 4) * 300, rest),
        _ => (0, 1, data),
    };
    let cut = if rest.is_empty() { 0 } else { split * rest.len() / 256 };
    let (q, f) = rest.split_at(cut);
    let (q, f) = if repeat > 1 && q.len() < 64 {
        (q.repeat(repeat), f.repeat(repeat))
    } else {
        (q.to_vec(), f.to_vec())
    };

    let mut out = Vec::new();
    names::symbol_name(&q, &f, &mut out);
    let name = std::str::from_utf8(&out).expect("symbol names are UTF-8");
    assert!(out.len() <= MAX_NAME, "{} bytes", out.len());
    assert!(name.starts_with("py::"));
    assert!(!name.contains(forbidden), "{name:?}");

    let mut reused = b"old\ncontent\0".to_vec();
    names::symbol_name(&q, &f, &mut reused);
    assert_eq!(reused, out);

    if clean(&q, MAX_QUALNAME) && clean(&f, MAX_FILENAME) {
        assert_eq!(out, [b"py::".as_slice(), &q, b":", &f].concat());
    }

    for input in [&q, &f] {
        let mut escaped = Vec::new();
        names::push_escaped(&mut escaped, input);
        let text = std::str::from_utf8(&escaped).expect("escaped text is UTF-8");
        assert!(!text.contains(forbidden), "{text:?}");
        if clean(input, usize::MAX) {
            assert_eq!(&escaped, input);
        }
    }
});
