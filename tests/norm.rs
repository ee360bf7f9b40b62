//! LayerNorm and RMSNorm: finite differences, linearity, K stacking, primal equality, symbolic
//! zeros, the reference twins, the invariances (Σ x̂̇ = 0, scale and shift), ε inside the rsqrt,
//! BERT's ε = 1e-12 on near-constant rows, f32 against f64, typed errors.

mod common;

use common::*;
use ndarray::{Array1, Ix1, IxDyn};
use proptest::prelude::*;
use spry::kernels::{
    layer_norm, layer_norm_dual, layer_norm_dual_reference, layer_norm_reference, rms_norm,
    rms_norm_dual, rms_norm_dual_reference, rms_norm_reference,
};
use spry::{Dual, Error};

/// BERT's LayerNorm ε.
const BERT_EPS: f64 = 1e-12;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Norm {
    Layer,
    Rms,
}

/// Random case: x `[.., n]` (rank 1 to 3), γ and β `[n]`, K directions over (x, γ, β).
#[derive(Debug, Clone)]
struct Case {
    shape: Vec<usize>,
    n: usize,
    k: usize,
    eps: f64,
    theta: Vec<f64>,
    dirs: Vec<f64>,
}

type Duals = (Dual<f64, IxDyn>, Dual<f64, Ix1>, Dual<f64, Ix1>);

impl Case {
    fn nx(&self) -> usize {
        self.shape.iter().product()
    }
    fn n_params(&self) -> usize {
        self.nx() + 2 * self.n
    }
    /// Splits a flat parameter vector into (x, γ, β).
    fn split<'a>(&self, v: &'a [f64]) -> (&'a [f64], &'a [f64], &'a [f64]) {
        let nx = self.nx();
        (&v[..nx], &v[nx..nx + self.n], &v[nx + self.n..])
    }
    /// The primal output for parameters `theta` (RMSNorm ignores β).
    fn f(&self, norm: Norm, theta: &[f64]) -> Vec<f64> {
        let (x, g, b) = self.split(theta);
        let x = dual(&self.shape, x, None);
        let (g, b) = (Array1::from(g.to_vec()), Array1::from(b.to_vec()));
        let y = match norm {
            Norm::Layer => layer_norm(&x, g.view(), Some(b.view()), self.eps),
            Norm::Rms => rms_norm(&x, g.view(), self.eps),
        };
        flat(y.unwrap().primal())
    }
    /// Dual inputs carrying direction block `dirs` (K directions of `n_params` each); `mask`
    /// says which of (x, γ, β) carry a tangent (the others are symbolic zeros).
    fn duals(&self, k: usize, dirs: &[f64], mask: [bool; 3]) -> Duals {
        let (x, g, b) = self.split(&self.theta);
        let n = self.n_params();
        let pick = |part: usize| -> Option<Vec<f64>> {
            mask[part].then(|| {
                (0..k)
                    .flat_map(|kk| {
                        let (dx, dg, db) = self.split(&dirs[kk * n..(kk + 1) * n]);
                        [dx, dg, db][part].to_vec()
                    })
                    .collect()
            })
        };
        let (px, pg, pb) = (pick(0), pick(1), pick(2));
        (
            dual(&self.shape, x, px.as_deref().map(|t| (k, t))),
            fixed(dual(&[self.n], g, pg.as_deref().map(|t| (k, t)))),
            fixed(dual(&[self.n], b, pb.as_deref().map(|t| (k, t)))),
        )
    }
    /// Runs the dual kernel (β only for LayerNorm).
    fn run(&self, norm: Norm, d: &Duals) -> Dual<f64, IxDyn> {
        match norm {
            Norm::Layer => layer_norm_dual(&d.0, &d.1, Some(&d.2), self.eps).unwrap(),
            Norm::Rms => rms_norm_dual(&d.0, &d.1, self.eps).unwrap(),
        }
    }
    /// Runs the reference twin of [`Case::run`].
    fn run_reference(&self, norm: Norm, d: &Duals) -> Dual<f64, IxDyn> {
        match norm {
            Norm::Layer => layer_norm_dual_reference(&d.0, &d.1, Some(&d.2), self.eps).unwrap(),
            Norm::Rms => rms_norm_dual_reference(&d.0, &d.1, self.eps).unwrap(),
        }
    }
    /// The smallest `σ² + ε` (LayerNorm) or `mean(x²) + ε` (RMSNorm) over the rows: finite
    /// differences need it away from 0, where `r` and its derivatives blow up.
    fn min_denominator(&self, norm: Norm) -> f64 {
        let (x, _, _) = self.split(&self.theta);
        x.chunks(self.n)
            .map(|row| {
                let nf = row.len() as f64;
                let mu = match norm {
                    Norm::Layer => row.iter().sum::<f64>() / nf,
                    Norm::Rms => 0.0,
                };
                row.iter().map(|v| (v - mu).powi(2)).sum::<f64>() / nf + self.eps
            })
            .fold(f64::INFINITY, f64::min)
    }
    /// Tolerance of fast-vs-reference checks: `EXACT_TOL` times `r² = 1/(σ² + ε)`. A rounding
    /// error of a few ulps in `x − μ` perturbs `x̂` by `ulp·r` and `x̂̇` by `ulp·r²`, and the two
    /// twins compute `μ` differently (the fast kernel relative to the row's first element).
    fn reference_tol(&self, norm: Norm) -> f64 {
        EXACT_TOL * (1.0 / self.min_denominator(norm)).max(1.0)
    }
    /// Whether finite differences are well conditioned (a one-element LayerNorm row is
    /// constant, so it is fine at any ε).
    fn well_conditioned(&self, norm: Norm) -> bool {
        (norm == Norm::Layer && self.n == 1) || self.min_denominator(norm) >= 0.05
    }
}

fn eps() -> impl Strategy<Value = f64> {
    prop_oneof![Just(1e-5), Just(BERT_EPS), Just(0.5), 1e-3f64..1.0]
}

fn case() -> impl Strategy<Value = Case> {
    (
        prop::collection::vec(1usize..3, 0..=2),
        1usize..7,
        1usize..4,
        eps(),
    )
        .prop_flat_map(|(lead, n, k, eps)| {
            let mut shape = lead;
            shape.push(n);
            let np = shape.iter().product::<usize>() + 2 * n;
            (values(np), values(k * np)).prop_map(move |(theta, dirs)| Case {
                shape: shape.clone(),
                n,
                k,
                eps,
                theta,
                dirs,
            })
        })
}

const ALL: [bool; 3] = [true, true, true];
const NORMS: [Norm; 2] = [Norm::Layer, Norm::Rms];

/// Every (x, γ, β) symbolic-zero pattern with at least one dual input.
fn masks() -> impl Iterator<Item = [bool; 3]> {
    (1..8u8).map(|m| [m & 1 != 0, m & 2 != 0, m & 4 != 0])
}

/// Checks the K tangents of `y` against central differences along the masked directions.
fn check_fd(
    c: &Case,
    norm: Norm,
    y: &Dual<f64, IxDyn>,
    mask: [bool; 3],
) -> Result<(), TestCaseError> {
    let n = c.n_params();
    let (nx, nn) = (c.nx(), c.n);
    let t = tangent_or_zeros(y, c.k);
    for kk in 0..c.k {
        let mut v = direction(&c.dirs, n, kk).to_vec();
        for (part, range) in [(0, 0..nx), (1, nx..nx + nn), (2, nx + nn..n)] {
            if !mask[part] {
                v[range].iter_mut().for_each(|e| *e = 0.0);
            }
        }
        let fd = fd_jvp(|th| c.f(norm, th), &c.theta, &v);
        assert_close(direction(&t, nx, kk), &fd, FD_TOL, "jvp vs fd")?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn dual_matches_finite_differences(c in case()) {
        for norm in NORMS {
            if c.well_conditioned(norm) {
                let y = c.run(norm, &c.duals(c.k, &c.dirs, ALL));
                check_fd(&c, norm, &y, ALL)?;
            }
        }
    }

    #[test]
    fn every_symbolic_zero_pattern_matches_reference_and_fd(c in case()) {
        for norm in NORMS {
            for mask in masks() {
                let d = c.duals(c.k, &c.dirs, mask);
                let (fast, slow) = (c.run(norm, &d), c.run_reference(norm, &d));
                // RMSNorm has no β: a β-only pattern is all symbolic zeros.
                let constant = norm == Norm::Rms && !mask[0] && !mask[1];
                prop_assert_eq!(fast.k(), (!constant).then_some(c.k));
                let tol = c.reference_tol(norm);
                assert_close(&flat(fast.primal()), &flat(slow.primal()), tol, "primal")?;
                assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), tol, "tangent")?;
                if c.well_conditioned(norm) {
                    check_fd(&c, norm, &fast, mask)?;
                }
            }
        }
    }

    #[test]
    fn frozen_params_match_reference_and_fd(c in case()) {
        let (x, g, b) = c.duals(c.k, &c.dirs, [true, false, false]);
        let (g, b) = (g.primal().view(), b.primal().view());
        let pairs = [
            (Norm::Layer, layer_norm(&x, g, Some(b), c.eps).unwrap(), layer_norm_reference(&x, g, Some(b), c.eps).unwrap()),
            (Norm::Rms, rms_norm(&x, g, c.eps).unwrap(), rms_norm_reference(&x, g, c.eps).unwrap()),
        ];
        for (norm, fast, slow) in pairs {
            let tol = c.reference_tol(norm);
            assert_close(&flat(fast.primal()), &flat(slow.primal()), tol, "primal")?;
            assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), tol, "tangent")?;
            if c.well_conditioned(norm) {
                check_fd(&c, norm, &fast, [true, false, false])?;
            }
        }
    }

    #[test]
    fn is_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let n = c.n_params();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix = lincomb(a, v1, b, &v2);
        for norm in NORMS {
            let run = |d: &[f64]| tangent_or_zeros(&c.run(norm, &c.duals(1, d, ALL)), 1);
            let (t1, t2, tm) = (run(v1), run(&v2), run(&mix));
            assert_close(&tm, &lincomb(a, &t1, b, &t2), EXACT_TOL, "linearity")?;
        }
    }

    #[test]
    fn k_stacked_equals_k_single_runs(c in case()) {
        let n = c.n_params();
        for norm in NORMS {
            let stacked = tangent_or_zeros(&c.run(norm, &c.duals(c.k, &c.dirs, ALL)), c.k);
            for kk in 0..c.k {
                let single = c.run(norm, &c.duals(1, direction(&c.dirs, n, kk), ALL));
                assert_close(direction(&stacked, c.nx(), kk), &tangent_or_zeros(&single, 1), EXACT_TOL, "stacked vs single")?;
            }
        }
    }

    #[test]
    fn primal_equals_plain_forward_bitwise(c in case()) {
        for norm in NORMS {
            let y = c.run(norm, &c.duals(c.k, &c.dirs, ALL));
            prop_assert_eq!(flat(y.primal()), c.f(norm, &c.theta));
        }
    }

    /// With γ = 1 and no β the output is x̂, whose tangent sums to zero over each row.
    #[test]
    fn layer_norm_hat_tangent_sums_to_zero(c in case()) {
        let (x, _, _) = c.duals(c.k, &c.dirs, ALL);
        let ones = Array1::from_elem(c.n, 1.0);
        let y = layer_norm(&x, ones.view(), None, c.eps).unwrap();
        for row in tangent_or_zeros(&y, c.k).chunks(c.n) {
            let sum: f64 = row.iter().sum();
            let scale: f64 = row.iter().map(|v| v.abs()).sum();
            prop_assert!(sum.abs() <= 1e-12 * (1.0 + scale), "row sum {} (scale {})", sum, scale);
        }
    }

    /// With ε = 0 both norms are scale invariant (ẋ = x ⇒ ẏ = 0), and LayerNorm is shift
    /// invariant at any ε (ẋ = 1 ⇒ ẏ = 0).
    #[test]
    fn scale_and_shift_directions_give_zero_tangent(c in case()) {
        let c0 = Case { eps: 0.0, ..c.clone() };
        let (xs, gs, _) = c.split(&c.theta);
        let g = Array1::from(gs.to_vec());
        let scale = dual(&c.shape, xs, Some((1, xs)));
        for norm in NORMS {
            if c0.min_denominator(norm) >= 0.05 {
                let y = match norm {
                    Norm::Layer => layer_norm(&scale, g.view(), None, 0.0).unwrap(),
                    Norm::Rms => rms_norm(&scale, g.view(), 0.0).unwrap(),
                };
                assert_close(&tangent_or_zeros(&y, 1), &vec![0.0; c.nx()], 1e-12, "scale invariance")?;
            }
        }
        if c.well_conditioned(Norm::Layer) {
            let shift = dual(&c.shape, xs, Some((1, &vec![1.0; c.nx()])));
            let y = layer_norm(&shift, g.view(), None, c.eps).unwrap();
            assert_close(&tangent_or_zeros(&y, 1), &vec![0.0; c.nx()], 1e-12, "shift invariance")?;
        }
    }

    /// ε = 0.5 is far from negligible: dropping it from the tangent, or using mean(x̂²) = 1,
    /// misses the finite difference.
    #[test]
    fn epsilon_inside_rsqrt_matches_fd(c in case()) {
        let c = Case { eps: 0.5, ..c };
        for norm in NORMS {
            let y = c.run(norm, &c.duals(c.k, &c.dirs, ALL));
            check_fd(&c, norm, &y, ALL)?;
        }
    }

    /// BERT's ε = 1e-12 on rows `c + δ·noise` (r up to 1e6): finite; bitwise equal to the
    /// same rows shifted by `c` (the subtraction is exact, |c| ≥ 0.5 and δ ≤ 1e-2); close to
    /// the reference on the shifted, well-scaled rows; finite differences along δ-scaled
    /// directions where every row's spread is at least δ/10.
    #[test]
    fn near_constant_rows_with_bert_eps(
        center in prop_oneof![-2.0f64..-0.5, 0.5f64..2.0],
        delta in prop_oneof![Just(0.0), Just(1e-9), Just(1e-7), Just(1e-5), Just(1e-3), Just(1e-2)],
        n in 2usize..9,
        noise in values(3 * 8 + 2 * 8),
        k in 1usize..4,
    ) {
        let rows = 3;
        let x: Vec<f64> = (0..rows * n).map(|i| center + delta * noise[i]).collect();
        let shifted: Vec<f64> = x.iter().map(|v| v - center).collect(); // exact (Sterbenz)
        let g: Vec<f64> = (0..n).map(|i| 1.0 + 0.25 * noise[24 + i]).collect();
        let b: Vec<f64> = (0..n).map(|i| noise[32 + i]).collect();
        let dirs: Vec<f64> = (0..k * rows * n).map(|i| delta.max(1e-3) * noise[i % noise.len()]).collect();
        let c = Case {
            shape: vec![rows, n],
            n,
            k,
            eps: BERT_EPS,
            theta: x.iter().chain(&g).chain(&b).copied().collect(),
            dirs: Vec::new(),
        };
        let xd = dual(&[rows, n], &x, Some((k, &dirs)));
        let xs = dual(&[rows, n], &shifted, Some((k, &dirs)));
        let (g, b) = (Array1::from(g), Array1::from(b));
        let fast = layer_norm(&xd, g.view(), Some(b.view()), BERT_EPS).unwrap();
        let (pf, tf) = (flat(fast.primal()), tangent_or_zeros(&fast, k));
        prop_assert!(pf.iter().chain(&tf).all(|v| v.is_finite()));
        let moved = layer_norm(&xs, g.view(), Some(b.view()), BERT_EPS).unwrap();
        prop_assert_eq!(&pf, &flat(moved.primal()));
        prop_assert_eq!(&tf, &tangent_or_zeros(&moved, k));
        // The textbook twin on the shifted rows: its mean is off by a few ulps of the shifted
        // values s, which perturbs x̂ by ~ulp(s)·r and x̂̇ by ~ulp(s)·r²·|ẋ|.
        let slow = layer_norm_reference(&xs, g.view(), Some(b.view()), BERT_EPS).unwrap();
        let r = 1.0 / c.min_denominator(Norm::Layer).sqrt();
        let s = shifted.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let dmax = dirs.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let ulps = 64.0 * f64::EPSILON * s;
        assert_close(&pf, &flat(slow.primal()), EXACT_TOL.max(ulps * r), "primal")?;
        assert_close(&tf, &tangent_or_zeros(&slow, k), EXACT_TOL.max(ulps * r * r * dmax), "tangent")?;
        // FD where the rows' spread dominates: the noise of some row may be far below δ.
        if delta >= 1e-3 && c.min_denominator(Norm::Layer) >= (delta / 10.0).powi(2) {
            for kk in 0..k {
                let mut v = direction(&dirs, rows * n, kk).to_vec();
                v.extend(vec![0.0; 2 * n]);
                let fd = fd_jvp(|th| c.f(Norm::Layer, th), &c.theta, &v);
                assert_close(direction(&tf, rows * n, kk), &fd, FD_TOL, "near-constant jvp vs fd")?;
            }
        }
    }

    #[test]
    fn f32_matches_f64(c in case()) {
        // The f64 run sees the f32-rounded inputs, so only the f32 arithmetic is measured.
        let c = Case { theta: round_f32(&c.theta), dirs: round_f32(&c.dirs), ..c };
        for norm in NORMS {
            if !c.well_conditioned(norm) {
                continue;
            }
            let d = c.duals(c.k, &c.dirs, ALL);
            let y64 = c.run(norm, &d);
            let (x, g, b) = (dual_to_f32(&d.0), dual_to_f32(&d.1), dual_to_f32(&d.2));
            let y32 = match norm {
                Norm::Layer => layer_norm_dual(&x, &g, Some(&b), c.eps).unwrap(),
                Norm::Rms => rms_norm_dual(&x, &g, c.eps).unwrap(),
            };
            assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-5, "f32 primal")?;
            let t32 = flat_f32(y32.tangent().unwrap());
            assert_close(&t32, &tangent_or_zeros(&y64, c.k), 1e-5, "f32 tangent")?;
        }
    }
}

/// A near-constant f32 row far from 0: its spread is a few hundred f32 ulps of the row value,
/// so a mean accumulated in f32 would be off by a visible fraction of the spread. The f64
/// statistics keep the f32 kernel within 1e-5 of the f64 kernel on the same inputs.
#[test]
fn near_constant_f32_rows_use_f64_statistics() {
    let n = 64;
    let x: Vec<f64> = round_f32(
        &(0..2 * n)
            .map(|i| 100.0 + 1e-3 * ((i * 37 % 17) as f64 / 8.0 - 1.0))
            .collect::<Vec<_>>(),
    );
    let t: Vec<f64> = (0..3 * 2 * n)
        .map(|i| ((i * 13 % 7) as f64 - 3.0) / 3.0)
        .collect();
    let x64 = dual(&[2, n], &x, Some((3, &t)));
    let x32 = dual_to_f32(&x64);
    let g64 = Array1::from_elem(n, 1.0);
    let g32 = Array1::from_elem(n, 1.0f32);
    let y64 = layer_norm(&x64, g64.view(), None, BERT_EPS).unwrap();
    let y32 = layer_norm(&x32, g32.view(), None, BERT_EPS).unwrap();
    let (p32, p64) = (flat_f32(y32.primal()), flat(y64.primal()));
    assert!(p32.iter().all(|v| v.is_finite()));
    let err = |a: &[f64], b: &[f64]| {
        let scale = 1.0 + b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        a.iter()
            .zip(b)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
            / scale
    };
    assert!(err(&p32, &p64) < 1e-5, "primal error {}", err(&p32, &p64));
    let (t32, t64) = (
        flat_f32(y32.tangent().unwrap()),
        flat(y64.tangent().unwrap()),
    );
    assert!(err(&t32, &t64) < 1e-5, "tangent error {}", err(&t32, &t64));

    // The same row normalised with f32 statistics misses the tolerance by far.
    let naive: Vec<f64> = x
        .chunks(n)
        .flat_map(|row| {
            let row: Vec<f32> = row.iter().map(|&v| v as f32).collect();
            let mu = row.iter().sum::<f32>() / n as f32;
            let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f32>() / n as f32;
            let r = 1.0 / (var + BERT_EPS as f32).sqrt();
            row.iter()
                .map(move |v| f64::from((v - mu) * r))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        err(&naive, &p64) > 1e-3,
        "naive f32 error {}",
        err(&naive, &p64)
    );
}

#[test]
fn constant_rows_with_bert_eps_are_finite_in_f32_and_f64() {
    let x = dual(&[2, 5], &[0.75; 10], Some((2, &[0.5; 20])));
    let g = Array1::from_elem(5, 2.0);
    let b = Array1::from_elem(5, -1.0);
    let y = layer_norm(&x, g.view(), Some(b.view()), BERT_EPS).unwrap();
    // x̂ = 0, so y = β; ẋ is constant too, so ẋ − mean(ẋ) = 0 and ẏ = 0.
    assert_eq!(flat(y.primal()), vec![-1.0; 10]);
    assert_eq!(tangent_or_zeros(&y, 2), vec![0.0; 20]);
    // A constant row whose f64 sum rounds (6·v·(1/6) ≠ v): still exactly β.
    let v = -0.4378305345675599;
    let xc = dual(&[1, 6], &[v; 6], Some((1, &[0.5; 6])));
    let (g6, b6) = (Array1::from_elem(6, 2.0), Array1::from_elem(6, -1.0));
    let y6 = layer_norm(&xc, g6.view(), Some(b6.view()), BERT_EPS).unwrap();
    assert_eq!(flat(y6.primal()), vec![-1.0; 6]);
    let y32 = layer_norm(
        &dual_to_f32(&x),
        g.mapv(|v| v as f32).view(),
        None,
        BERT_EPS,
    )
    .unwrap();
    assert!(
        y32.primal()
            .iter()
            .chain(y32.tangent().unwrap())
            .all(|v| v.is_finite())
    );
    // A non-constant direction on a constant row: r = 1e6, large but finite.
    let t: Vec<f64> = (0..10).map(|i| i as f64).collect();
    let x = dual(&[2, 5], &[0.75; 10], Some((1, &t)));
    let y = rms_norm(&x, g.view(), BERT_EPS).unwrap();
    assert!(y.tangent().unwrap().iter().all(|v| v.is_finite()));
    let y = layer_norm(
        &dual_to_f32(&x),
        g.mapv(|v| v as f32).view(),
        None,
        BERT_EPS,
    )
    .unwrap();
    let t = y.tangent().unwrap();
    assert!(t.iter().all(|v| v.is_finite()));
    assert!(t.iter().any(|v| v.abs() > 1e5));
}

#[test]
fn zero_tangent_in_gives_zero_tangent_out() {
    let x = dual(&[2, 3], &[1.0, 2.0, 4.0, -1.0, 0.0, 3.0], None);
    let g = Array1::from(vec![1.0, 0.5, 2.0]);
    let b = Array1::from(vec![0.1, 0.2, 0.3]);
    assert!(
        layer_norm(&x, g.view(), Some(b.view()), 1e-5)
            .unwrap()
            .is_constant()
    );
    assert!(rms_norm(&x, g.view(), 1e-5).unwrap().is_constant());
    let (gd, bd) = (Dual::constant(g.clone()), Dual::constant(b.clone()));
    assert!(
        layer_norm_dual(&x, &gd, Some(&bd), 1e-5)
            .unwrap()
            .is_constant()
    );
    assert!(rms_norm_dual(&x, &gd, 1e-5).unwrap().is_constant());
    assert!(
        layer_norm_reference(&x, g.view(), None, 1e-5)
            .unwrap()
            .is_constant()
    );
    assert!(
        rms_norm_dual_reference(&x, &gd, 1e-5)
            .unwrap()
            .is_constant()
    );
}

#[test]
fn k_one_and_k_thirty_two() {
    let (rows, n) = (3, 4);
    let x: Vec<f64> = (0..rows * n).map(|i| ((i * 7 % 5) as f64) - 2.0).collect();
    let g = Array1::from(vec![1.0, -0.5, 2.0, 0.25]);
    let b = Array1::from(vec![0.0, 1.0, -1.0, 0.5]);
    for k in [1usize, 32] {
        let t: Vec<f64> = (0..k * rows * n)
            .map(|i| ((i * 11 % 13) as f64) / 6.0 - 1.0)
            .collect();
        let xd = dual(&[rows, n], &x, Some((k, &t)));
        let ln = layer_norm(&xd, g.view(), Some(b.view()), 1e-5).unwrap();
        let rms = rms_norm(&xd, g.view(), 1e-6).unwrap();
        for y in [&ln, &rms] {
            assert_eq!(y.k(), Some(k));
            assert_eq!(y.tangent().unwrap().shape(), &[k, rows, n]);
        }
        for kk in 0..k {
            let x1 = dual(&[rows, n], &x, Some((1, direction(&t, rows * n, kk))));
            let ln1 = layer_norm(&x1, g.view(), Some(b.view()), 1e-5).unwrap();
            let rms1 = rms_norm(&x1, g.view(), 1e-6).unwrap();
            assert_eq!(ln.direction(kk).unwrap(), ln1.direction(0).unwrap());
            assert_eq!(rms.direction(kk).unwrap(), rms1.direction(0).unwrap());
        }
    }
}

#[test]
fn empty_rows_and_rank_one_inputs() {
    let g = Array1::from(vec![1.0, 2.0]);
    let x = dual(&[0, 2], &[], Some((2, &[])));
    let y = layer_norm(&x, g.view(), None, 1e-5).unwrap();
    assert_eq!(y.shape(), &[0, 2]);
    assert_eq!(y.tangent().unwrap().shape(), &[2, 0, 2]);
    let x: Dual<f64, Ix1> = fixed(dual(&[2], &[1.0, 3.0], Some((1, &[1.0, 0.0]))));
    let y = rms_norm(&x, g.view(), 0.0).unwrap();
    assert_eq!(y.shape(), &[2]);
    assert_eq!(y.tangent().unwrap().shape(), &[1, 2]);
}

/// γ and β may be strided views (a column of a matrix); the result equals the contiguous run.
#[test]
fn strided_parameter_views() {
    let x = dual(
        &[2, 3],
        &[0.5, -1.0, 2.0, 0.0, 1.5, -0.5],
        Some((2, &[0.25; 12])),
    );
    let params = ndarray::arr2(&[[1.0, 0.1], [-2.0, 0.2], [0.5, 0.3]]); // columns: γ, β
    let (g, b) = (params.column(0), params.column(1));
    let (gc, bc) = (g.to_owned(), b.to_owned());
    assert_eq!(
        layer_norm(&x, g, Some(b), 1e-5).unwrap(),
        layer_norm(&x, gc.view(), Some(bc.view()), 1e-5).unwrap()
    );
    assert_eq!(
        rms_norm(&x, g, 1e-5).unwrap(),
        rms_norm(&x, gc.view(), 1e-5).unwrap()
    );
}

#[test]
fn bad_arguments_give_typed_errors() {
    let x = dual(&[2, 3], &[0.5; 6], Some((2, &[0.0; 12])));
    let g3 = Array1::from(vec![1.0; 3]);
    let g4 = Array1::from(vec![1.0; 4]);
    for eps in [-1e-5, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(matches!(
            layer_norm(&x, g3.view(), None, eps),
            Err(Error::InvalidArgument {
                op: "layer_norm",
                ..
            })
        ));
        assert!(matches!(
            rms_norm(&x, g3.view(), eps),
            Err(Error::InvalidArgument { op: "rms_norm", .. })
        ));
        assert!(matches!(
            layer_norm_reference(&x, g3.view(), None, eps),
            Err(Error::InvalidArgument { .. })
        ));
    }
    assert!(matches!(
        layer_norm(&x, g4.view(), None, 1e-5),
        Err(Error::ShapeMismatch {
            op: "layer_norm",
            ..
        })
    ));
    assert!(matches!(
        layer_norm(&x, g3.view(), Some(g4.view()), 1e-5),
        Err(Error::ShapeMismatch {
            op: "layer_norm",
            ..
        })
    ));
    assert!(matches!(
        rms_norm(&x, g4.view(), 1e-5),
        Err(Error::ShapeMismatch { op: "rms_norm", .. })
    ));
    let scalar = dual(&[], &[1.0], None);
    let g1 = Array1::from(vec![1.0]);
    assert!(matches!(
        layer_norm(&scalar, g1.view(), None, 1e-5),
        Err(Error::ShapeMismatch { .. })
    ));
    // K mismatch: x carries 2 directions, γ (or β) 3.
    let g_k3: Dual<f64, Ix1> = fixed(dual(&[3], &[1.0; 3], Some((3, &[0.0; 9]))));
    let b_k2: Dual<f64, Ix1> = fixed(dual(&[3], &[0.0; 3], Some((2, &[0.0; 6]))));
    let g_k2: Dual<f64, Ix1> = fixed(dual(&[3], &[1.0; 3], Some((2, &[0.0; 6]))));
    assert!(matches!(
        layer_norm_dual(&x, &g_k3, None, 1e-5),
        Err(Error::TangentCountMismatch {
            op: "layer_norm_dual",
            lhs: 2,
            rhs: 3
        })
    ));
    assert!(matches!(
        rms_norm_dual(&x, &g_k3, 1e-5),
        Err(Error::TangentCountMismatch {
            op: "rms_norm_dual",
            lhs: 2,
            rhs: 3
        })
    ));
    let xc = dual(&[2, 3], &[0.5; 6], None);
    assert!(matches!(
        layer_norm_dual(&xc, &g_k3, Some(&b_k2), 1e-5),
        Err(Error::TangentCountMismatch { lhs: 3, rhs: 2, .. })
    ));
    assert!(layer_norm_dual(&x, &g_k2, Some(&b_k2), 1e-5).is_ok());
    assert!(matches!(
        layer_norm_dual_reference(&x, &g_k3, None, 1e-5),
        Err(Error::TangentCountMismatch { .. })
    ));
}

/// Large inputs are split across threads by rows: every row equals the same row normalised on
/// its own, bitwise, in f32 and f64, with and without tangents.
#[test]
fn threaded_rows_equal_single_rows_bitwise() {
    let (rows, n, k) = (700, 384, 2); // 268 800 primal elements: more than one thread's share
    let xs: Vec<f64> = (0..rows * n)
        .map(|i| ((i * 7919 % 1000) as f64 / 250.0 - 2.0) * (1.0 + (i / n) as f64 * 1e-3))
        .collect();
    let ts: Vec<f64> = (0..k * rows * n)
        .map(|i| (i * 104_729 % 997) as f64 / 500.0 - 1.0)
        .collect();
    let g = Array1::from_shape_fn(n, |i| 1.0 + i as f64 / n as f64);
    let b = Array1::from_shape_fn(n, |i| i as f64 / (2 * n) as f64);
    let whole: Dual<f64, ndarray::Ix2> = fixed(dual(&[rows, n], &xs, Some((k, &ts))));
    let row = |r: usize| -> Dual<f64, ndarray::Ix2> {
        let t: Vec<f64> = (0..k)
            .flat_map(|kk| ts[(kk * rows + r) * n..(kk * rows + r + 1) * n].to_vec())
            .collect();
        fixed(dual(&[1, n], &xs[r * n..(r + 1) * n], Some((k, &t))))
    };
    for tangent in [false, true] {
        let whole = if tangent {
            whole.clone()
        } else {
            Dual::constant(whole.primal().clone())
        };
        let y = layer_norm(&whole, g.view(), Some(b.view()), BERT_EPS).unwrap();
        let y32 = rms_norm(&dual_to_f32(&whole), g.mapv(|v| v as f32).view(), 1e-6).unwrap();
        for r in [0, 1, rows / 2, rows - 1] {
            let one = if tangent {
                row(r)
            } else {
                Dual::constant(row(r).primal().clone())
            };
            let yr = layer_norm(&one, g.view(), Some(b.view()), BERT_EPS).unwrap();
            assert_eq!(y.primal().row(r), yr.primal().row(0), "row {r}");
            let yr32 = rms_norm(&dual_to_f32(&one), g.mapv(|v| v as f32).view(), 1e-6).unwrap();
            assert_eq!(y32.primal().row(r), yr32.primal().row(0), "f32 row {r}");
            if tangent {
                for kk in 0..k {
                    let (t, tr) = (y.tangent().unwrap(), yr.tangent().unwrap());
                    assert_eq!(
                        t.slice(ndarray::s![kk, r, ..]),
                        tr.slice(ndarray::s![kk, 0, ..])
                    );
                    let (t, tr) = (y32.tangent().unwrap(), yr32.tangent().unwrap());
                    assert_eq!(
                        t.slice(ndarray::s![kk, r, ..]),
                        tr.slice(ndarray::s![kk, 0, ..])
                    );
                }
            }
        }
    }
}
