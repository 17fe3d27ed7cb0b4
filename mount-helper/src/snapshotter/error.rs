//! The snapshotter's errors, each carrying the gRPC code containerd expects for it
//! (containerd's `errdefs`: NotFound, AlreadyExists, FailedPrecondition, InvalidArgument).

use std::io;

/// A failed snapshotter call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No snapshot has that key (`errdefs.ErrNotFound`).
    #[error("{0}")]
    NotFound(String),
    /// The key or name is taken (`errdefs.ErrAlreadyExists`).
    #[error("{0}")]
    AlreadyExists(String),
    /// The snapshot's state does not allow the call (`errdefs.ErrFailedPrecondition`).
    #[error("{0}")]
    FailedPrecondition(String),
    /// The request itself is malformed (`errdefs.ErrInvalidArgument`).
    #[error("{0}")]
    InvalidArgument(String),
    /// A file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// The metadata store failed.
    #[error("metadata: {0}")]
    Meta(String),
}

/// Results of the snapshotter.
pub type Result<T> = std::result::Result<T, Error>;

/// Adds what was being done to an `io::Result`.
pub trait Context<T> {
    /// Names the operation that failed.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what(),
            source,
        })
    }
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Error {
                Error::Meta(e.to_string())
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Meta(format!("a record does not parse: {e}"))
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let msg = e.to_string();
        match e {
            Error::NotFound(_) => tonic::Status::not_found(msg),
            Error::AlreadyExists(_) => tonic::Status::already_exists(msg),
            Error::FailedPrecondition(_) => tonic::Status::failed_precondition(msg),
            Error::InvalidArgument(_) => tonic::Status::invalid_argument(msg),
            Error::Io { .. } | Error::Meta(_) => tonic::Status::internal(msg),
        }
    }
}
