//! Mean cross-entropy with an ignore index: jvp and logit gradient vs finite differences of the
//! loss, jvp_k = ⟨grad, ż_k⟩, linearity, K stacking, primal equality, symbolic zeros, ignored
//! rows, large logits, the reference twins, typed errors and f32.

mod common;

use common::*;
use ndarray::{Array2, Ix2};
use proptest::prelude::*;
use spry::kernels::{
    CrossEntropy, cross_entropy, cross_entropy_logit_grad, cross_entropy_logit_grad_reference,
    cross_entropy_reference, cross_entropy_with_grad,
};
use spry::{Dual, Error};

const IGNORE: i64 = -100;

/// Random case: logits `[n, c]`, targets in `[0, c)` or the ignore index (at least one valid),
/// K directions over the logits.
#[derive(Debug, Clone)]
struct Case {
    n: usize,
    c: usize,
    k: usize,
    z: Vec<f64>,
    targets: Vec<i64>,
    dirs: Vec<f64>,
}

impl Case {
    fn len(&self) -> usize {
        self.n * self.c
    }
    fn logits(&self, k: usize, dirs: Option<&[f64]>) -> Dual<f64, Ix2> {
        fixed(dual(&[self.n, self.c], &self.z, dirs.map(|d| (k, d))))
    }
    fn loss(&self, z: &[f64]) -> f64 {
        let l: Dual<f64, Ix2> = fixed(dual(&[self.n, self.c], z, None));
        cross_entropy(&l, &self.targets, IGNORE).unwrap().loss
    }
    fn run(&self, k: usize, dirs: &[f64]) -> CrossEntropy<f64> {
        cross_entropy(&self.logits(k, Some(dirs)), &self.targets, IGNORE).unwrap()
    }
    fn grad(&self) -> Array2<f64> {
        let z: Array2<f64> = arr(&[self.n, self.c], &self.z)
            .into_dimensionality()
            .unwrap();
        cross_entropy_logit_grad(z.view(), &self.targets, IGNORE).unwrap()
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..5, 1usize..6, 1usize..4).prop_flat_map(|(n, c, k)| {
        (
            prop::collection::vec(-8.0f64..8.0, n * c),
            prop::collection::vec(prop_oneof![3 => 0..c as i64, 1 => Just(IGNORE)], n),
            0..n,
            values(k * n * c),
        )
            .prop_map(move |(z, mut targets, keep, dirs)| {
                if targets.iter().all(|&t| t == IGNORE) {
                    targets[keep] = (keep % c) as i64;
                }
                Case {
                    n,
                    c,
                    k,
                    z,
                    targets,
                    dirs,
                }
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn jvp_matches_finite_differences(c in case()) {
        let ce = c.run(c.k, &c.dirs);
        let jvp = ce.jvp.unwrap();
        prop_assert_eq!(jvp.len(), c.k);
        for kk in 0..c.k {
            let fd = fd_jvp(|z| vec![c.loss(z)], &c.z, direction(&c.dirs, c.len(), kk));
            assert_close(&[jvp[kk]], &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    /// The logit gradient against central differences of the loss along each coordinate.
    #[test]
    fn logit_grad_matches_finite_differences(c in case()) {
        let g = c.grad();
        for i in 0..c.len() {
            let mut e = vec![0.0; c.len()];
            e[i] = 1.0;
            let fd = fd_jvp(|z| vec![c.loss(z)], &c.z, &e);
            assert_close(&[g.as_slice().unwrap()[i]], &fd, FD_TOL, "grad vs fd")?;
        }
        // ignored rows have a zero gradient
        for (i, &t) in c.targets.iter().enumerate() {
            if t == IGNORE {
                prop_assert!(g.row(i).iter().all(|&v| v == 0.0));
            }
        }
    }

    #[test]
    fn jvp_equals_grad_dot_tangent(c in case()) {
        let g = c.grad();
        let jvp = c.run(c.k, &c.dirs).jvp.unwrap();
        for kk in 0..c.k {
            let d = direction(&c.dirs, c.len(), kk);
            let dot: f64 = g.iter().zip(d).map(|(a, b)| a * b).sum();
            assert_close(&[jvp[kk]], &[dot], EXACT_TOL, "jvp vs <grad, v>")?;
        }
    }

    #[test]
    fn jvp_is_linear_in_the_tangent(c in case(), s in -2.0f64..2.0, t in -2.0f64..2.0) {
        let n = c.len();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix: Vec<f64> = v1.iter().zip(&v2).map(|(p, q)| s * p + t * q).collect();
        let run = |d: &[f64]| c.run(1, d).jvp.unwrap()[0];
        assert_close(&[run(&mix)], &[s * run(v1) + t * run(&v2)], EXACT_TOL, "linearity")?;
    }

    #[test]
    fn k_stacked_equals_k_single_runs(c in case()) {
        let stacked = c.run(c.k, &c.dirs).jvp.unwrap();
        for kk in 0..c.k {
            let single = c.run(1, direction(&c.dirs, c.len(), kk)).jvp.unwrap();
            prop_assert_eq!(stacked[kk], single[0]);
        }
    }

    /// The loss of the dual pass is bitwise the loss of the plain pass; a constant has no jvp.
    #[test]
    fn loss_equals_plain_forward(c in case()) {
        let ce = c.run(c.k, &c.dirs);
        let plain = cross_entropy(&c.logits(0, None), &c.targets, IGNORE).unwrap();
        prop_assert!(plain.jvp.is_none());
        prop_assert_eq!(ce.loss, plain.loss);
        prop_assert_eq!(ce.loss, c.loss(&c.z));
        prop_assert_eq!(ce.n_valid, c.targets.iter().filter(|&&t| t != IGNORE).count());
    }

    /// The combined routine is bitwise the two separate calls.
    #[test]
    fn with_grad_equals_separate_calls(c in case()) {
        let (ce, g) = cross_entropy_with_grad(&c.logits(c.k, Some(&c.dirs)), &c.targets, IGNORE).unwrap();
        prop_assert_eq!(&ce, &c.run(c.k, &c.dirs));
        prop_assert_eq!(&g, &c.grad());
    }

    #[test]
    fn matches_reference(c in case()) {
        let l = c.logits(c.k, Some(&c.dirs));
        let fast = c.run(c.k, &c.dirs);
        let slow = cross_entropy_reference(&l, &c.targets, IGNORE).unwrap();
        prop_assert_eq!(fast.n_valid, slow.n_valid);
        assert_close(&[fast.loss], &[slow.loss], EXACT_TOL, "loss")?;
        assert_close(&fast.jvp.unwrap().to_vec(), &slow.jvp.unwrap().to_vec(), EXACT_TOL, "jvp")?;
        let g_slow = cross_entropy_logit_grad_reference(l.primal().view(), &c.targets, IGNORE).unwrap();
        assert_close(&flat(&c.grad()), &flat(&g_slow), EXACT_TOL, "grad")?;
    }

    /// Ignored rows do not matter: changing their logits or tangents changes nothing.
    #[test]
    fn ignored_rows_do_not_matter(c in case(), shift in -50.0f64..50.0) {
        let mut c2 = c.clone();
        for (i, &t) in c.targets.iter().enumerate() {
            if t == IGNORE {
                for j in 0..c.c {
                    c2.z[i * c.c + j] += shift * (j as f64 + 1.0);
                    for kk in 0..c.k {
                        c2.dirs[kk * c.len() + i * c.c + j] += shift;
                    }
                }
            }
        }
        prop_assert_eq!(c.run(c.k, &c.dirs), c2.run(c.k, &c2.dirs));
    }

    /// Shift invariance of the softmax: adding a constant to a row leaves the loss unchanged and
    /// a tangent `c·1` on a row contributes nothing.
    #[test]
    fn constant_row_tangent_has_zero_jvp(c in case(), s in -3.0f64..3.0) {
        let dirs = vec![s; c.len()];
        let jvp = c.run(1, &dirs).jvp.unwrap()[0];
        prop_assert!(jvp.abs() <= 1e-12, "{}", jvp);
    }

    #[test]
    fn f32_matches_f64(c in case()) {
        let l = c.logits(c.k, Some(&c.dirs));
        let (ce64, g64) = cross_entropy_with_grad(&l, &c.targets, IGNORE).unwrap();
        let (ce32, g32) = cross_entropy_with_grad(&dual_to_f32(&l), &c.targets, IGNORE).unwrap();
        assert_close(&[f64::from(ce32.loss)], &[ce64.loss], 1e-5, "f32 loss")?;
        let j32: Vec<f64> = ce32.jvp.unwrap().iter().map(|&v| f64::from(v)).collect();
        assert_close(&j32, &ce64.jvp.unwrap().to_vec(), 1e-5, "f32 jvp")?;
        assert_close(&flat_f32(&g32), &flat(&g64), 1e-5, "f32 grad")?;
    }
}

#[test]
fn large_logits_stay_finite_and_exact() {
    // Row 0: [1e4, −1e4, 0], target 1 → ℓ = 2e4 exactly (the other terms underflow to 0).
    // Row 1: [1e4, 1e4 − 1, −1e4], target 1 → ℓ = 1 + ln(1 + e⁻¹).
    // Row 2: [−1e4, −1e4, −1e4], target 2 → ℓ = ln 3.
    let z = [1e4, -1e4, 0.0, 1e4, 1e4 - 1.0, -1e4, -1e4, -1e4, -1e4];
    let t = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0];
    let targets = [1, 1, 2];
    let l: Dual<f64, Ix2> = fixed(dual(&[3, 3], &z, Some((1, &t))));
    let (ce, g) = cross_entropy_with_grad(&l, &targets, IGNORE).unwrap();
    let l1 = 1.0 + (1.0 + (-1.0f64).exp()).ln();
    let expect = (2e4 + l1 + 3.0f64.ln()) / 3.0;
    assert!(
        (ce.loss - expect).abs() <= 1e-12 * expect,
        "{} vs {}",
        ce.loss,
        expect
    );
    // ℓ̇: row 0: p = [1, 0, 0] → 1 − 2 = −1; row 1: p₀ = 1/(1+e⁻¹), p₁ = e⁻¹/(1+e⁻¹)
    // → 4p₀ + 5p₁ − 5; row 2: p = ⅓ → (7 + 8 + 9)/3 − 9 = −1.
    let (p0, p1) = (
        1.0 / (1.0 + (-1.0f64).exp()),
        (-1.0f64).exp() / (1.0 + (-1.0f64).exp()),
    );
    let jexp = (-1.0 + (4.0 * p0 + 5.0 * p1 - 5.0) - 1.0) / 3.0;
    let j = ce.jvp.unwrap()[0];
    assert!((j - jexp).abs() <= 1e-12, "{j} vs {jexp}");
    assert!(g.iter().all(|v| v.is_finite()));
    assert!((g[[0, 0]] - 1.0 / 3.0).abs() < 1e-15 && (g[[0, 1]] + 1.0 / 3.0).abs() < 1e-15);
    // f32 too: ±1e4 is representable and the shift keeps exp in range.
    let (ce32, g32) = cross_entropy_with_grad(&dual_to_f32(&l), &targets, IGNORE).unwrap();
    assert!(ce32.loss.is_finite() && ce32.jvp.unwrap()[0].is_finite());
    assert!(g32.iter().all(|v| v.is_finite()));
    assert!((f64::from(ce32.loss) - expect).abs() <= 1e-6 * expect);
}

#[test]
fn k_one_and_k_thirty_two() {
    let z = [0.1, 0.5, -0.3, 2.0, 0.0, -1.0];
    let targets = [2, 0];
    let base: Dual<f64, Ix2> = fixed(dual(&[2, 3], &z, None));
    let g = cross_entropy_logit_grad(base.primal().view(), &targets, IGNORE).unwrap();
    for k in [1usize, 32] {
        let t: Vec<f64> = (0..k * 6).map(|i| ((i * 7) % 11) as f64 - 5.0).collect();
        let l: Dual<f64, Ix2> = fixed(dual(&[2, 3], &z, Some((k, &t))));
        let jvp = cross_entropy(&l, &targets, IGNORE).unwrap().jvp.unwrap();
        assert_eq!(jvp.len(), k);
        for kk in 0..k {
            let dot: f64 = g
                .iter()
                .zip(&t[kk * 6..(kk + 1) * 6])
                .map(|(a, b)| a * b)
                .sum();
            assert!((jvp[kk] - dot).abs() < 1e-12);
        }
    }
}

#[test]
fn errors_are_typed() {
    let l: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], None));
    let z = l.primal().view();
    let invalid = |r: spry::Result<CrossEntropy<f64>>, what: &str| match r {
        Err(Error::InvalidArgument { msg, .. }) => assert!(msg.contains(what), "{msg}"),
        other => panic!("expected InvalidArgument, got {other:?}"),
    };
    // a target ≥ C, a negative target that is not the ignore index
    invalid(cross_entropy(&l, &[0, 3], IGNORE), "target 3 at row 1");
    invalid(cross_entropy(&l, &[-1, 0], IGNORE), "target -1 at row 0");
    invalid(cross_entropy_reference(&l, &[0, 3], IGNORE), "target 3");
    assert!(matches!(
        cross_entropy_logit_grad(z, &[0, 3], IGNORE),
        Err(Error::InvalidArgument {
            op: "cross_entropy_logit_grad",
            ..
        })
    ));
    // all targets ignored: the mean over no target is undefined
    invalid(
        cross_entropy(&l, &[IGNORE, IGNORE], IGNORE),
        "all 2 targets",
    );
    assert!(cross_entropy_logit_grad(z, &[IGNORE, IGNORE], IGNORE).is_err());
    assert!(cross_entropy_with_grad(&l, &[IGNORE, IGNORE], IGNORE).is_err());
    // a custom ignore index inside [0, C) is honoured
    let ce = cross_entropy(&l, &[1, 2], 1).unwrap();
    assert_eq!(ce.n_valid, 1);
    assert!((ce.loss - 3.0f64.ln()).abs() < 1e-15);
    // targets of the wrong length
    assert!(matches!(
        cross_entropy(&l, &[0], IGNORE),
        Err(Error::ShapeMismatch {
            op: "cross_entropy",
            ..
        })
    ));
    assert!(matches!(
        cross_entropy_logit_grad(z, &[0, 1, 2], IGNORE),
        Err(Error::ShapeMismatch { .. })
    ));
}
