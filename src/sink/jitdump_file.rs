//! The jitdump file, `<directory>/jit-<pid>.dump`, read by `perf inject --jit`.
//!
//! perf only finds a jitdump through an MMAP event: the file is mapped PROT_EXEC (one page) for
//! the life of the process. Records go through [`AppendFile`] with one `write` per trampoline,
//! so every trampoline's records are in the page cache before the trampoline first runs (a crash
//! or SIGKILL loses nothing that ran) and the file holds only whole records at every moment, for
//! readers that follow it live (samply). Per trampoline: DEBUG_INFO and UNWINDING_INFO, then its
//! CODE_LOAD (perf applies the first two to the next load), appended as one unit.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::arch::Arch;
use crate::sink::append_file::{AppendFile, Growth};
use crate::sink::eh_frame::{self, UnwindInfo};
use crate::sink::file_error::{annotate, refusal};
use crate::sink::jitdump;
use crate::sink::names;
use crate::sink::{Sink, SinkKind, Trampoline};

pub fn path_for(directory: &Path, pid: u32) -> PathBuf {
    directory.join(format!("jit-{pid}.dump"))
}

pub struct JitDumpFile {
    file: AppendFile,
    arch: &'static Arch,
    unwind: UnwindInfo,
    /// Per-process salt of the dumped code bytes (unique build-ids, see jitdump::salted_code).
    salt: u64,
    next_index: u64,
    pid: u32,
    /// The PROT_EXEC mapping perf records; never unmapped in this process.
    marker: usize,
    record: Vec<u8>,
}

// SAFETY: `marker` is only an address kept for the record; the struct lives behind the profiler's
// mutex.
unsafe impl Send for JitDumpFile {}

impl JitDumpFile {
    /// Creates the dump for process `pid` in `directory`, writes its header, and maps it
    /// executable so `perf record` sees it.
    pub fn create(directory: &Path, pid: u32, arch: &'static Arch) -> io::Result<Self> {
        Self::create_with_index(directory, pid, arch, 0)
    }

    /// The dump of a fork child: code indexes continue after the parent's (its re-emitted
    /// loads keep theirs), and a new salt keeps the child's new code bytes apart from the
    /// parent's, which go on from the same index.
    pub fn create_for_child(&self, pid: u32) -> io::Result<Self> {
        let directory = self.path().parent().unwrap_or(Path::new("/tmp")).to_owned();
        Self::create_with_index(&directory, pid, self.arch, self.next_index)
    }

    fn create_with_index(
        directory: &Path,
        pid: u32,
        arch: &'static Arch,
        next_index: u64,
    ) -> io::Result<Self> {
        let path = path_for(directory, pid);
        let (file, continued) = match continue_exec_predecessor(&path, arch, pid) {
            Some((file, next)) => (file, Some(next)),
            None => (create_fresh(&path)?, None),
        };
        let next_index = next_index.max(continued.unwrap_or(0));
        // SAFETY: maps one page of a file we hold open for reading; PROT_EXEC without write is
        // what perf looks for, and nothing ever reads or runs through this mapping.
        let marker = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if marker == libc::MAP_FAILED {
            let err = io::Error::last_os_error();
            if continued.is_none() {
                let _ = std::fs::remove_file(&path);
            }
            let what = format!(
                "perf finds a jitdump only through an executable mapping (is {} mounted noexec? \
                 choose another directory=); cannot map executable",
                directory.display()
            );
            return Err(annotate(err, &path, &what));
        }
        // From here on, a failure removes the file, and dropping what was made unmaps it
        // (Drop): a failed enable leaves no file, descriptor or mapping behind.
        let discard = |err: io::Error| {
            if continued.is_none() {
                let _ = std::fs::remove_file(&path);
            }
            err
        };
        let mut header = Vec::with_capacity(jitdump::HEADER_SIZE);
        jitdump::encode_header(&mut header, arch.elf_machine, pid, monotonic_ns());
        let file = match AppendFile::new(file, path.clone(), Growth::Written) {
            Ok(file) => file,
            Err(err) => {
                // SAFETY: the marker page mapped above; nothing else refers to it yet.
                unsafe { libc::munmap(marker, 4096) };
                return Err(discard(err));
            }
        };
        let mut dump = JitDumpFile {
            file,
            arch,
            unwind: eh_frame::unwind_info(arch),
            salt: random_salt(),
            next_index,
            pid,
            marker: marker as usize,
            record: Vec::with_capacity(1024),
        };
        if continued.is_none() {
            dump.file.append(&header);
        }
        if let Some(failure) = dump.file.failure() {
            return Err(discard(io::Error::other(failure.to_owned())));
        }
        Ok(dump)
    }

    pub fn path(&self) -> &Path {
        self.file.path()
    }

    pub fn failure(&self) -> Option<&str> {
        self.file.failure()
    }

    /// Bytes of executable memory each jit-mode trampoline needs so that perf inject's mapped
    /// ranges never overlap.
    pub fn slot_size(arch: &Arch) -> usize {
        jitdump::jit_slot_size(arch, &eh_frame::unwind_info(arch))
    }

    /// Appends the records describing the trampoline at `addr`.
    pub fn write_trampoline(&mut self, addr: usize, name: &[u8], filename: &[u8], line: i32) {
        let now = monotonic_ns();
        let index = self.next_index;
        self.next_index += 1;
        let code = jitdump::salted_code(self.arch, index, self.salt);
        let filename = bounded_filename(filename);
        self.record.clear();
        jitdump::encode_debug_info(
            &mut self.record,
            now,
            addr as u64,
            code.len() as u64,
            &filename,
            line,
        );
        jitdump::encode_unwinding_info(&mut self.record, now, &self.unwind);
        jitdump::encode_code_load(
            &mut self.record,
            self.pid,
            thread_id(),
            now,
            addr as u64,
            &code,
            index,
            name,
        );
        self.file.append(&self.record);
    }

    pub fn trim(&mut self) {
        self.file.trim();
    }

    /// This dump's records so far, re-targeted to process `pid` and stamped now, for a fork
    /// child to re-emit ("persist after fork").
    pub fn records_for_child(&self, pid: u32) -> io::Result<Vec<u8>> {
        let mut records = self.file.read_back(jitdump::HEADER_SIZE as u64)?;
        let complete = jitdump::retarget_records(&mut records, pid, thread_id(), monotonic_ns());
        records.truncate(complete);
        Ok(records)
    }

    /// Appends complete records (from [`Self::records_for_child`]).
    pub fn append_records(&mut self, records: &[u8]) {
        if !records.is_empty() {
            self.file.append(records);
        }
    }

    /// In a fork child: forget the parent's file (the inherited PROT_EXEC mapping is the
    /// parent's; it stays mapped, harmlessly).
    pub fn abandon(mut self) {
        // Drop then closes the file and unmaps the writer's window, and leaves the marker.
        self.marker = 0;
    }
}

impl Sink for JitDumpFile {
    fn kind(&self) -> SinkKind {
        SinkKind::JitDump
    }

    fn path(&self) -> Option<&Path> {
        Some(self.file.path())
    }

    fn slot_size(&self, arch: &Arch) -> usize {
        JitDumpFile::slot_size(arch)
    }

    fn record(&mut self, t: &Trampoline<'_>) {
        self.write_trampoline(t.addr, t.name, t.filename, t.firstlineno);
    }

    fn trim(&mut self) {
        JitDumpFile::trim(self);
    }

    fn failure(&self) -> Option<String> {
        JitDumpFile::failure(self).map(str::to_owned)
    }

    /// The child's own dump; with `persist`, it re-emits the parent's loads for the child.
    fn reopen_after_fork(self: Box<Self>, pid: u32, persist: bool) -> io::Result<Box<dyn Sink>> {
        let inherited = if persist { self.records_for_child(pid) } else { Ok(Vec::new()) };
        let created = self.create_for_child(pid);
        (*self).abandon();
        let mut dump = created?;
        match inherited {
            Ok(records) => dump.append_records(&records),
            Err(err) => {
                eprintln!("perftramp: in fork child {pid}: cannot copy the parent's jitdump: {err}")
            }
        }
        Ok(Box::new(dump))
    }
}

impl Drop for JitDumpFile {
    /// Only a dump discarded by a failed `enable` is dropped (the profiler's lives as long as
    /// the process): its executable marker goes too, so perf never sees a mapping of a dump that
    /// was removed.
    fn drop(&mut self) {
        if self.marker != 0 {
            // SAFETY: `marker` is the one-page mapping made in `create_with_index`, which nothing
            // reads or runs through.
            unsafe { libc::munmap(self.marker as *mut libc::c_void, 4096) };
        }
    }
}

/// DEBUG_INFO's file name (already escaped: UTF-8), bounded like the file name in a symbol name:
/// `...` and the last [`names::MAX_FILENAME`] bytes, cut at a character boundary. It is written
/// twice per trampoline and shared by every function of a module, so an unbounded one (code
/// compiled with its source text as the file name) would multiply the dump's size.
fn bounded_filename(filename: &[u8]) -> Cow<'_, [u8]> {
    if filename.len() <= names::MAX_FILENAME {
        return Cow::Borrowed(filename);
    }
    let mut cut = filename.len() - names::MAX_FILENAME;
    while cut < filename.len() && filename[cut] & 0xc0 == 0x80 {
        cut += 1; // a UTF-8 continuation byte: move to the next character's start
    }
    let mut bounded = Vec::with_capacity(3 + filename.len() - cut);
    bounded.extend_from_slice(b"...");
    bounded.extend_from_slice(&filename[cut..]);
    Cow::Owned(bounded)
}

/// After `exec`, the new program image has the old one's pid and finds its dump: continue it
/// (so samples taken before the exec still resolve) rather than replace it. Only a regular,
/// singly-linked file of ours whose header names this pid and machine qualifies; what follows
/// its last complete record (filler: an exec'd image never trims) is cut. Returns the file and
/// the next unused code index, or `None` (then the dump is created fresh).
fn continue_exec_predecessor(path: &Path, arch: &Arch, pid: u32) -> Option<(File, u64)> {
    let file = OpenOptions::new()
        .read(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .ok()?;
    let meta = file.metadata().ok()?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != euid || meta.nlink() != 1 {
        return None;
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    std::io::Read::read_to_end(&mut &file, &mut bytes).ok()?;
    let (end, next_index) = jitdump::continuable(&bytes, arch.elf_machine, pid)?;
    file.set_len(end as u64).ok()?;
    Some((file, next_index))
}

/// Creates `path` as a new private file (O_EXCL), never writing through what was there: a stale
/// dump of ours (an earlier process with the same pid) is removed first; anything else is refused.
fn create_fresh(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    match open() {
        Ok(file) => return Ok(file),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
        Err(err) => return Err(annotate(err, path, "cannot create")),
    }
    let meta = std::fs::symlink_metadata(path).map_err(|err| annotate(err, path, "cannot stat"))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if !meta.file_type().is_file() || meta.uid() != euid {
        return Err(refusal(
            path,
            "refusing to replace",
            format!(
                "it is not a regular file of uid {euid}; remove it or choose another directory="
            ),
        ));
    }
    // A stale dump of an earlier process with our pid: replace it rather than append to it.
    std::fs::remove_file(path).map_err(|err| annotate(err, path, "cannot remove stale"))?;
    open().map_err(|err| annotate(err, path, "cannot create"))
}

/// CLOCK_MONOTONIC in nanoseconds: what `perf record -k 1` timestamps samples with.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: ts is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

thread_local! {
    /// This thread's id, read once (0: not read yet).
    static THREAD_ID: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// The calling thread's id, as CODE_LOAD records carry it (perf inject attributes the code to
/// this thread's process).
fn thread_id() -> u32 {
    THREAD_ID.with(|cached| {
        if cached.get() == 0 {
            // SAFETY: gettid has no preconditions.
            cached.set(unsafe { libc::syscall(libc::SYS_gettid) } as u32);
        }
        cached.get()
    })
}

/// Forgets the calling thread's cached id. A fork child's only thread is the one that forked,
/// with a new id: records carrying the parent's would make perf add the child's code to the
/// parent. Async-signal-safe (a store to a thread-local), so it can run in an atfork handler.
pub fn forget_thread_id() {
    let _ = THREAD_ID.try_with(|cached| cached.set(0));
}

fn random_salt() -> u64 {
    let mut salt = 0u64;
    // SAFETY: writes at most 8 bytes into `salt`.
    let got = unsafe { libc::getrandom((&raw mut salt).cast(), 8, libc::GRND_NONBLOCK) };
    if got != 8 {
        salt = monotonic_ns() ^ (u64::from(std::process::id()) << 32);
    }
    salt
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_info_file_names_are_bounded_keeping_the_end() {
        assert_eq!(&*bounded_filename(b"/t/a.py"), b"/t/a.py");
        let exact = vec![b'd'; names::MAX_FILENAME];
        assert_eq!(&*bounded_filename(&exact), &exact[..]);
        let long = format!("/{}/base.py", "\u{20ac}".repeat(3000));
        let bounded = bounded_filename(long.as_bytes());
        let text = std::str::from_utf8(&bounded).expect("cut at a character boundary");
        assert!(text.starts_with("...") && text.ends_with("/base.py"), "{text}");
        assert!(bounded.len() <= names::MAX_FILENAME + 3);
    }
}
