//! How the server combines the values several clients sent for one parameter: the weighted
//! mean of FedAvg, or a rule that a few hostile clients cannot drag far.
//!
//! For parameter p with global value g and contributions `w_i` (weights `n_i`, the clients'
//! example counts) from the clients S_p that trained it this round:
//!
//! ```text
//! Mean:                   w̄ = Σ_i (n_i / Σ_j n_j) · w_i
//! ClipToMedian{c}:        d_i = w_i − g,  m = lower median of ‖d_i‖,
//!                         w̄ = g + Σ_i (n_i / Σ_j n_j) · min(1, c·m / ‖d_i‖) · d_i
//! TrimmedMean{β}:         per coordinate, drop the k = ⌊β·|S_p|⌋ smallest and k largest values,
//!                         w̄ = the unweighted mean of the rest
//! Median:                 per coordinate, the unweighted median (the mean of the middle two
//!                         for an even count)
//! ```
//!
//! Every rule works in f64 on normalised weights, so a combination of finite values is finite:
//! a convex combination never exceeds the largest magnitude it combines. The robust rules
//! ignore the example counts where a count would let one client outweigh the rest (trimmed
//! mean, median). A rule with k hostile contributors needs, per parameter: clipping, none
//! (their pull is bounded by c·m each, a norm the honest majority sets); trimmed mean, k ≤
//! ⌊β·|S_p|⌋; median, k < |S_p|/2.

use ndarray::ArrayD;
use serde::{Deserialize, Serialize};

use crate::{Error, Float, Result};

/// How the server combines the clients' values of one parameter (see the module docs for the
/// formulas). Spelled on the command line as `mean`, `clip[:c]`, `trimmed-mean[:β]` or `median`.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, Default)]
pub enum CombineRule {
    /// The example-weighted mean (FedAvg's rule; the default).
    #[default]
    Mean,
    /// Each client's change `w_i − g` clipped to `factor` times the round's lower-median change
    /// norm of that parameter, then the weighted mean.
    ClipToMedian {
        /// c, in (0, 1e6]; 1 clips every change to the median norm.
        factor: f64,
    },
    /// The coordinate-wise mean after dropping the ⌊fraction·n⌋ smallest and largest values.
    TrimmedMean {
        /// β, in [0, 0.5).
        fraction: f64,
    },
    /// The coordinate-wise median.
    Median,
}

/// The clipping factor `clip` means without a number.
pub const DEFAULT_CLIP_FACTOR: f64 = 1.0;
/// The trimmed fraction `trimmed-mean` means without a number: one value off each end of five.
pub const DEFAULT_TRIM_FRACTION: f64 = 0.2;

impl CombineRule {
    /// Checks the rule's parameter range.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a clipping factor outside (0, 1e6] or a trimmed fraction
    /// outside [0, 0.5).
    pub fn validate(self) -> Result<()> {
        let ok = match self {
            CombineRule::Mean | CombineRule::Median => true,
            CombineRule::ClipToMedian { factor } => factor > 0.0 && factor <= 1e6,
            CombineRule::TrimmedMean { fraction } => (0.0..0.5).contains(&fraction),
        };
        if ok {
            Ok(())
        } else {
            Err(Error::invalid(
                "CombineRule",
                format!(
                    "{self}: a clipping factor lies in (0, 1e6], a trimmed fraction in [0, 0.5)"
                ),
            ))
        }
    }

    /// Combines `contributions` (weight, value) of one parameter whose global value is
    /// `global`.
    ///
    /// # Shapes
    /// Every value has `global`'s shape (the caller validated them); the result too.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for no contributions, a non-positive total weight, or an
    /// invalid rule.
    pub fn combine<F: Float>(
        self,
        global: &ArrayD<F>,
        contributions: &[(f64, &ArrayD<F>)],
    ) -> Result<ArrayD<F>> {
        self.validate()?;
        let total: f64 = contributions.iter().map(|(w, _)| w).sum();
        if contributions.is_empty() || !(total > 0.0 && total.is_finite()) {
            return Err(Error::invalid(
                "CombineRule::combine",
                format!(
                    "{} contributions of total weight {total}",
                    contributions.len()
                ),
            ));
        }
        let n = global.len();
        let mut out = vec![0.0f64; n];
        match self {
            CombineRule::Mean => {
                for (w, value) in contributions {
                    let share = w / total;
                    for (o, v) in out.iter_mut().zip(value.iter()) {
                        *o += share * v.as_f64();
                    }
                }
            }
            CombineRule::ClipToMedian { factor } => {
                let norms: Vec<f64> = contributions
                    .iter()
                    .map(|(_, value)| change_norm(global, value))
                    .collect();
                let mut sorted = norms.clone();
                sorted.sort_by(f64::total_cmp);
                let bound = factor * sorted[(sorted.len() - 1) / 2];
                for (o, g) in out.iter_mut().zip(global.iter()) {
                    *o = g.as_f64();
                }
                for ((w, value), norm) in contributions.iter().zip(&norms) {
                    let scale = if *norm > bound { bound / norm } else { 1.0 };
                    let share = w / total * scale;
                    for ((o, v), g) in out.iter_mut().zip(value.iter()).zip(global.iter()) {
                        *o += share * (v.as_f64() - g.as_f64());
                    }
                }
            }
            CombineRule::TrimmedMean { fraction } => {
                let k = (fraction * contributions.len() as f64).floor() as usize;
                coordinatewise(contributions, &mut out, |column| {
                    let kept = &column[k..column.len() - k];
                    let len = kept.len() as f64;
                    kept.iter().map(|v| v / len).sum()
                });
            }
            CombineRule::Median => coordinatewise(contributions, &mut out, |column| {
                let h = column.len() / 2;
                if column.len() % 2 == 1 {
                    column[h]
                } else {
                    column[h - 1] / 2.0 + column[h] / 2.0
                }
            }),
        }
        let values = out.into_iter().map(F::from_f64).collect();
        ArrayD::from_shape_vec(global.raw_dim(), values)
            .map_err(|e| Error::invalid("CombineRule::combine", e.to_string()))
    }
}

/// ‖value − global‖₂ in f64, scaled so that it cannot overflow for finite inputs.
fn change_norm<F: Float>(global: &ArrayD<F>, value: &ArrayD<F>) -> f64 {
    let diffs = || {
        value
            .iter()
            .zip(global.iter())
            .map(|(v, g)| v.as_f64() - g.as_f64())
    };
    let largest = diffs().fold(0.0f64, |m, d| m.max(d.abs()));
    if largest == 0.0 || !largest.is_finite() {
        return largest;
    }
    largest * diffs().map(|d| (d / largest).powi(2)).sum::<f64>().sqrt()
}

/// Writes `reduce(sorted column)` for every coordinate: the column holds that coordinate's value
/// from every contribution, in ascending order.
fn coordinatewise<F: Float>(
    contributions: &[(f64, &ArrayD<F>)],
    out: &mut [f64],
    reduce: impl Fn(&[f64]) -> f64,
) {
    let values: Vec<Vec<f64>> = contributions
        .iter()
        .map(|(_, v)| v.iter().map(|x| x.as_f64()).collect())
        .collect();
    let mut column = vec![0.0; contributions.len()];
    for (i, o) in out.iter_mut().enumerate() {
        for (c, v) in column.iter_mut().zip(&values) {
            *c = v[i];
        }
        column.sort_by(f64::total_cmp);
        *o = reduce(&column);
    }
}

/// Splits a command-line spec `name` or `name:number` into its parts.
///
/// # Errors
/// [`Error::InvalidArgument`] (under `what`) if the number does not parse as a finite f64.
pub(crate) fn split_spec<'a>(what: &'static str, spec: &'a str) -> Result<(&'a str, Option<f64>)> {
    match spec.split_once(':') {
        None => Ok((spec, None)),
        Some((name, number)) => match number.trim().parse::<f64>() {
            Ok(x) if x.is_finite() => Ok((name, Some(x))),
            _ => Err(Error::invalid(
                what,
                format!("{spec:?}: `{number}` is not a finite number"),
            )),
        },
    }
}

impl std::str::FromStr for CombineRule {
    type Err = Error;

    /// `mean`, `clip`, `clip:c`, `trimmed-mean`, `trimmed-mean:β` or `median`.
    fn from_str(s: &str) -> Result<Self> {
        let rule = match split_spec("CombineRule", s)? {
            ("mean", None) => CombineRule::Mean,
            ("median", None) => CombineRule::Median,
            ("clip", factor) => CombineRule::ClipToMedian {
                factor: factor.unwrap_or(DEFAULT_CLIP_FACTOR),
            },
            ("trimmed-mean", fraction) => CombineRule::TrimmedMean {
                fraction: fraction.unwrap_or(DEFAULT_TRIM_FRACTION),
            },
            _ => {
                return Err(Error::invalid(
                    "CombineRule",
                    format!("{s:?}: expected mean, clip[:c], trimmed-mean[:β] or median"),
                ));
            }
        };
        rule.validate()?;
        Ok(rule)
    }
}

impl std::fmt::Display for CombineRule {
    /// The spelling [`std::str::FromStr`] reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CombineRule::Mean => f.write_str("mean"),
            CombineRule::Median => f.write_str("median"),
            CombineRule::ClipToMedian { factor } => write!(f, "clip:{factor}"),
            CombineRule::TrimmedMean { fraction } => write!(f, "trimmed-mean:{fraction}"),
        }
    }
}
