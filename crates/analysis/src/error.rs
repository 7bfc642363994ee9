//! Errors of reading a recording: each names the file, what is wrong, and what to do.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum AnalysisError {
    /// The file could not be opened or read.
    Io { path: PathBuf, source: std::io::Error },
    /// Not a perf.data file (bad magic, or a pipe-mode stream).
    NotPerfData { path: PathBuf, detail: String },
    /// A perf.data file that ends early or has a damaged record.
    Truncated { path: PathBuf, detail: String },
    /// Recorded on an architecture this reader cannot unwind.
    UnsupportedArch { path: PathBuf, arch: String },
}

impl AnalysisError {
    pub fn path(&self) -> &std::path::Path {
        match self {
            AnalysisError::Io { path, .. }
            | AnalysisError::NotPerfData { path, .. }
            | AnalysisError::Truncated { path, .. }
            | AnalysisError::UnsupportedArch { path, .. } => path,
        }
    }
}

impl fmt::Display for AnalysisError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AnalysisError::Io { path, source } => {
                write!(f, "{}: cannot read the recording: {source}", path.display())
            }
            AnalysisError::NotPerfData { path, detail } => write!(
                f,
                "{}: not a perf.data file ({detail}); pass the file `perf record -o` wrote \
                 (pipe-mode output, `perf record -o -`, is not supported)",
                path.display()
            ),
            AnalysisError::Truncated { path, detail } => write!(
                f,
                "{}: the recording is truncated or damaged ({detail}); was perf record killed \
                 before it finished? Record again and let perf exit normally",
                path.display()
            ),
            AnalysisError::UnsupportedArch { path, arch } => write!(
                f,
                "{}: recorded on {arch}, which this reader cannot unwind (x86_64 and aarch64 \
                 only); use `perf script` for this recording",
                path.display()
            ),
        }
    }
}

impl std::error::Error for AnalysisError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AnalysisError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}
