//! The naive twin of [`attention`](super::attention): textbook loops over (batch, head, query),
//! one direction at a time, forming each query row's full probability row. For tests.

use ndarray::{Array3, Array4, ArrayView2, Ix3};

use super::{AttentionShape, Geometry};
use crate::{Dual, Float, Result, common_k};

/// Naive twin of [`attention`](super::attention): textbook loops over (batch, head, query), one direction at a
/// time, masked keys skipped by an explicit test. For tests.
///
/// # Errors
/// As [`attention`](super::attention).
#[allow(clippy::needless_range_loop)] // textbook index loops on purpose
pub fn attention_reference<F: Float>(
    q: &Dual<F, Ix3>,
    k: &Dual<F, Ix3>,
    v: &Dual<F, Ix3>,
    key_mask: Option<ArrayView2<'_, bool>>,
    shape: &AttentionShape,
) -> Result<Dual<F, Ix3>> {
    const OP: &str = "attention_reference";
    let g = Geometry::check(OP, q, k, v, key_mask.as_ref(), shape)?;
    let kd = common_k(OP, &[q.k(), k.k(), v.k()])?;
    let (b_n, t_n, s_n, d) = (g.batch, g.t, g.s, g.d);
    let h_n = shape.n_heads;
    let tau = F::from_f64(1.0 / (d as f64).sqrt());
    let (qp, kp, vp) = (q.primal(), k.primal(), v.primal());
    let allowed = |b: usize, t: usize, s: usize| -> bool {
        let by_mask = key_mask.as_ref().is_none_or(|m| m[[b, s]]);
        let by_pos = !shape.causal || s + t_n <= t + s_n;
        by_mask && by_pos
    };
    let mut out = Array3::zeros((b_n, t_n, h_n * d));
    let mut out_dot = kd.map(|kd| Array4::zeros((kd, b_n, t_n, h_n * d)));
    let mut p = vec![F::zero(); s_n];
    for b in 0..b_n {
        for h in 0..h_n {
            let g_kv = h / g.group;
            for t in 0..t_n {
                // p = softmax of the allowed scores, 0 elsewhere
                let mut max: Option<F> = None;
                for s in 0..s_n {
                    p[s] = F::zero();
                    if allowed(b, t, s) {
                        let mut sc = F::zero();
                        for e in 0..d {
                            sc += qp[[b, t, h * d + e]] * kp[[b, s, g_kv * d + e]];
                        }
                        p[s] = tau * sc;
                        max = Some(max.map_or(p[s], |m: F| if p[s] > m { p[s] } else { m }));
                    }
                }
                let Some(m) = max else {
                    continue; // fully masked row: zero output and tangent
                };
                let mut sum = F::zero();
                for s in 0..s_n {
                    if allowed(b, t, s) {
                        p[s] = (p[s] - m).exp();
                        sum += p[s];
                    }
                }
                for s in 0..s_n {
                    p[s] /= sum;
                }
                for e in 0..d {
                    let mut o = F::zero();
                    for s in 0..s_n {
                        o += p[s] * vp[[b, s, g_kv * d + e]];
                    }
                    out[[b, t, h * d + e]] = o;
                }
                let Some(od) = out_dot.as_mut() else {
                    continue;
                };
                for kk in 0..od.shape()[0] {
                    // ṡ_s = τ·(q̇·k_s + q·k̇_s) on the allowed keys
                    let mut sd = vec![F::zero(); s_n];
                    for s in 0..s_n {
                        if !allowed(b, t, s) {
                            continue;
                        }
                        let mut acc = F::zero();
                        for e in 0..d {
                            if let Some(tq) = q.tangent() {
                                acc += tq[[kk, b, t, h * d + e]] * kp[[b, s, g_kv * d + e]];
                            }
                            if let Some(tk) = k.tangent() {
                                acc += qp[[b, t, h * d + e]] * tk[[kk, b, s, g_kv * d + e]];
                            }
                        }
                        sd[s] = tau * acc;
                    }
                    let mut dot = F::zero();
                    for s in 0..s_n {
                        dot += p[s] * sd[s];
                    }
                    for e in 0..d {
                        let mut o = F::zero();
                        for s in 0..s_n {
                            if !allowed(b, t, s) {
                                continue;
                            }
                            o += p[s] * (sd[s] - dot) * vp[[b, s, g_kv * d + e]];
                            if let Some(tv) = v.tangent() {
                                o += p[s] * tv[[kk, b, s, g_kv * d + e]];
                            }
                        }
                        od[[kk, b, t, h * d + e]] = o;
                    }
                }
            }
        }
    }
    Ok(Dual::from_parts_unchecked(out, out_dot))
}
