//! Communication modes and the bytes they move.
//!
//! - **Per-epoch** (the reference's only mode): each sampled client downloads the global trainable
//!   tensors and a seed, trains locally for the round, and uploads its assigned tensors with their
//!   indices and its example count.
//! - **Per-iteration**: each sampled client downloads the global trainable tensors once per round;
//!   then every local step it uploads only its K JVP scalars. The server regenerates the client's
//!   directions from the seed, forms the estimate, averages it per tensor over the clients
//!   assigned to it and steps the optimizer; it broadcasts all clients' JVP scalars, from which
//!   every client replays the same update. Upload and download per step are O(K) floats per client.
//!   With an exact head gradient (`HeadGrad::Exact`) a client also uploads that gradient each step
//!   (O(head) floats: 2·384 + 2 for MiniLM's 2-class head), and the server broadcasts the
//!   per-tensor average of those gradients.

use serde::{Deserialize, Serialize};

/// Bytes of one f32 value on the wire.
pub const F32_BYTES: u64 = 4;
/// Bytes of a tensor index or an example count on the wire.
pub const INDEX_BYTES: u64 = 4;
/// Bytes of the round seed and round number sent with every download.
pub const HEADER_BYTES: u64 = 16;

/// How clients and server exchange updates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommMode {
    /// Upload trained tensors once per round.
    PerEpoch,
    /// Upload K JVP scalars per local step; the server replays the directions.
    PerIteration,
}

from_names!(CommMode, "per-epoch" => CommMode::PerEpoch, "per-iteration" => CommMode::PerIteration);

/// Bytes moved in one round.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundBytes {
    /// Client → server.
    pub up: u64,
    /// Server → clients.
    pub down: u64,
}

impl std::ops::AddAssign for RoundBytes {
    fn add_assign(&mut self, o: Self) {
        self.up += o.up;
        self.down += o.down;
    }
}

/// Download of the global trainable tensors (`n_scalars` values) plus the header, to one client.
pub fn download_model(n_scalars: usize) -> u64 {
    HEADER_BYTES + n_scalars as u64 * F32_BYTES
}

/// Per-epoch upload of one client: its tensors' values, one index per tensor, the example count.
pub fn upload_tensors(n_scalars: usize, n_tensors: usize) -> u64 {
    n_scalars as u64 * F32_BYTES + n_tensors as u64 * INDEX_BYTES + INDEX_BYTES
}

/// Per-iteration upload of one client for one step: K JVP scalars and the example count.
pub fn upload_jvps(k: usize) -> u64 {
    k as u64 * F32_BYTES + INDEX_BYTES
}

/// Per-iteration upload of one client's exact gradients for one step: the values and one index
/// per tensor.
pub fn upload_gradients(n_scalars: usize, n_tensors: usize) -> u64 {
    n_scalars as u64 * F32_BYTES + n_tensors as u64 * INDEX_BYTES
}

/// Per-iteration broadcast for one step: every participating client's K JVP scalars and counts,
/// to each of the `n_clients` participants.
pub fn broadcast_jvps(k: usize, n_clients: usize) -> u64 {
    n_clients as u64 * n_clients as u64 * upload_jvps(k)
}
