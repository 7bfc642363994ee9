//! The perf map, `/tmp/perf-<pid>.map`: one `<hex start> <hex size> <name>` line per trampoline,
//! exactly as CPython writes it, so tools that know CPython's format (and filter on `py::`)
//! read ours unchanged. perf reads it at report time, from /tmp, by the pid of the process.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::sink::append_file::{AppendFile, Growth};
use crate::sink::file_error::{annotate, refusal};
use crate::sink::{Sink, SinkKind, Trampoline};

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
        // Best effort: if these fail, so will the first append, which reports it.
        let _ = cut_if_stale(&file, process_start_time());
        let _ = end_torn_line(&mut file);
        let file = AppendFile::new(file, path, Growth::Mapped { fill: b'\n' })?;
        Ok(PerfMap { file, line: Vec::with_capacity(256) })
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

impl Sink for PerfMap {
    fn kind(&self) -> SinkKind {
        SinkKind::PerfMap
    }

    fn path(&self) -> Option<&Path> {
        Some(self.file.path())
    }

    fn record(&mut self, t: &Trampoline<'_>) {
        self.write_entry(t.addr, t.code_size, t.name);
    }

    fn trim(&mut self) {
        PerfMap::trim(self);
    }

    fn failure(&self) -> Option<String> {
        PerfMap::failure(self).map(str::to_owned)
    }

    /// The child's own map; with `persist`, it also names every inherited trampoline.
    fn reopen_after_fork(self: Box<Self>, pid: u32, persist: bool) -> io::Result<Box<dyn Sink>> {
        let inherited = if persist { self.entries() } else { Ok(Vec::new()) };
        (*self).abandon();
        let mut map = PerfMap::open(pid)?;
        match inherited {
            Ok(entries) => map.append_entries(&entries),
            Err(err) => {
                eprintln!(
                    "perftramp: in fork child {pid}: cannot copy the parent's perf map: {err}"
                )
            }
        }
        Ok(Box::new(map))
    }
}

/// A map last written before this process started was left by an earlier process with our pid
/// (pids are reused; CPython and perftramp never delete maps, perf needs them after the
/// process). Its entries name that process's code at addresses we may now use: cut them. A map
/// written since we started is ours (an `exec` keeps the pid and start time, and perf needs the
/// old image's entries for the samples taken before it), so it is kept.
fn cut_if_stale(file: &File, started: Option<f64>) -> io::Result<()> {
    let meta = file.metadata()?;
    let (Some(started), Ok(modified)) = (started, meta.modified()) else {
        return Ok(());
    };
    let modified = match modified.duration_since(std::time::UNIX_EPOCH) {
        Ok(since) => since.as_secs_f64(),
        Err(_) => 0.0,
    };
    if written_before_start(modified, started) && meta.len() > 0 {
        file.set_len(0)?;
    }
    Ok(())
}

/// The boot time in /proc/stat has a resolution of one second: a file changed less than that
/// before our start is given the benefit of the doubt.
fn written_before_start(modified: f64, started: f64) -> bool {
    modified < started - 1.0
}

/// When this process started, in seconds since the epoch (boot time + start ticks from /proc).
fn process_start_time() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Field 22 (starttime) counts from the closing parenthesis of the command name, which may
    // itself contain spaces and parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let ticks: f64 = after_name.split_whitespace().nth(19)?.parse().ok()?;
    let boot: f64 = std::fs::read_to_string("/proc/stat")
        .ok()?
        .lines()
        .find_map(|line| line.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then(|| boot + ticks / hz as f64)
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
    debug_assert!(!name.contains(&b'\n'));
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
    fn a_map_left_by_an_earlier_process_is_cut_and_ours_is_kept() {
        let started = process_start_time().expect("/proc gives this process's start time");
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        assert!(
            started <= now.as_secs_f64() + 1.0 && started > now.as_secs_f64() - 86400.0 * 365.0
        );
        assert!(written_before_start(started - 5.0, started));
        assert!(!written_before_start(started - 0.5, started));
        assert!(!written_before_start(started + 3.0, started));

        let path = std::env::temp_dir().join(format!("perftramp-stale-{}.map", std::process::id()));
        std::fs::write(&path, b"1 2 py::old\n").unwrap();
        let file = open_owned_file(&path).unwrap();
        cut_if_stale(&file, Some(started)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"1 2 py::old\n", "written after our start");
        let long_ago = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(started - 3600.0);
        file.set_modified(long_ago).unwrap();
        cut_if_stale(&file, Some(started)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"", "left by an earlier process");
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
