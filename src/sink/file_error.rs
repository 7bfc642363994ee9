//! I/O errors that keep the OS error number and the path they concern, so that Python gets a
//! real `OSError(errno, message, filename)` and Rust messages still name the file.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct FileError {
    /// The OS error number (`EPERM` for perftramp's own refusals), 0 if none applies.
    pub errno: i32,
    pub path: PathBuf,
    /// What was being done ("cannot open", "refusing to write").
    pub what: String,
    /// Why it failed (the OS's description, or the reason for a refusal).
    pub detail: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.what, self.path.display(), self.detail)
    }
}

impl std::error::Error for FileError {}

/// `err`, which happened while doing `what` to `path`, keeping its errno.
pub fn annotate(err: io::Error, path: &Path, what: &str) -> io::Error {
    let errno = errno_of(&err);
    let detail = match err.raw_os_error() {
        // Rust's "Text (os error N)": the number goes into errno instead.
        Some(n) => err.to_string().trim_end_matches(&format!(" (os error {n})")).to_owned(),
        None => err.to_string(),
    };
    let error = FileError { errno, path: path.to_owned(), what: what.to_owned(), detail };
    io::Error::new(err.kind(), error)
}

/// perftramp refuses to use `path` (a planted file, another user's file...): `EPERM`.
pub fn refusal(path: &Path, what: &str, detail: String) -> io::Error {
    let error =
        FileError { errno: libc::EPERM, path: path.to_owned(), what: what.to_owned(), detail };
    io::Error::new(io::ErrorKind::PermissionDenied, error)
}

/// The OS error number of `err`, looking through [`FileError`]; 0 if it has none.
pub fn errno_of(err: &io::Error) -> i32 {
    err.raw_os_error()
        .or_else(|| err.get_ref()?.downcast_ref::<FileError>().map(|f| f.errno))
        .unwrap_or(0)
}

/// The [`FileError`] inside `err`, if any.
pub fn file_error(err: &io::Error) -> Option<&FileError> {
    err.get_ref()?.downcast_ref::<FileError>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_and_path_survive_annotation() {
        let err = annotate(
            io::Error::from_raw_os_error(libc::ELOOP),
            Path::new("/tmp/x.map"),
            "cannot open",
        );
        assert_eq!(errno_of(&err), libc::ELOOP);
        let inner = file_error(&err).unwrap();
        assert_eq!(inner.path, Path::new("/tmp/x.map"));
        assert!(!inner.detail.contains("os error"), "{}", inner.detail);
        assert!(err.to_string().starts_with("cannot open /tmp/x.map: "), "{err}");
        let refused = refusal(Path::new("/tmp/y"), "refusing to write", "a symlink".into());
        assert_eq!(errno_of(&refused), libc::EPERM);
        assert_eq!(refused.to_string(), "refusing to write /tmp/y: a symlink");
    }
}
