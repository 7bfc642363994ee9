//! The elf mode's sink: every arena is mapped from an ELF image file of its own (layout in
//! [`crate::sink::elf_image`]), and each trampoline's name is written into that file's `.symtab` and
//! `.strtab`, so perf names and unwinds the trampolines from the files alone.
//!
//! Files: `<directory>/perftramp-<pid>/py-<pid>-<n>.so` (directory defaults to `/tmp`). The
//! per-process directory is made 0700 by this process (`mkdir` fails on anything already there,
//! planted links included; another name is then tried) and every file in it is created
//! `O_CREAT|O_EXCL|O_NOFOLLOW`, 0600, relative to the directory's descriptor.
//!
//! Guarantees, as for the perf map:
//! - a name is in the page cache before its trampoline first runs (SIGKILL loses nothing that
//!   ran): `.strtab` grows through [`AppendFile`]'s shared window, the symbol is stored through a
//!   shared mapping of the symbol table, so there is no system call per trampoline (one `write`
//!   of filler per 64 KiB of names);
//! - a full disk is an error when the image is created or `.strtab` grows (never a SIGBUS: every
//!   byte written through a mapping was first written with `write`);
//! - the headers are valid at every moment: `.strtab`'s `sh_size` is raised only after the file
//!   has grown, lowered before it is cut, and a symbol becomes a function by its last byte;
//! - code pages are never writable: the executable mapping `[0, meta_offset)` is private and
//!   read-execute from the start, and everything written later lies after it.

use std::ffi::CString;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{fence, Ordering};

use crate::arch::{self, Arch};
use crate::runtime::arena::ArenaBacking;
use crate::sink::append_file::{AppendFile, Growth};
use crate::sink::elf_image::{self, Layout, FUNC_INFO, ST_INFO_OFFSET, SYM_SIZE};
use crate::sink::file_error::{annotate, refusal};
use crate::sink::{Sink, SinkKind, Trampoline};

/// Where elf images go unless the caller says otherwise (a per-process directory inside).
pub const DEFAULT_PARENT: &str = "/tmp";

pub struct ElfImages {
    parent: PathBuf,
    pid: u32,
    dir: Option<(PathBuf, OwnedFd)>,
    /// The initial image, built once per (arch, slot size).
    template: Option<(&'static str, usize, Layout, Vec<u8>)>,
    current: Option<Image>,
    next_index: u32,
    failure: Option<String>,
    entry: Vec<u8>,
}

/// The image whose arena slots are being handed out.
struct Image {
    layout: Layout,
    /// Address of slot 0.
    text: usize,
    /// Shared read-write mapping of `[meta_offset, strtab_offset)`: section headers and symbols.
    meta: NonNull<u8>,
    meta_len: usize,
    strtab: AppendFile,
    /// `.strtab`'s size as its `sh_size` says.
    strtab_size: u64,
}

// SAFETY: the mapping pointers belong to this struct; it lives behind the profiler's mutex.
unsafe impl Send for ElfImages {}

impl ElfImages {
    /// Makes this process's directory in `parent` now, so that a bad directory is an error at
    /// enable; the images are created as arenas are needed.
    pub fn create(parent: &Path, pid: u32) -> io::Result<Self> {
        let mut images = ElfImages::lazy(parent, pid);
        images.directory()?;
        Ok(images)
    }

    fn lazy(parent: &Path, pid: u32) -> Self {
        ElfImages {
            parent: parent.to_owned(),
            pid,
            dir: None,
            template: None,
            current: None,
            next_index: 0,
            failure: None,
            entry: Vec::with_capacity(256),
        }
    }

    /// This process's directory, made on first use.
    fn directory(&mut self) -> io::Result<(&Path, i32)> {
        if self.dir.is_none() {
            self.dir = Some(make_private_directory(&self.parent, self.pid)?);
        }
        let (path, fd) = self.dir.as_ref().expect("just made");
        Ok((path.as_path(), fd.as_raw_fd()))
    }

    fn template(&mut self, arch: &'static Arch, slot_size: usize) -> (Layout, &[u8]) {
        let fresh = !matches!(&self.template, Some((name, size, _, _)) if *name == arch.name && *size == slot_size);
        if fresh {
            let (layout, bytes) = elf_image::initial_image(arch, slot_size);
            self.template = Some((arch.name, slot_size, layout, bytes));
        }
        let (_, _, layout, bytes) = self.template.as_ref().expect("just built");
        (layout.clone(), bytes.as_slice())
    }

    fn new_image(&mut self, arch: &'static Arch, slot_size: usize) -> io::Result<Image> {
        let pid = self.pid;
        let index = self.next_index;
        self.next_index += 1;
        let (dir, dirfd) = self.directory()?;
        let dir = dir.to_owned();
        let name = format!("py-{pid}-{index}.so");
        let path = dir.join(&name);
        let file = create_exclusive(dirfd, &name, &path)?;
        let (layout, bytes) = self.template(arch, slot_size);
        let remove = |err: io::Error, what: &str| {
            let _ = std::fs::remove_file(&path);
            annotate(err, &path, what)
        };
        (&file)
            .write_all(bytes)
            .map_err(|e| remove(e, "cannot write the arena image (disk full?)"))?;
        // SAFETY: maps the file's first meta_offset bytes, just written, private and never
        // writable; the mapping is kept for the life of the process (trampolines run from it).
        let code = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                layout.meta_offset,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if code == libc::MAP_FAILED {
            let what = format!(
                "cannot map the arena image executable (is {} mounted noexec? pass another \
                 directory=)",
                dir.display()
            );
            return Err(remove(io::Error::last_os_error(), &what));
        }
        // SAFETY: the range was just mapped.
        unsafe { arch::flush_instruction_cache(code.cast(), layout.meta_offset) };
        let meta_len = layout.strtab_offset - layout.meta_offset;
        // The writable mappings go through a second name of the file, removed at once: perf
        // records every mapping of a file, and perf 6.1's libunwind glue takes the lowest
        // mapping of the image's name as its load base; a writable window of the same name
        // mapped below the code would move the unwind table's address off the code.
        let writer = second_name(dirfd, &name, &path)
            .map_err(|e| remove(e, "cannot open the arena image for its symbols"))?;
        drop(file);
        // SAFETY: a shared read-write window over the metadata part of the file, which exists
        // (written above); it does not overlap the executable range.
        let meta = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                meta_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                writer.as_raw_fd(),
                layout.meta_offset as libc::off_t,
            )
        };
        if meta == libc::MAP_FAILED {
            // The code mapping stays (never unmapped), unused; the file goes.
            return Err(remove(io::Error::last_os_error(), "cannot map the arena image's symbols"));
        }
        let strtab = AppendFile::new(writer, path.clone(), Growth::Mapped { fill: 0 })?;
        let strtab_size = strtab.reserved_end() - layout.strtab_offset as u64;
        Ok(Image {
            text: code as usize + layout.text_offset,
            layout,
            meta: NonNull::new(meta.cast()).expect("mmap returned null"),
            meta_len,
            strtab,
            strtab_size,
        })
    }
}

impl ArenaBacking for ElfImages {
    fn map_arena(&mut self, arch: &'static Arch, slot_size: usize) -> io::Result<NonNull<u8>> {
        let image = self.new_image(arch, slot_size)?;
        let text = image.text;
        if let Some(old) = self.current.replace(image) {
            // A failure stays reported after its image is done with.
            if let (None, Some(failure)) = (&self.failure, old.strtab.failure()) {
                self.failure = Some(failure.to_owned());
            }
            old.retire();
        }
        Ok(NonNull::new(text as *mut u8).expect("mapped"))
    }
}

impl Image {
    /// Stores `value` at file offset `at` (in the metadata range) as one aligned store.
    fn store_u64(&mut self, at: usize, value: u64) {
        let rel = at - self.layout.meta_offset;
        assert!(rel + 8 <= self.meta_len && rel.is_multiple_of(8));
        // SAFETY: inside the live shared mapping, 8-aligned (the mapping is page-aligned).
        unsafe {
            std::ptr::write_volatile(self.meta.as_ptr().add(rel).cast::<u64>(), value.to_le())
        };
    }

    fn set_strtab_size(&mut self, size: u64) {
        if size != self.strtab_size {
            self.store_u64(self.layout.strtab_size_field(), size);
            self.strtab_size = size;
        }
    }

    fn record(&mut self, index: usize, name_with_nul: &[u8]) {
        let name_offset = self.strtab.position() - self.layout.strtab_offset as u64;
        self.strtab.append(name_with_nul);
        if self.strtab.failure().is_some() {
            return; // no name, no symbol: perf shows the address in the image
        }
        // The file has grown to reserved_end (and holds the name): sh_size may now cover it.
        self.set_strtab_size(self.strtab.reserved_end() - self.layout.strtab_offset as u64);
        let sym = elf_image::symbol(&self.layout, index, name_offset as u32);
        let rel = self.layout.symbol_offset(index) - self.layout.meta_offset;
        assert!(rel + SYM_SIZE <= self.meta_len);
        // SAFETY: the entry lies inside the live shared mapping; ours alone to write.
        unsafe {
            let dst = self.meta.as_ptr().add(rel);
            std::ptr::copy_nonoverlapping(sym.as_ptr(), dst, ST_INFO_OFFSET);
            std::ptr::copy_nonoverlapping(
                sym.as_ptr().add(ST_INFO_OFFSET + 1),
                dst.add(ST_INFO_OFFSET + 1),
                SYM_SIZE - ST_INFO_OFFSET - 1,
            );
            // Readers skip the entry until it is a function: its type goes in last. A real
            // fence (free on x86_64, `dmb` on aarch64): a live reader may be on another CPU.
            fence(Ordering::Release);
            std::ptr::write_volatile(dst.add(ST_INFO_OFFSET), FUNC_INFO);
        }
    }

    /// Cuts `.strtab`'s filler: `sh_size` first, so it never points past the end of the file.
    fn trim(&mut self) {
        let used = self.strtab.position() - self.layout.strtab_offset as u64;
        self.set_strtab_size(used);
        self.strtab.trim();
        let now = self.strtab.reserved_end() - self.layout.strtab_offset as u64;
        self.set_strtab_size(now);
    }

    /// Forgets the image without writing to it (a fork child: the parent owns the file).
    fn abandon(self) {
        let Image { meta, meta_len, strtab, .. } = self;
        // SAFETY: the metadata window is this image's own mapping (the code mapping stays).
        unsafe { libc::munmap(meta.as_ptr().cast(), meta_len) };
        strtab.abandon();
    }

    /// Trims and closes a full image (its code mapping stays for the life of the process).
    fn retire(mut self) {
        self.trim();
        // SAFETY: as in `abandon`; nothing refers to the window afterwards.
        unsafe { libc::munmap(self.meta.as_ptr().cast(), self.meta_len) };
    }
}

impl Sink for ElfImages {
    fn kind(&self) -> SinkKind {
        SinkKind::ElfImage
    }

    fn path(&self) -> Option<&Path> {
        self.dir.as_ref().map(|(path, _)| path.as_path())
    }

    fn arena_backing(&mut self) -> Option<&mut dyn ArenaBacking> {
        Some(self)
    }

    fn record(&mut self, t: &Trampoline<'_>) {
        let Some(image) = self.current.as_mut() else { return };
        let Some(offset) = t.addr.checked_sub(image.text) else { return };
        let index = offset / image.layout.slot_size;
        if offset % image.layout.slot_size != 0 || index >= image.layout.slots {
            return; // not a slot of the current image (cannot happen: arenas come from here)
        }
        self.entry.clear();
        self.entry.extend_from_slice(t.name);
        self.entry.push(0);
        image.record(index, &self.entry);
    }

    fn trim(&mut self) {
        if let Some(image) = self.current.as_mut() {
            image.trim();
        }
    }

    fn failure(&self) -> Option<String> {
        // The writer's message names the image file.
        self.failure.clone().or_else(|| Some(self.current.as_ref()?.strtab.failure()?.to_owned()))
    }

    /// The child's images go into a directory of its own, made when it first needs an arena.
    /// The inherited arenas stay mapped from the parent's files, which name them: perf hands a
    /// child its parent's mappings, and `perf record -p <child>` reads them from
    /// /proc/<child>/maps, so `persist` needs nothing more here.
    fn reopen_after_fork(self: Box<Self>, pid: u32, _persist: bool) -> io::Result<Box<dyn Sink>> {
        let mut this = *self;
        if let Some(image) = this.current.take() {
            image.abandon();
        }
        let mut child = ElfImages::lazy(&this.parent, pid);
        child.template = this.template.take();
        Ok(Box::new(child))
    }
}

/// `<parent>/perftramp-<pid>` (or `.1`, `.2`... if taken), made 0700 by this process and opened
/// without following links.
fn make_private_directory(parent: &Path, pid: u32) -> io::Result<(PathBuf, OwnedFd)> {
    let mut builder = std::fs::DirBuilder::new();
    builder.mode(0o700);
    for attempt in 0..100 {
        let name = match attempt {
            0 => format!("perftramp-{pid}"),
            n => format!("perftramp-{pid}.{n}"),
        };
        let path = parent.join(name);
        match builder.create(&path) {
            Ok(()) => return open_own_directory(&path).map(|fd| (path, fd)),
            // Left by an earlier process with our pid, or planted: never used, try another.
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(annotate(err, &path, "cannot create the elf image directory")),
        }
    }
    Err(refusal(
        parent,
        "cannot create an elf image directory in",
        format!("perftramp-{pid} and 99 alternatives exist; remove them"),
    ))
}

fn open_own_directory(path: &Path) -> io::Result<OwnedFd> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| refusal(path, "cannot open", "the path holds a NUL byte".into()))?;
    // SAFETY: a valid C string; the returned descriptor is owned below.
    let fd = unsafe {
        libc::open(
            c_path.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(annotate(
            io::Error::last_os_error(),
            path,
            "cannot open the elf image directory",
        ));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let dir = File::from(fd);
    let meta = dir.metadata().map_err(|e| annotate(e, path, "cannot stat"))?;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid {
        return Err(refusal(
            path,
            "refusing to write in",
            format!("it belongs to uid {}", meta.uid()),
        ));
    }
    if meta.mode() & 0o777 != 0o700 {
        // A umask may have taken owner bits away: exactly 0700.
        dir.set_permissions(std::fs::Permissions::from_mode(0o700))
            .map_err(|e| annotate(e, path, "cannot make private"))?;
    }
    Ok(OwnedFd::from(dir))
}

/// The file `name` in `dirfd`, opened again read-write through a temporary second name that is
/// removed before returning: mappings made through the returned descriptor carry that other
/// name, not `name`.
fn second_name(dirfd: i32, name: &str, path: &Path) -> io::Result<File> {
    let c_name = CString::new(name).expect("no NUL in a generated name");
    let c_other = CString::new(format!("{name}.w")).expect("no NUL in a generated name");
    // SAFETY: valid descriptor and C strings; linkat does not follow links (no AT_SYMLINK_FOLLOW).
    if unsafe { libc::linkat(dirfd, c_name.as_ptr(), dirfd, c_other.as_ptr(), 0) } != 0 {
        return Err(annotate(io::Error::last_os_error(), path, "cannot link"));
    }
    // SAFETY: as above; the descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c_other.as_ptr(),
            libc::O_RDWR | libc::O_APPEND | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    let err = io::Error::last_os_error();
    // SAFETY: removes the second name only (the directory is ours alone, 0700).
    unsafe { libc::unlinkat(dirfd, c_other.as_ptr(), 0) };
    if fd < 0 {
        return Err(annotate(err, path, "cannot open"));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Creates `name` in the directory `dirfd`: exclusive, no links followed, 0600, read-write
/// (shared writable mappings need it) and appending (the `.strtab` growth writes at the end).
fn create_exclusive(dirfd: i32, name: &str, path: &Path) -> io::Result<File> {
    let c_name = CString::new(name).expect("no NUL in a generated name");
    // SAFETY: a valid directory descriptor and C string; the descriptor is owned below.
    let fd = unsafe {
        libc::openat(
            dirfd,
            c_name.as_ptr(),
            libc::O_RDWR
                | libc::O_APPEND
                | libc::O_CREAT
                | libc::O_EXCL
                | libc::O_NOFOLLOW
                | libc::O_CLOEXEC,
            0o600 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(annotate(io::Error::last_os_error(), path, "cannot create the arena image"));
    }
    // SAFETY: fd was just opened and is owned by nobody else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::read::elf::ElfFile64;
    use object::{LittleEndian, Object, ObjectSymbol, SymbolKind};

    fn names_in(path: &Path) -> Vec<(u64, String)> {
        let bytes = std::fs::read(path).unwrap();
        let file = ElfFile64::<LittleEndian>::parse(&*bytes).unwrap();
        file.symbols()
            .filter(|s| s.kind() == SymbolKind::Text)
            .map(|s| (s.address(), s.name().unwrap().to_owned()))
            .collect()
    }

    #[test]
    fn names_are_in_the_file_as_they_are_recorded_and_it_stays_valid() {
        let arch = arch::native().unwrap();
        let parent = std::env::temp_dir().join(format!("perftramp-elfsink-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir(&parent).unwrap();
        let mut images = ElfImages::create(&parent, 4242).unwrap();
        let dir = images.path().unwrap().to_owned();
        assert_eq!(dir, parent.join("perftramp-4242"));
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        let mut memory = crate::runtime::arena::ExecMemory::new(arch, arch.slot_stride);
        let long = "q".repeat(3000);
        let mut made = Vec::new();
        for i in 0..5000 {
            let slot = memory.allocate(&mut images).unwrap().as_ptr() as usize;
            let name =
                if i % 7 == 0 { format!("py::{long}{i}:/t.py") } else { format!("py::f{i}:/t.py") };
            images.record(&Trampoline {
                addr: slot,
                code_size: arch.code.len(),
                name: name.as_bytes(),
                filename: b"/t.py",
                firstlineno: 1,
            });
            made.push(name);
            if i == 100 {
                // Live: the file parses with every name so far, before any trim.
                let names = names_in(&dir.join("py-4242-0.so"));
                assert_eq!(names.len(), 101);
                assert_eq!(names[100].1, made[100]);
            }
        }
        images.trim();
        // Every image but the last is full (how many there are depends on the arch's slot size:
        // 2 on x86_64, 3 on aarch64 for 5,000 trampolines).
        let slots = elf_image::initial_image(arch, arch.slot_stride).0.slots;
        let images_made = 5000usize.div_ceil(slots);
        let mut all: Vec<String> = Vec::new();
        for index in 0..images_made {
            let path = dir.join(format!("py-4242-{index}.so"));
            let names = names_in(&path);
            let expected = if index + 1 < images_made { slots } else { 5000 - slots * index };
            assert_eq!(names.len(), expected, "{}", path.display());
            all.extend(names.into_iter().map(|(_, n)| n));
            let meta = std::fs::metadata(&path).unwrap();
            assert_eq!(meta.mode() & 0o777, 0o600);
        }
        assert!(!dir.join(format!("py-4242-{images_made}.so")).exists());
        assert_eq!(all, made);
        assert!(images.failure().is_none());
        std::fs::remove_dir_all(&parent).unwrap();
    }

    #[test]
    fn a_planted_directory_or_link_is_never_used() {
        let parent =
            std::env::temp_dir().join(format!("perftramp-elfplant-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&parent);
        std::fs::create_dir(&parent).unwrap();
        let target = parent.join("target");
        std::fs::create_dir(&target).unwrap();
        std::os::unix::fs::symlink(&target, parent.join("perftramp-77")).unwrap();
        let images = ElfImages::create(&parent, 77).unwrap();
        assert_eq!(images.path().unwrap(), parent.join("perftramp-77.1"));
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        std::fs::remove_dir_all(&parent).unwrap();
    }
}
