//! Linear, dual-weight linear and dual matmul: finite differences, linearity, K stacking,
//! primal equality, symbolic zeros, and the naive reference twins.

mod common;

use common::*;
use ndarray::{ArrayView1, ArrayView2, Ix1, Ix2, IxDyn};
use proptest::prelude::*;
use spry::kernels::{
    linear, linear_dual, linear_dual_reference, linear_reference, matmul, matmul_reference,
};
use spry::{Dual, Error};

/// Random case: x `[rows, in]`, w `[out, in]`, b `[out]`, K directions for each.
#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    inp: usize,
    out: usize,
    k: usize,
    theta: Vec<f64>,
    dirs: Vec<f64>,
}

impl Case {
    fn sizes(&self) -> (usize, usize, usize) {
        (self.rows * self.inp, self.out * self.inp, self.out)
    }
    fn n_params(&self) -> usize {
        let (a, b, c) = self.sizes();
        a + b + c
    }
    /// Splits a flat parameter vector into (x, w, b).
    fn split<'a>(&self, v: &'a [f64]) -> (&'a [f64], &'a [f64], &'a [f64]) {
        let (a, b, _) = self.sizes();
        (&v[..a], &v[a..a + b], &v[a + b..])
    }
    /// The primal output for parameters `theta`.
    fn f(&self, theta: &[f64]) -> Vec<f64> {
        let (x, w, b) = self.split(theta);
        let x = dual(&[self.rows, self.inp], x, None);
        let w = arr(&[self.out, self.inp], w)
            .into_dimensionality::<Ix2>()
            .unwrap();
        let b = arr(&[self.out], b).into_dimensionality::<Ix1>().unwrap();
        flat(linear(&x, w.view(), Some(b.view())).unwrap().primal())
    }
    /// Dual inputs carrying direction block `dirs` (K directions of `n_params` each).
    fn duals(&self, k: usize, dirs: &[f64]) -> (Dual<f64, IxDyn>, Dual<f64, Ix2>, Dual<f64, Ix1>) {
        let (x, w, b) = self.split(&self.theta);
        let n = self.n_params();
        let pick = |part: usize| -> Vec<f64> {
            (0..k)
                .flat_map(|kk| {
                    let d = &dirs[kk * n..(kk + 1) * n];
                    let (dx, dw, db) = self.split(d);
                    [dx, dw, db][part].to_vec()
                })
                .collect()
        };
        (
            dual(&[self.rows, self.inp], x, Some((k, &pick(0)))),
            fixed(dual(&[self.out, self.inp], w, Some((k, &pick(1))))),
            fixed(dual(&[self.out], b, Some((k, &pick(2))))),
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..5, 1usize..7, 1usize..6, 1usize..4).prop_flat_map(|(rows, inp, out, k)| {
        let n = rows * inp + out * inp + out;
        (values(n), values(k * n)).prop_map(move |(theta, dirs)| Case {
            rows,
            inp,
            out,
            k,
            theta,
            dirs,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn linear_dual_matches_finite_differences(c in case()) {
        let (x, w, b) = c.duals(c.k, &c.dirs);
        let y = linear_dual(&x, &w, Some(&b)).unwrap();
        let n_out = c.rows * c.out;
        let n = c.n_params();
        for kk in 0..c.k {
            let fd = fd_jvp(|t| c.f(t), &c.theta, direction(&c.dirs, n, kk));
            assert_close(direction(&tangent_or_zeros(&y, c.k), n_out, kk), &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    #[test]
    fn linear_dual_is_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, bcoef in -2.0f64..2.0) {
        let n = c.n_params();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix: Vec<f64> = v1.iter().zip(&v2).map(|(p, q)| a * p + bcoef * q).collect();
        let run = |d: &[f64]| {
            let (x, w, b) = c.duals(1, d);
            tangent_or_zeros(&linear_dual(&x, &w, Some(&b)).unwrap(), 1)
        };
        let (t1, t2, tm) = (run(v1), run(&v2), run(&mix));
        let expect: Vec<f64> = t1.iter().zip(&t2).map(|(p, q)| a * p + bcoef * q).collect();
        assert_close(&tm, &expect, EXACT_TOL, "linearity")?;
    }

    #[test]
    fn linear_dual_k_stacked_equals_k_single_runs(c in case()) {
        let n = c.n_params();
        let (x, w, b) = c.duals(c.k, &c.dirs);
        let stacked = tangent_or_zeros(&linear_dual(&x, &w, Some(&b)).unwrap(), c.k);
        let n_out = c.rows * c.out;
        for kk in 0..c.k {
            let (x1, w1, b1) = c.duals(1, direction(&c.dirs, n, kk));
            let single = tangent_or_zeros(&linear_dual(&x1, &w1, Some(&b1)).unwrap(), 1);
            assert_close(direction(&stacked, n_out, kk), &single, EXACT_TOL, "stacked vs single")?;
        }
    }

    #[test]
    fn linear_dual_primal_equals_plain_forward(c in case()) {
        let (x, w, b) = c.duals(c.k, &c.dirs);
        let y = linear_dual(&x, &w, Some(&b)).unwrap();
        prop_assert_eq!(flat(y.primal()), c.f(&c.theta));
    }

    #[test]
    fn linear_frozen_matches_reference_and_fd(c in case()) {
        let (x, w, b) = c.duals(c.k, &c.dirs);
        let fast = linear(&x, w.primal().view(), Some(b.primal().view())).unwrap();
        let slow = linear_reference(&x, w.primal().view(), Some(b.primal().view())).unwrap();
        assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
        assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
        // Frozen W and b: the finite difference moves x only.
        let n = c.n_params();
        let n_x = c.rows * c.inp;
        let n_out = c.rows * c.out;
        for kk in 0..c.k {
            let mut v = direction(&c.dirs, n, kk).to_vec();
            v[n_x..].iter_mut().for_each(|e| *e = 0.0);
            let fd = fd_jvp(|t| c.f(t), &c.theta, &v);
            assert_close(direction(&tangent_or_zeros(&fast, c.k), n_out, kk), &fd, FD_TOL, "frozen jvp vs fd")?;
        }
    }

    #[test]
    fn linear_dual_matches_reference(c in case()) {
        let (x, w, b) = c.duals(c.k, &c.dirs);
        let fast = linear_dual(&x, &w, Some(&b)).unwrap();
        let slow = linear_dual_reference(&x, &w, Some(&b)).unwrap();
        assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
        assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
    }

    #[test]
    fn matmul_matches_reference_and_fd(m in 1usize..5, inner in 1usize..6, n in 1usize..5, k in 1usize..4, seed in values(400)) {
        let (na, nb) = (m * inner, inner * n);
        let take = |off: usize, len: usize| -> Vec<f64> { (0..len).map(|i| seed[(off + i) % seed.len()] * (1.0 + 0.01 * i as f64)).collect() };
        let (pa, pb) = (take(0, na), take(7, nb));
        let (ta, tb) = (take(13, k * na), take(29, k * nb));
        let a: Dual<f64, Ix2> = fixed(dual(&[m, inner], &pa, Some((k, &ta))));
        let b: Dual<f64, Ix2> = fixed(dual(&[inner, n], &pb, Some((k, &tb))));
        let fast = matmul(&a, &b).unwrap();
        let slow = matmul_reference(&a, &b).unwrap();
        assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
        assert_close(&tangent_or_zeros(&fast, k), &tangent_or_zeros(&slow, k), EXACT_TOL, "tangent")?;
        let f = |t: &[f64]| {
            let a: Dual<f64, Ix2> = fixed(dual(&[m, inner], &t[..na], None));
            let b: Dual<f64, Ix2> = fixed(dual(&[inner, n], &t[na..], None));
            flat(matmul(&a, &b).unwrap().primal())
        };
        let theta: Vec<f64> = pa.iter().chain(&pb).copied().collect();
        for kk in 0..k {
            let v: Vec<f64> = direction(&ta, na, kk).iter().chain(direction(&tb, nb, kk)).copied().collect();
            let fd = fd_jvp(f, &theta, &v);
            assert_close(direction(&tangent_or_zeros(&fast, k), m * n, kk), &fd, FD_TOL, "matmul jvp vs fd")?;
        }
    }
}

#[test]
fn zero_tangent_in_gives_zero_tangent_out() {
    let x: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], None));
    let w = arr(&[2, 3], &[0.5; 6])
        .into_dimensionality::<Ix2>()
        .unwrap();
    let y = linear(&x, w.view(), None).unwrap();
    assert!(y.is_constant());
    let wd = Dual::constant(w.clone());
    assert!(linear_dual(&x, &wd, None).unwrap().is_constant());
    assert!(
        matmul(&x, &Dual::constant(w.t().to_owned()))
            .unwrap()
            .is_constant()
    );
}

#[test]
fn k_one_and_k_thirty_two() {
    for k in [1usize, 32] {
        let x: Dual<f64, Ix2> = fixed(dual(&[3, 4], &[0.3; 12], Some((k, &vec![0.7; k * 12]))));
        let w = arr(&[5, 4], &[0.2; 20])
            .into_dimensionality::<Ix2>()
            .unwrap();
        let y = linear(&x, w.view(), None).unwrap();
        assert_eq!(y.k(), Some(k));
        assert_eq!(y.tangent().unwrap().shape(), &[k, 3, 5]);
        for v in y.tangent().unwrap() {
            assert!((v - 0.7 * 0.2 * 4.0).abs() < 1e-12);
        }
    }
}

#[test]
fn shape_and_k_errors_are_typed() {
    let x: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], Some((2, &[0.0; 12]))));
    let w = arr(&[4, 5], &[0.0; 20])
        .into_dimensionality::<Ix2>()
        .unwrap();
    assert!(matches!(
        linear(&x, w.view(), None),
        Err(Error::ShapeMismatch { op: "linear", .. })
    ));
    let w3 = arr(&[4, 3], &[0.0; 12])
        .into_dimensionality::<Ix2>()
        .unwrap();
    let b5 = arr(&[5], &[0.0; 5]).into_dimensionality::<Ix1>().unwrap();
    let b5v: ArrayView1<f64> = b5.view();
    assert!(matches!(
        linear(&x, w3.view(), Some(b5v)),
        Err(Error::ShapeMismatch { .. })
    ));
    let wd: Dual<f64, Ix2> = fixed(dual(&[4, 3], &[0.0; 12], Some((3, &[0.0; 36]))));
    assert!(matches!(
        linear_dual(&x, &wd, None),
        Err(Error::TangentCountMismatch { lhs: 2, rhs: 3, .. })
    ));
    let _: ArrayView2<f64> = w.view();
}
