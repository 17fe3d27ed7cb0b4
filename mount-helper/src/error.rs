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
    #[error("layer {layer}: entry {} {problem}", quote(entry))]
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

/// The longest name quoted whole in a message; longer ones are cut (an archive may hold
/// names of megabytes, and an error stays one short line).
pub const QUOTE_MAX: usize = 200;

/// `name` quoted as Rust writes strings (`"a\nb"`), cut to [`QUOTE_MAX`] characters with
/// `...` and the full length when longer.
pub fn quote(name: &str) -> String {
    let n = name.chars().count();
    if n <= QUOTE_MAX {
        return format!("{name:?}");
    }
    let cut: String = name.chars().take(QUOTE_MAX).collect();
    format!("{cut:?}... ({n} characters)")
}

/// [`quote`] of bytes that may not be UTF-8.
pub fn quote_bytes(name: &[u8]) -> String {
    let cut = &name[..name.len().min(QUOTE_MAX * 4)];
    let s = String::from_utf8_lossy(cut);
    let n = s.chars().count();
    if n <= QUOTE_MAX && cut.len() == name.len() {
        return format!("{s:?}");
    }
    let cut: String = s.chars().take(QUOTE_MAX).collect();
    format!("{cut:?}... ({} bytes)", name.len())
}

/// Bytes of a name as text (lossy), cut to [`QUOTE_MAX`] characters with `...`, unquoted.
pub fn cut_bytes(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(&name[..name.len().min(QUOTE_MAX * 4)]);
    if s.chars().count() <= QUOTE_MAX && name.len() <= QUOTE_MAX * 4 {
        return s.into_owned();
    }
    let cut: String = s.chars().take(QUOTE_MAX).collect();
    format!("{cut}...")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn quotes_are_short() {
        assert_eq!(quote("a\nb"), "\"a\\nb\"");
        let long = "x".repeat(10_000);
        let q = quote(&long);
        assert!(q.len() < QUOTE_MAX + 40, "{q}");
        assert!(q.ends_with("... (10000 characters)"), "{q}");
        let q = quote_bytes(long.as_bytes());
        assert!(q.ends_with("... (10000 bytes)"), "{q}");
        assert_eq!(quote_bytes(b"ab"), "\"ab\"");
    }
}
