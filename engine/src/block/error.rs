//! The error type shared by the block cache, the btree and the allocators.
//!
//! Each variant is one errno class a filesystem operation can report; the
//! message says where it came from. Staleness (`Stale`) is distinct from
//! corruption (`Io`): a reader that followed an old root gets `Stale` and is
//! expected to fetch fresh roots and retry (reference §1.2).

use crate::format::FormatError;

/// Errors of the block, btree and allocator layers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Corruption or a failed device operation (EIO).
    #[error("I/O error: {0}")]
    Io(String),
    /// A block reached through a ref was rewritten since the ref was taken (ESTALE).
    #[error("stale block: {0}")]
    Stale(String),
    /// An allocator ran out of space (ENOSPC).
    #[error("no space: {0}")]
    NoSpace(String),
    /// An insert found its key already present (EEXIST).
    #[error("item exists")]
    Exists,
    /// A lookup, update or delete found no item (ENOENT).
    #[error("item not found")]
    NotFound,
    /// A caller passed an argument the format can't hold (EINVAL).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A value larger than the format allows (E2BIG).
    #[error("value of {0} bytes is too large")]
    TooBig(usize),
}

impl Error {
    /// The errno a filesystem operation reports for this error.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Io(_) => libc::EIO,
            Error::Stale(_) => libc::ESTALE,
            Error::NoSpace(_) => libc::ENOSPC,
            Error::Exists => libc::EEXIST,
            Error::NotFound => libc::ENOENT,
            Error::Invalid(_) => libc::EINVAL,
            Error::TooBig(_) => libc::E2BIG,
        }
    }

    /// Corruption found while decoding something read from disk.
    pub fn corrupt(what: impl std::fmt::Display) -> Error {
        Error::Io(format!("corrupt: {what}"))
    }
}

impl From<FormatError> for Error {
    fn from(e: FormatError) -> Error {
        match e {
            FormatError::Stale(s) => Error::Stale(s),
            other => Error::Io(other.to_string()),
        }
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Io(e.to_string())
    }
}

impl From<Error> for std::io::Error {
    fn from(e: Error) -> std::io::Error {
        std::io::Error::from_raw_os_error(e.errno())
    }
}

/// Result of the block, btree and allocator layers.
pub type Result<T> = std::result::Result<T, Error>;
