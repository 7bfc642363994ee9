//! An append-only file, written so that every record is in the kernel's page cache the moment
//! `append` returns: it survives a crash or SIGKILL of the process.
//!
//! Two ways to grow, chosen by the format ([`Growth`]):
//! - [`Growth::Mapped`] (perf maps): records are copied into a `MAP_SHARED` window, so appending
//!   costs no system call. The file grows in [`CHUNK`]-sized steps (one `write` of filler bytes,
//!   which also reserves the disk blocks so a full disk is an error here, never a SIGBUS later),
//!   and the unused filler is cut off again by [`AppendFile::trim`] (on disable and at exit). The
//!   filler must be something every reader skips: `\n` for perf maps (blank lines).
//! - [`Growth::Written`] (jitdumps): one `write` per append, so the file holds exactly the records
//!   at every moment. Readers that follow a jitdump while it grows (samply, linux-perf-data) read
//!   a record header once and wait for its body: any filler would be taken for a record (a zero
//!   header ends them, and a padding record would be skipped before the real records were
//!   written into it). One system call per new function is the price of a live-readable dump.
//!
//! After the first I/O error the file is left alone: one warning goes to stderr naming the
//! file, and [`AppendFile::failure`] reports it. The program itself is never disturbed.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

/// Growth step: one `write` and one `mmap` per this many bytes of records.
pub const CHUNK: usize = 64 * 1024;

const PAGE: u64 = 4096;

/// Bytes of a record written last (see `try_append`).
const HEAD: usize = 8;

struct Window {
    ptr: NonNull<u8>,
    len: usize,
    /// File offset of `ptr` (page aligned).
    offset: u64,
}

/// How an [`AppendFile`] grows (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// Through a shared mapping over `fill` bytes that readers skip; no system call per record.
    Mapped { fill: u8 },
    /// One `write` per record; the file never holds anything but whole records.
    Written,
}

pub struct AppendFile {
    file: File,
    path: PathBuf,
    growth: Growth,
    window: Option<Window>,
    /// File offset where the next record goes.
    pos: u64,
    /// End of the filler region this writer reserved (`pos <= end`).
    end: u64,
    failure: Option<String>,
    bytes_written: u64,
}

// SAFETY: the window pointer is a mapping owned by this struct; it is only used through &mut self,
// and the struct lives behind the profiler's mutex.
unsafe impl Send for AppendFile {}

impl AppendFile {
    /// Wraps an open file (opened O_APPEND, and read-write for [`Growth::Mapped`]: a shared
    /// writable mapping needs it); records go after whatever it already holds.
    pub fn new(file: File, path: PathBuf, growth: Growth) -> io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(AppendFile {
            file,
            path,
            growth,
            window: None,
            pos: len,
            end: len,
            failure: None,
            bytes_written: 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why writing stopped, if it did.
    pub fn failure(&self) -> Option<&str> {
        self.failure.as_deref()
    }

    /// File offset where the next record goes (the end of the records).
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The file's bytes from `from` to the end of the records (for a fork child copying what
    /// its parent wrote).
    pub fn read_back(&self, from: u64) -> io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let mut bytes = vec![0u8; self.pos.saturating_sub(from) as usize];
        self.file.read_exact_at(&mut bytes, from)?;
        Ok(bytes)
    }

    /// End of the region this writer reserved (records, then filler up to here).
    pub fn reserved_end(&self) -> u64 {
        self.end
    }

    /// Bytes of records appended by this writer.
    pub fn bytes_written(&self) -> u64 {
        self.bytes_written
    }

    /// Appends `record`. After a failure this does nothing (the failure is reported once).
    pub fn append(&mut self, record: &[u8]) {
        if self.failure.is_some() {
            return;
        }
        if let Err(err) = self.try_append(record) {
            self.fail(err);
        }
    }

    fn try_append(&mut self, record: &[u8]) -> io::Result<()> {
        let Growth::Mapped { fill } = self.growth else {
            return self.write_whole(record);
        };
        if self.window.is_none() || self.pos + record.len() as u64 > self.end {
            self.reserve(record.len(), fill)?;
        }
        let window = self.window.as_ref().expect("reserve maps a window");
        let at = (self.pos - window.offset) as usize;
        debug_assert!(at + record.len() <= window.len);
        // The first HEAD bytes go in last: a process killed mid-copy leaves filler where the
        // record starts, never the start of a record without its end.
        let head = record.len().min(HEAD);
        // SAFETY: reserve guarantees [pos, pos+len) lies inside the window, a live shared
        // writable mapping of this file; `record` cannot overlap it (it is not ours to hand out).
        unsafe {
            let dst = window.ptr.as_ptr().add(at);
            std::ptr::copy_nonoverlapping(
                record.as_ptr().add(head),
                dst.add(head),
                record.len() - head,
            );
            std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::Release);
            std::ptr::copy_nonoverlapping(record.as_ptr(), dst, head);
        }
        self.pos += record.len() as u64;
        self.bytes_written += record.len() as u64;
        Ok(())
    }

    /// [`Growth::Written`]: the record in one `write` (O_APPEND). A write cut short (a full
    /// disk) is undone, so the file never ends in a torn record. The file is this writer's alone
    /// (created O_EXCL), so `pos` is its end.
    fn write_whole(&mut self, record: &[u8]) -> io::Result<()> {
        if let Err(err) = self.file.write_all(record) {
            let _ = self.file.set_len(self.pos);
            return Err(err);
        }
        self.pos += record.len() as u64;
        self.end = self.pos;
        self.bytes_written += record.len() as u64;
        Ok(())
    }

    /// Grows the file by a chunk of filler and maps from `pos` to the new end.
    fn reserve(&mut self, need: usize, fill: u8) -> io::Result<()> {
        let chunk = CHUNK.max(need.next_multiple_of(PAGE as usize));
        let filler = vec![fill; chunk];
        // The file is opened O_APPEND: the filler lands at the true end even if another writer
        // appended meanwhile, and afterwards our offset is that end.
        self.file.write_all(&filler)?;
        let new_end = self.file.stream_position()?;
        let chunk_start = new_end - chunk as u64;
        if chunk_start != self.end {
            // Someone else wrote after our region: skip to our new chunk (the rest of the old
            // filler stays as harmless padding).
            self.pos = chunk_start;
        }
        self.unmap();
        let offset = self.pos & !(PAGE - 1);
        let len = (new_end - offset) as usize;
        // SAFETY: maps [offset, new_end) of a regular file we hold open read-write; the file
        // reaches new_end (we just wrote it), so no access through the window is past its end.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.file.as_raw_fd(),
                offset as libc::off_t,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).expect("mmap returned null");
        self.window = Some(Window { ptr, len, offset });
        self.end = new_end;
        Ok(())
    }

    fn unmap(&mut self) {
        if let Some(w) = self.window.take() {
            // SAFETY: the window is a mapping we made and nothing else refers to it.
            unsafe { libc::munmap(w.ptr.as_ptr().cast(), w.len) };
        }
    }

    /// Cuts the unused filler off, leaving exactly the records. Skipped if another writer
    /// appended after our region (cutting would lose their data).
    pub fn trim(&mut self) {
        self.unmap();
        if self.pos == self.end {
            return;
        }
        match self.file.metadata() {
            Ok(meta) if meta.len() == self.end => {
                if let Err(err) = self.file.set_len(self.pos) {
                    self.fail(err);
                    return;
                }
                self.end = self.pos;
            }
            _ => {}
        }
    }

    /// Forgets the file without touching it: used in a fork child, whose parent still owns it.
    pub fn abandon(mut self) {
        self.unmap();
    }

    fn fail(&mut self, err: io::Error) {
        let message = format!("{} ({})", err, self.path.display());
        // One line, once: the program keeps running; status() carries the reason.
        eprintln!(
            "perftramp: writing {} failed: {}; no more entries will be written to it (the program is not affected)",
            self.path.display(),
            err
        );
        self.failure = Some(message);
        self.unmap();
    }
}

impl Drop for AppendFile {
    /// A writer dropped without `abandon` (a failed `enable` discarding what it opened) leaves
    /// no shared mapping of its file behind.
    fn drop(&mut self) {
        self.unmap();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::unix::fs::OpenOptionsExt;

    fn open(path: &Path, fill: u8) -> AppendFile {
        let file =
            OpenOptions::new().read(true).append(true).create(true).mode(0o600).open(path).unwrap();
        AppendFile::new(file, path.to_owned(), Growth::Mapped { fill }).unwrap()
    }

    #[test]
    fn a_written_file_holds_exactly_the_records_at_every_moment() {
        let path = temp_path("written");
        let _ = std::fs::remove_file(&path);
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        let mut f = AppendFile::new(file, path.clone(), Growth::Written).unwrap();
        f.append(b"header");
        assert_eq!(std::fs::read(&path).unwrap(), b"header");
        f.append(&[9u8; 3000]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3006);
        assert_eq!(f.position(), 3006);
        assert_eq!(f.read_back(6).unwrap(), vec![9u8; 3000]);
        f.trim(); // nothing to cut
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 3006);
        std::fs::remove_file(&path).unwrap();
    }

    fn temp_path(tag: &str) -> PathBuf {
        std::env::temp_dir().join(format!("perftramp-append-{}-{}", std::process::id(), tag))
    }

    #[test]
    fn records_are_in_the_file_before_trim_and_exact_after() {
        let path = temp_path("basic");
        let _ = std::fs::remove_file(&path);
        let mut f = open(&path, b'\n');
        f.append(b"one\n");
        f.append(b"two\n");
        // Readable now, padded with blank lines.
        let live = std::fs::read(&path).unwrap();
        assert!(live.starts_with(b"one\ntwo\n"));
        assert_eq!(live.len(), CHUNK);
        assert!(live[8..].iter().all(|&b| b == b'\n'));
        f.trim();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\n");
        // Appending after a trim grows again.
        f.append(b"three\n");
        f.trim();
        assert_eq!(std::fs::read(&path).unwrap(), b"one\ntwo\nthree\n");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn grows_across_chunks_and_pages() {
        let path = temp_path("grow");
        let _ = std::fs::remove_file(&path);
        let mut f = open(&path, 0);
        let record = [7u8; 1000];
        for _ in 0..200 {
            f.append(&record);
        }
        f.trim();
        let data = std::fs::read(&path).unwrap();
        assert_eq!(data.len(), 200_000);
        assert!(data.iter().all(|&b| b == 7));
        assert_eq!(f.bytes_written(), 200_000);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_record_larger_than_a_chunk_fits() {
        let path = temp_path("big");
        let _ = std::fs::remove_file(&path);
        let mut f = open(&path, 0);
        let big = vec![1u8; CHUNK * 2 + 5];
        f.append(b"x");
        f.append(&big);
        f.trim();
        assert_eq!(std::fs::read(&path).unwrap().len(), big.len() + 1);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn appends_after_existing_content_and_survives_a_foreign_writer() {
        let path = temp_path("foreign");
        std::fs::write(&path, b"old\n").unwrap();
        let mut f = open(&path, b'\n');
        f.append(b"a\n");
        // Another writer appends after our reserved region.
        let mut other = OpenOptions::new().append(true).open(&path).unwrap();
        other.write_all(b"foreign\n").unwrap();
        f.append(&vec![b'b'; CHUNK]); // forces a new chunk, after the foreign line
        f.trim(); // must not cut the foreign line
        let data = std::fs::read(&path).unwrap();
        assert!(data.starts_with(b"old\na\n"));
        assert!(data.windows(8).any(|w| w == b"foreign\n"));
        assert!(data.ends_with(&vec![b'b'; CHUNK]));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_failure_is_reported_and_stops_writing() {
        let path = temp_path("fail");
        let _ = std::fs::remove_file(&path);
        // A read-only descriptor: the first write fails.
        std::fs::write(&path, b"").unwrap();
        let file = OpenOptions::new().read(true).open(&path).unwrap();
        let mut f = AppendFile::new(file, path.clone(), Growth::Mapped { fill: b'\n' }).unwrap();
        f.append(b"x\n");
        assert!(f.failure().unwrap().contains(path.to_str().unwrap()));
        f.append(b"y\n"); // no-op, no panic
        assert_eq!(f.bytes_written(), 0);
        std::fs::remove_file(&path).unwrap();
    }
}
