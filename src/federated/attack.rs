//! Simulated hostile clients, to measure what a [`super::CombineRule`] withstands.
//!
//! A hostile client trains honestly, then sends a corrupted version of its result. With g the
//! global value and w its honest value of a parameter it sends
//!
//! ```text
//! Scale{s}:     g + s·(w − g)     (a boosted update, as in model-replacement attacks)
//! SignFlip{s}:  g − s·(w − g)     (a reversed, boosted update)
//! ```
//!
//! Both stay finite for the sizes a run uses, so the server's validation lets them through: only
//! the combination rule can limit them.

use serde::{Deserialize, Serialize};

use super::aggregate::ClientUpdate;
use super::robust::split_spec;
use crate::modules::Trainable;
use crate::{Error, Float, Result};

/// How a hostile client corrupts its update. Spelled `scale[:s]` or `sign-flip[:s]`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum AttackKind {
    /// Sends `g + s·(w − g)`.
    Scale {
        /// s (default [`DEFAULT_SCALE`]).
        factor: f64,
    },
    /// Sends `g − s·(w − g)`.
    SignFlip {
        /// s (default [`DEFAULT_SIGN_FLIP`]).
        factor: f64,
    },
}

/// The factor `scale` means without a number.
pub const DEFAULT_SCALE: f64 = 100.0;
/// The factor `sign-flip` means without a number.
pub const DEFAULT_SIGN_FLIP: f64 = 4.0;

/// Hostile clients in a simulation: the first `clients_per_round` clients that report in each
/// round (per-epoch communication).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attack {
    /// How many of each round's reporting clients are hostile.
    pub clients_per_round: usize,
    /// What they send.
    pub kind: AttackKind,
}

impl AttackKind {
    /// Replaces every tensor of `update` with its corrupted value.
    ///
    /// # Shapes
    /// Each tensor of `update` has its parameter's shape in `global`.
    pub fn corrupt<F: Float>(self, global: &Trainable<F>, update: &mut ClientUpdate<F>) {
        let s = match self {
            AttackKind::Scale { factor } => factor,
            AttackKind::SignFlip { factor } => -factor,
        };
        for (p, value) in &mut update.params {
            value.zip_mut_with(global.value(*p), |w, g| {
                *w = F::from_f64(g.as_f64() + s * (w.as_f64() - g.as_f64()));
            });
        }
    }
}

impl std::str::FromStr for AttackKind {
    type Err = Error;

    /// `scale`, `scale:s`, `sign-flip` or `sign-flip:s`, with s > 0.
    fn from_str(s: &str) -> Result<Self> {
        let kind = match split_spec("AttackKind", s)? {
            ("scale", f) => AttackKind::Scale {
                factor: f.unwrap_or(DEFAULT_SCALE),
            },
            ("sign-flip", f) => AttackKind::SignFlip {
                factor: f.unwrap_or(DEFAULT_SIGN_FLIP),
            },
            _ => {
                return Err(Error::invalid(
                    "AttackKind",
                    format!("{s:?}: expected scale[:s] or sign-flip[:s]"),
                ));
            }
        };
        match kind {
            AttackKind::Scale { factor } | AttackKind::SignFlip { factor } if factor > 0.0 => {
                Ok(kind)
            }
            _ => Err(Error::invalid(
                "AttackKind",
                format!("{s:?}: the factor must be positive"),
            )),
        }
    }
}

impl std::fmt::Display for AttackKind {
    /// The spelling [`std::str::FromStr`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttackKind::Scale { factor } => write!(f, "scale:{factor}"),
            AttackKind::SignFlip { factor } => write!(f, "sign-flip:{factor}"),
        }
    }
}
