//! The one error type of the helper: every failure becomes a single line naming what went
//! wrong and where (the layer, the entry, the file), printed by `main` after the command name.

use std::io;

/// A failed command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A system call or file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, naming the file.
        what: String,
        /// The cause.
        source: io::Error,
    },
    /// An entry of a layer archive was refused.
    #[error("layer {layer}: entry {entry:?} {problem}")]
    Entry {
        /// The layer (short digest).
        layer: String,
        /// The entry's path as the archive spells it.
        entry: String,
        /// Why it was refused.
        problem: String,
    },
    /// A JSON document could not be read or written.
    #[error("{what}: {source}")]
    Json {
        /// The document.
        what: String,
        /// The cause.
        source: serde_json::Error,
    },
    /// Bad input or a state that does not allow the command.
    #[error("{0}")]
    Invalid(String),
}

/// Results of the helper.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A refused input or state, with its message.
    pub fn invalid(msg: impl Into<String>) -> Error {
        Error::Invalid(msg.into())
    }
}

/// Attaches a description to I/O errors: `.ctx(|| format!("open {}", p.display()))`.
pub trait Context<T> {
    /// Wraps the error with the description `what()` returns.
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T> Context<T> for std::result::Result<T, io::Error> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Io {
            what: what().into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, rustix::io::Errno> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Io {
            what: what().into(),
            source: e.into(),
        })
    }
}

impl<T> Context<T> for std::result::Result<T, serde_json::Error> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|source| Error::Json {
            what: what().into(),
            source,
        })
    }
}

impl<T> Context<T> for std::result::Result<T, oci_spec::OciSpecError> {
    fn ctx<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|e| Error::Invalid(format!("{}: {e}", what().into())))
    }
}
