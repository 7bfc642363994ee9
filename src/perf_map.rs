//! The perf map, `/tmp/perf-<pid>.map`: one `<hex start> <hex size> <name>` line per trampoline,
//! exactly as CPython writes it, so tools that know CPython's format (and filter on `py::`)
//! read ours unchanged. perf reads it at report time, from /tmp, by the pid of the process.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::append_file::AppendFile;
use crate::file_error::{annotate, refusal};

pub fn path_for(pid: u32) -> PathBuf {
    PathBuf::from(format!("/tmp/perf-{pid}.map"))
}

pub struct PerfMap {
    file: AppendFile,
    line: Vec<u8>,
}

impl PerfMap {
    /// Opens (creating 0600) the map of process `pid`. Refuses, naming the path, a symlink, a
    /// file with other hard links, a non-regular file, or one owned by another user.
    pub fn open(pid: u32) -> io::Result<Self> {
        let path = path_for(pid);
        let mut file = open_owned_file(&path)?;
        // Best effort: if it fails, so will the first append, which reports it.
        let _ = end_torn_line(&mut file);
        Ok(PerfMap { file: AppendFile::new(file, path, b'\n')?, line: Vec::with_capacity(256) })
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn failure(&self) -> Option<&str> {
        self.file.failure()
    }

    /// Appends the entry for code at `addr..addr+size` named `name` (already sanitized: no
    /// control characters).
    pub fn write_entry(&mut self, addr: usize, size: usize, name: &[u8]) {
        format_entry(&mut self.line, addr, size, name);
        self.file.append(&self.line);
    }

    /// The map's entries so far (blank filler lines dropped), for a fork child to copy.
    pub fn entries(&self) -> io::Result<Vec<u8>> {
        let bytes = self.file.read_back(0)?;
        let mut entries = Vec::with_capacity(bytes.len());
        for line in bytes.split(|&b| b == b'\n').filter(|line| !line.is_empty()) {
            entries.extend_from_slice(line);
            entries.push(b'\n');
        }
        Ok(entries)
    }

    /// Appends complete entries (`entries` output of another map).
    pub fn append_entries(&mut self, entries: &[u8]) {
        if !entries.is_empty() {
            self.file.append(entries);
        }
    }

    pub fn trim(&mut self) {
        self.file.trim();
    }

    pub fn abandon(self) {
        self.file.abandon();
    }
}

/// A stale map (an earlier process with our pid, killed mid-write) may end inside a line: end
/// that line, so our first entry is a line of its own instead of being glued to it.
fn end_torn_line(file: &mut File) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    file.read_exact_at(&mut last, len - 1)?;
    if last[0] != b'\n' {
        file.write_all(b"\n")?; // O_APPEND: at the end
    }
    Ok(())
}

/// `<addr> <size> <name>\n`, lowercase hex without 0x, as CPython writes it.
pub fn format_entry(out: &mut Vec<u8>, addr: usize, size: usize, name: &[u8]) {
    debug_assert!(!name.iter().any(|&b| b == b'\n'));
    out.clear();
    push_hex(out, addr);
    out.push(b' ');
    push_hex(out, size);
    out.push(b' ');
    out.extend_from_slice(name);
    out.push(b'\n');
}

/// Lowercase hex without leading zeros (what `{:x}` prints), without the formatting machinery:
/// this runs once per new function.
fn push_hex(out: &mut Vec<u8>, value: usize) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut at = buf.len();
    let mut rest = value;
    loop {
        at -= 1;
        buf[at] = DIGITS[rest & 15];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[at..]);
}

/// Opens `path` for appending without following a symlink (O_NOFOLLOW), closed on exec
/// (O_CLOEXEC), created 0600; then checks what was opened really is a private regular file of
/// ours, so a file planted in /tmp is never written through.
pub fn open_owned_file(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true) // a shared writable mapping needs a read-write descriptor
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|err| annotate(err, path, "cannot open"))?;
    let meta = file.metadata().map_err(|err| annotate(err, path, "cannot stat"))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let refuse = |why: &str| {
        Err(refusal(path, "refusing to write", format!("{why}; remove it and try again")))
    };
    if !meta.file_type().is_file() {
        return refuse("it is not a regular file");
    }
    if meta.uid() != euid {
        return refuse(&format!(
            "it belongs to uid {}, not to this process's uid {euid}",
            meta.uid()
        ));
    }
    if meta.nlink() != 1 {
        return refuse(&format!("it has {} hard links", meta.nlink()));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|err| annotate(err, path, "cannot make private"))?;
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_format_matches_cpython() {
        let mut out = Vec::new();
        format_entry(&mut out, 0x7f3529fcf759, 0xb, b"py::bar:/run/t.py");
        assert_eq!(out, b"7f3529fcf759 b py::bar:/run/t.py\n");
        for value in [0usize, 1, 0xf, 0x10, 0xdead_beef, usize::MAX] {
            format_entry(&mut out, value, value, b"n");
            assert_eq!(String::from_utf8(out.clone()).unwrap(), format!("{value:x} {value:x} n\n"));
        }
    }

    #[test]
    fn a_torn_last_line_of_a_stale_map_is_ended() {
        let path = std::env::temp_dir().join(format!("perftramp-torn-{}.map", std::process::id()));
        for (old, expected) in [
            (&b""[..], &b""[..]),
            (b"1 2 py::a\n", b"1 2 py::a\n"),
            (b"1 2 py::a\n3 4 py::tor", b"1 2 py::a\n3 4 py::tor\n"),
        ] {
            std::fs::write(&path, old).unwrap();
            let mut file = open_owned_file(&path).unwrap();
            end_torn_line(&mut file).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), expected);
        }
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn symlinks_are_refused() {
        let dir = std::env::temp_dir().join(format!("perftramp-map-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("target");
        let link = dir.join("link.map");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = open_owned_file(&link).unwrap_err();
        assert!(err.to_string().contains("link.map"), "{err}");
        assert!(!target.exists());
        let hard = dir.join("hard.map");
        std::fs::write(&target, b"").unwrap();
        std::fs::hard_link(&target, &hard).unwrap();
        let err = open_owned_file(&hard).unwrap_err();
        assert!(err.to_string().contains("hard links"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
