//! The checkpoint file: a JSON envelope whose SHA-256 covers the exact bytes of the checkpoint
//! it carries, so a flipped byte (a digit of a parameter, a moment, a round count) is detected
//! before a resume reads any of it.
//!
//! ```text
//! {"format":"spry-checkpoint","version":1,"sha256":"<64 hex digits>","checkpoint":{...}}
//! ```

use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::sim::Checkpoint;
use crate::{Error, Result};

/// The `format` field of a checkpoint file.
pub const CHECKPOINT_FORMAT: &str = "spry-checkpoint";
/// The envelope version this build writes and reads.
pub const CHECKPOINT_VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    format: String,
    version: u32,
    sha256: String,
    #[serde(borrow)]
    checkpoint: &'a RawValue,
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Checkpoint {
    /// The checkpoint file's bytes: the envelope above around the checkpoint's JSON.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the checkpoint cannot be serialised (a non-finite metric).
    pub fn to_file_bytes(&self) -> Result<Vec<u8>> {
        let body = serde_json::to_string(self)
            .map_err(|e| Error::invalid("Checkpoint::to_file_bytes", e.to_string()))?;
        let raw = RawValue::from_string(body)
            .map_err(|e| Error::invalid("Checkpoint::to_file_bytes", e.to_string()))?;
        let envelope = Envelope {
            format: CHECKPOINT_FORMAT.into(),
            version: CHECKPOINT_VERSION,
            sha256: sha256_hex(raw.get().as_bytes()),
            checkpoint: &raw,
        };
        serde_json::to_vec(&envelope)
            .map_err(|e| Error::invalid("Checkpoint::to_file_bytes", e.to_string()))
    }

    /// Reads a checkpoint file's bytes (`path` names it in errors), after checking the format,
    /// the version and the checksum of the body. The content is checked against a model by
    /// [`Checkpoint::validate`], which a resume calls.
    ///
    /// # Errors
    /// [`Error::Format`] for bytes that are not a checkpoint file, another format or version, a
    /// checksum that does not match, or a body that is not a checkpoint.
    pub fn from_file_bytes(path: &Path, bytes: &[u8]) -> Result<Checkpoint> {
        let bad = |msg: String| Error::Format {
            path: path.to_path_buf(),
            format: "checkpoint",
            msg,
        };
        let envelope: Envelope = serde_json::from_slice(bytes).map_err(|e| {
            bad(format!(
                "{e} (a spry checkpoint file is {{\"format\":\"{CHECKPOINT_FORMAT}\", \"version\", \"sha256\", \"checkpoint\"}})"
            ))
        })?;
        if envelope.format != CHECKPOINT_FORMAT || envelope.version != CHECKPOINT_VERSION {
            return Err(bad(format!(
                "format {:?} version {}; this build reads {CHECKPOINT_FORMAT:?} version {CHECKPOINT_VERSION}",
                envelope.format, envelope.version
            )));
        }
        let body = envelope.checkpoint.get().as_bytes();
        let actual = sha256_hex(body);
        if actual != envelope.sha256 {
            return Err(bad(format!(
                "checksum mismatch (recorded {}, content {actual}): the file was changed or damaged",
                envelope.sha256
            )));
        }
        serde_json::from_slice(body).map_err(|e| bad(e.to_string()))
    }
}
