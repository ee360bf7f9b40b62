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
    /// A file is not what its format promises: bad magic, unsupported version, truncated or
    /// corrupt header, oversized header, data out of bounds.
    #[error("{path}: malformed {format} file: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// The format it was read as (`safetensors`, `gguf`, `json`, ...).
        format: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// A tensor the model needs is absent from the checkpoint.
    #[error("{path}: missing tensor `{name}`")]
    MissingTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        name: String,
    },
    /// A tensor has a shape other than the configuration implies.
    #[error("{path}: tensor `{name}` has shape {got:?}, expected {expected:?}")]
    TensorShape {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The shape the configuration implies.
        expected: Vec<usize>,
        /// The shape in the file.
        got: Vec<usize>,
    },
    /// A checkpoint holds a tensor the model has no parameter for (for instance an adapter
    /// trained for another model or another LoRA configuration).
    #[error(
        "{path}: unexpected tensor `{name}`: the model has no such parameter (an adapter for \
         another model or LoRA configuration?)"
    )]
    UnexpectedTensor {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name, as the file spells it.
        name: String,
    },
    /// A tensor is stored in a data type spry cannot read.
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype}")]
    UnsupportedDtype {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// The data type, as the file names it.
        dtype: String,
    },
    /// A weight holds NaN or ±∞.
    #[error("{path}: tensor `{name}` holds a non-finite value at flat index {index}")]
    NonFinite {
        /// The checkpoint.
        path: PathBuf,
        /// The tensor name.
        name: String,
        /// Row-major index of the first non-finite element.
        index: usize,
    },
    /// A configuration file is missing a field or holds an inconsistent value.
    #[error("{path}: invalid config: {msg}")]
    Config {
        /// The configuration file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A client update was rejected before it changed anything.
    #[error("update from client {client} for round {round} rejected: {reason}")]
    RejectedUpdate {
        /// The client that sent it.
        client: u64,
        /// The round it claims.
        round: u64,
        /// Why it was rejected.
        reason: String,
    },
    /// A federated round could not complete (too few clients survived, ...).
    #[error("round {round}: {reason}")]
    Round {
        /// The round.
        round: u64,
        /// What went wrong.
        reason: String,
    },
    /// Building or running a tokenizer failed.
    #[error("tokenizer: {msg}")]
    Tokenizer {
        /// What went wrong, as the tokenizers crate or spry reports it.
        msg: String,
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
