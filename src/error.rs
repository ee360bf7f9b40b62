//! The crate's one error type.
//!
//! Every variant names the operation that failed and carries the shapes or values involved, so a
//! message reads like `linear: shape mismatch, expected [*, 384], got [8, 128, 256]`.

use std::path::PathBuf;

/// Everything that can go wrong in spry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    // ---- shapes and tangents -------------------------------------------------------------------
    /// Two shapes that must agree do not.
    #[error("{op}: shape mismatch, expected {expected}, got {got:?}")]
    ShapeMismatch {
        /// The operation that checked the shapes.
        op: &'static str,
        /// What the operation expected, in words or as a shape (`*` = any size).
        expected: String,
        /// The shape it got.
        got: Vec<usize>,
    },
    /// Two dual operands carry a different number K of tangent directions.
    #[error("{op}: tangent count mismatch, {lhs} vs {rhs} directions")]
    TangentCountMismatch {
        /// The operation combining the operands.
        op: &'static str,
        /// K of the first operand.
        lhs: usize,
        /// K of the second operand.
        rhs: usize,
    },
    /// An argument is outside its valid range (a zero head count, a negative ε, an id past the
    /// vocabulary, ...).
    #[error("{op}: invalid argument: {msg}")]
    InvalidArgument {
        /// The operation that rejected the argument.
        op: &'static str,
        /// What is wrong with it.
        msg: String,
    },

    // ---- files ---------------------------------------------------------------------------------
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// `Result` with spry's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// Shorthand for [`Error::ShapeMismatch`].
    pub fn shape(op: &'static str, expected: impl Into<String>, got: &[usize]) -> Self {
        Error::ShapeMismatch {
            op,
            expected: expected.into(),
            got: got.to_vec(),
        }
    }

    /// Shorthand for [`Error::InvalidArgument`].
    pub fn invalid(op: &'static str, msg: impl Into<String>) -> Self {
        Error::InvalidArgument {
            op,
            msg: msg.into(),
        }
    }
}
