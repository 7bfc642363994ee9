//! Symbol names for trampolines: `py::<qualname>:<filename>`, as CPython's own perf support
//! names them, made safe for perf's line-based map and NUL-terminated jitdump strings.
//!
//! Every byte that could break a record is escaped: control characters (newline, tab, NUL,
//! DEL, C1 controls such as NEL...) become `\n`, `\t`, `\xHH`; line/paragraph separators
//! and bidi formatting characters become `\uHHHH`; bytes that are not UTF-8 become `\xHH`. Very long parts
//! are shortened (the start of a qualname and the end of a file name are what identify them).

/// Longest qualname kept, in bytes, before `...` is appended.
pub const MAX_QUALNAME: usize = 1024;
/// Longest file name kept, in bytes, before `...` is prepended (the base name is kept).
pub const MAX_FILENAME: usize = 2048;
/// Upper bound of a whole name (prefix, separator, both parts at their escaped worst).
pub const MAX_NAME: usize = 4 + MAX_QUALNAME + 3 + 1 + 3 + MAX_FILENAME + 4;

/// Writes `py::<qualname>:<filename>` into `out` (cleared first). `out` is valid UTF-8 with no
/// control characters afterwards, and at most [`MAX_NAME`] bytes long.
pub fn symbol_name(qualname: &[u8], filename: &[u8], out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(b"py::");
    push_bounded(out, qualname, MAX_QUALNAME, Keep::Start);
    out.push(b':');
    push_bounded(out, filename, MAX_FILENAME, Keep::End);
    debug_assert!(out.len() <= MAX_NAME);
}

#[derive(Clone, Copy)]
enum Keep {
    Start,
    End,
}

/// Appends `input` escaped; if the escaped form is longer than `limit`, keeps the start or the
/// end of it (on a character boundary) and marks the cut with `...`.
fn push_bounded(out: &mut Vec<u8>, input: &[u8], limit: usize, keep: Keep) {
    let start = out.len();
    push_escaped(out, input);
    let escaped_len = out.len() - start;
    if escaped_len <= limit {
        return;
    }
    let escaped = out.split_off(start);
    // Escaped text is ASCII-safe UTF-8; cut it at a char boundary.
    let text = std::str::from_utf8(&escaped).expect("escaped names are UTF-8");
    let kept = match keep {
        Keep::Start => {
            let mut cut = limit;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            &text[..cut]
        }
        Keep::End => {
            let mut cut = text.len() - limit;
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            &text[cut..]
        }
    };
    match keep {
        Keep::Start => {
            out.extend_from_slice(kept.as_bytes());
            out.extend_from_slice(b"...");
        }
        Keep::End => {
            out.extend_from_slice(b"...");
            out.extend_from_slice(kept.as_bytes());
        }
    }
}

/// Appends `input` with control characters and invalid UTF-8 escaped.
pub fn push_escaped(out: &mut Vec<u8>, input: &[u8]) {
    // Nearly every name is printable ASCII: copy it whole.
    if input.iter().all(|&b| (0x20..0x7f).contains(&b)) {
        out.extend_from_slice(input);
        return;
    }
    for chunk in input.utf8_chunks() {
        for ch in chunk.valid().chars() {
            match ch {
                '\n' => out.extend_from_slice(b"\\n"),
                '\r' => out.extend_from_slice(b"\\r"),
                '\t' => out.extend_from_slice(b"\\t"),
                // C0, DEL and C1 controls (C1 = U+0080..U+009F: NEL ends a line for Python's
                // str.splitlines(), CSI drives terminals), as Python's repr writes them: \xHH.
                c if (c as u32) < 0x20 || (0x7f..=0x9f).contains(&(c as u32)) => {
                    push_hex(out, c as u32 as u8)
                }
                // Line/paragraph separators (lines for str.splitlines() and editors) and bidi
                // formatting characters (they reorder what a viewer shows): \uHHHH.
                c if is_separator_or_bidi(c) => push_u16_escape(out, c as u32 as u16),
                c => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                }
            }
        }
        for &byte in chunk.invalid() {
            push_hex(out, byte);
        }
    }
}

fn is_separator_or_bidi(c: char) -> bool {
    matches!(c, '\u{2028}' | '\u{2029}' | '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_u16_escape(out: &mut Vec<u8>, unit: u16) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(b"\\u");
    for shift in [12, 8, 4, 0] {
        out.push(HEX[((unit >> shift) & 15) as usize]);
    }
}

fn push_hex(out: &mut Vec<u8>, byte: u8) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.extend_from_slice(&[b'\\', b'x', HEX[(byte >> 4) as usize], HEX[(byte & 15) as usize]]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(q: &[u8], f: &[u8]) -> String {
        let mut out = Vec::new();
        symbol_name(q, f, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_names_are_cpythons_format() {
        assert_eq!(name(b"Foo.bar", b"/run/t.py"), "py::Foo.bar:/run/t.py");
        assert_eq!(name(b"<module>", b"<string>"), "py::<module>:<string>");
        assert_eq!(
            name("f\u{e9}".as_bytes(), "/tmp/\u{4e2d}.py".as_bytes()),
            "py::f\u{e9}:/tmp/\u{4e2d}.py"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(name(b"a\nb", b"x\ty\r\0z\x7f\x1b"), "py::a\\nb:x\\ty\\r\\x00z\\x7f\\x1b");
    }

    #[test]
    fn c1_controls_separators_and_bidi_marks_are_escaped() {
        assert_eq!(
            name("a\u{85}b\u{9b}c".as_bytes(), "\u{80}\u{9f}".as_bytes()),
            "py::a\\x85b\\x9bc:\\x80\\x9f"
        );
        assert_eq!(name("l\u{2028}p\u{2029}".as_bytes(), b"f"), "py::l\\u2028p\\u2029:f");
        assert_eq!(
            name("x\u{202e}y\u{200f}z\u{2066}".as_bytes(), "\u{061c}.py".as_bytes()),
            "py::x\\u202ey\\u200fz\\u2066:\\u061c.py"
        );
        // Neighbours that are ordinary text stay as they are.
        assert_eq!(
            name("\u{a0}\u{200b}\u{2027}\u{202f}\u{2065}".as_bytes(), b"f"),
            "py::\u{a0}\u{200b}\u{2027}\u{202f}\u{2065}:f"
        );
    }

    #[test]
    fn invalid_utf8_is_escaped() {
        // A lone surrogate's WTF-8 bytes and a stray continuation byte.
        assert_eq!(name(b"\xed\xb2\x80", b"\x80ok"), "py::\\xed\\xb2\\x80:\\x80ok");
    }

    #[test]
    fn long_parts_are_bounded_keeping_what_identifies_them() {
        let q = "q".repeat(5000);
        let f = format!("/{}/base.py", "d".repeat(9000));
        let n = name(q.as_bytes(), f.as_bytes());
        assert!(n.len() <= MAX_NAME, "{}", n.len());
        assert!(n.starts_with("py::qqq"));
        assert!(n.contains("q...:..."));
        assert!(n.ends_with("/base.py"));
    }

    #[test]
    fn cutting_never_splits_a_character() {
        let q = "\u{20ac}".repeat(MAX_QUALNAME); // 3 bytes each
        let f = "\u{20ac}".repeat(MAX_FILENAME);
        let n = name(q.as_bytes(), f.as_bytes()); // String::from_utf8 inside would panic otherwise
        assert!(n.len() <= MAX_NAME);
    }

    #[test]
    fn escaping_worst_case_stays_bounded_and_single_line() {
        let q = vec![b'\n'; 3000];
        let f = vec![0u8; 3000];
        let n = name(&q, &f);
        assert!(n.len() <= MAX_NAME);
        assert!(!n.bytes().any(|b| b < 0x20 || b == 0x7f));
    }

    #[test]
    fn arbitrary_bytes_never_yield_control_characters() {
        // Deterministic sweep over all single bytes and many pairs.
        for a in 0..=255u8 {
            for b in (0..=255u8).step_by(7) {
                let n = name(&[a, b], &[b, a, b'\n']);
                assert!(!n.bytes().any(|c| c < 0x20 || c == 0x7f), "{a} {b}: {n:?}");
            }
        }
    }
}
