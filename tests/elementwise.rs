//! Residual add (`add`, `add_into`): finite differences, every dual/constant combination,
//! linearity, K stacking, symbolic zeros, in-place accumulation, the reference twin, typed errors
//! and f32.

mod common;

use common::*;
use ndarray::{Ix2, Ix3, IxDyn};
use proptest::prelude::*;
use spry::kernels::{add, add_into, add_reference};
use spry::{Dual, Error};

/// Random case: a and b of shape `shape`, K directions over (a, b).
#[derive(Debug, Clone)]
struct Case {
    shape: Vec<usize>,
    k: usize,
    theta: Vec<f64>,
    dirs: Vec<f64>,
}

impl Case {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
    fn f(&self, theta: &[f64]) -> Vec<f64> {
        let (a, b) = theta.split_at(self.len());
        let (a, b) = (dual(&self.shape, a, None), dual(&self.shape, b, None));
        flat(add(&a, &b).unwrap().primal())
    }
    /// Dual operands carrying direction block `dirs`; a flag false makes that operand constant.
    fn duals(
        &self,
        k: usize,
        dirs: &[f64],
        (fa, fb): (bool, bool),
    ) -> (Dual<f64, IxDyn>, Dual<f64, IxDyn>) {
        let n = self.len();
        let (pa, pb) = self.theta.split_at(n);
        let pick = |part: usize| -> Vec<f64> {
            (0..k)
                .flat_map(|kk| dirs[kk * 2 * n + part * n..kk * 2 * n + (part + 1) * n].to_vec())
                .collect()
        };
        let (ta, tb) = (pick(0), pick(1));
        (
            dual(&self.shape, pa, fa.then_some((k, &ta[..]))),
            dual(&self.shape, pb, fb.then_some((k, &tb[..]))),
        )
    }
}

fn case() -> impl Strategy<Value = Case> {
    (prop::collection::vec(1usize..4, 1..4), 1usize..4).prop_flat_map(|(shape, k)| {
        let n: usize = shape.iter().product();
        (values(2 * n), values(k * 2 * n)).prop_map(move |(theta, dirs)| Case {
            shape: shape.clone(),
            k,
            theta,
            dirs,
        })
    })
}

fn flags() -> impl Strategy<Value = (bool, bool)> {
    (any::<bool>(), any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn add_matches_finite_differences(c in case(), fl in flags()) {
        let (a, b) = c.duals(c.k, &c.dirs, fl);
        let y = add(&a, &b).unwrap();
        let n = c.len();
        for kk in 0..c.k {
            let mut v = direction(&c.dirs, 2 * n, kk).to_vec();
            if !fl.0 { v[..n].iter_mut().for_each(|e| *e = 0.0); }
            if !fl.1 { v[n..].iter_mut().for_each(|e| *e = 0.0); }
            let fd = fd_jvp(|t| c.f(t), &c.theta, &v);
            assert_close(direction(&tangent_or_zeros(&y, c.k), n, kk), &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    /// `add_into` is bitwise `add`, and both match the reference twin, for every combination of
    /// dual and constant operands; the tangent is a symbolic zero iff both inputs are.
    #[test]
    fn add_into_equals_add_equals_reference(c in case(), fl in flags()) {
        let (a, b) = c.duals(c.k, &c.dirs, fl);
        let y = add(&a, &b).unwrap();
        let y_into = add_into(a.clone(), &b).unwrap();
        let slow = add_reference(&a, &b).unwrap();
        prop_assert_eq!(&y, &y_into);
        prop_assert_eq!(&y, &slow);
        prop_assert_eq!(y.is_constant(), !fl.0 && !fl.1);
    }

    #[test]
    fn add_is_linear_in_the_tangent(c in case(), s in -2.0f64..2.0, t in -2.0f64..2.0) {
        let n = 2 * c.len();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix: Vec<f64> = v1.iter().zip(&v2).map(|(p, q)| s * p + t * q).collect();
        let run = |d: &[f64]| {
            let (a, b) = c.duals(1, d, (true, true));
            tangent_or_zeros(&add(&a, &b).unwrap(), 1)
        };
        let (t1, t2, tm) = (run(v1), run(&v2), run(&mix));
        let expect: Vec<f64> = t1.iter().zip(&t2).map(|(p, q)| s * p + t * q).collect();
        assert_close(&tm, &expect, EXACT_TOL, "linearity")?;
    }

    #[test]
    fn add_k_stacked_equals_k_single_runs(c in case(), fl in flags()) {
        let n = c.len();
        let (a, b) = c.duals(c.k, &c.dirs, fl);
        let stacked = tangent_or_zeros(&add(&a, &b).unwrap(), c.k);
        for kk in 0..c.k {
            let (a1, b1) = c.duals(1, direction(&c.dirs, 2 * n, kk), fl);
            let single = tangent_or_zeros(&add(&a1, &b1).unwrap(), 1);
            prop_assert_eq!(direction(&stacked, n, kk), &single[..]);
        }
    }

    #[test]
    fn add_primal_equals_plain_forward(c in case(), fl in flags()) {
        let (a, b) = c.duals(c.k, &c.dirs, fl);
        prop_assert_eq!(flat(add(&a, &b).unwrap().primal()), c.f(&c.theta));
        prop_assert_eq!(flat(add_into(a, &b).unwrap().primal()), c.f(&c.theta));
    }

    /// zero + t is a copy of t: bitwise equal, no arithmetic (not even `0 + t`, which turns −0
    /// into +0).
    #[test]
    fn zero_plus_tangent_is_a_copy(c in case()) {
        let (a, b) = c.duals(c.k, &c.dirs, (false, true));
        let y = add(&a, &b).unwrap();
        prop_assert_eq!(y.tangent(), b.tangent());
        let y = add(&b, &a).unwrap();
        prop_assert_eq!(y.tangent(), b.tangent());
        let y = add_into(a, &b).unwrap();
        prop_assert_eq!(y.tangent(), b.tangent());
    }

    #[test]
    fn add_f32_matches_f64(c in case(), fl in flags()) {
        let (a, b) = c.duals(c.k, &c.dirs, fl);
        let y64 = add(&a, &b).unwrap();
        let y32 = add(&dual_to_f32(&a), &dual_to_f32(&b)).unwrap();
        assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-6, "f32 primal")?;
        let t32 = y32.tangent().map_or(vec![0.0; c.k * c.len()], flat_f32);
        assert_close(&t32, &tangent_or_zeros(&y64, c.k), 1e-6, "f32 tangent")?;
    }
}

#[test]
fn negative_zero_tangent_survives_the_copy() {
    let a: Dual<f64, Ix2> = fixed(dual(&[1, 1], &[1.0], None));
    let b: Dual<f64, Ix2> = fixed(dual(&[1, 1], &[2.0], Some((1, &[-0.0]))));
    let y = add(&a, &b).unwrap();
    assert!(y.tangent().unwrap()[[0, 0, 0]].is_sign_negative());
}

#[test]
fn add_into_reuses_the_buffers_of_a() {
    let a: Dual<f64, Ix3> = fixed(dual(&[2, 2, 3], &[1.0; 12], Some((2, &[0.5; 24]))));
    let b: Dual<f64, Ix3> = fixed(dual(&[2, 2, 3], &[2.0; 12], Some((2, &[0.25; 24]))));
    let (pp, tp) = (a.primal().as_ptr(), a.tangent().unwrap().as_ptr());
    let y = add_into(a, &b).unwrap();
    assert_eq!(y.primal().as_ptr(), pp, "primal reallocated");
    assert_eq!(y.tangent().unwrap().as_ptr(), tp, "tangent reallocated");
    assert!(y.primal().iter().all(|&v| v == 3.0));
    assert!(y.tangent().unwrap().iter().all(|&v| v == 0.75));
    // b constant: a's tangent is kept as is
    let a: Dual<f64, Ix3> = fixed(dual(&[2, 2, 3], &[1.0; 12], Some((2, &[0.5; 24]))));
    let tp = a.tangent().unwrap().as_ptr();
    let y = add_into(a, &Dual::constant(b.primal().clone())).unwrap();
    assert_eq!(y.tangent().unwrap().as_ptr(), tp);
}

#[test]
fn zero_plus_zero_is_a_symbolic_zero() {
    let a: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[1.0; 6], None));
    let b: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[2.0; 6], None));
    assert!(add(&a, &b).unwrap().is_constant());
    assert!(add_into(a, &b).unwrap().is_constant());
}

#[test]
fn k_one_and_k_thirty_two() {
    for k in [1usize, 32] {
        let ta: Vec<f64> = (0..k * 6).map(|i| i as f64).collect();
        let tb: Vec<f64> = (0..k * 6).map(|i| 0.5 * i as f64).collect();
        let a: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[1.0; 6], Some((k, &ta))));
        let b: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[2.0; 6], Some((k, &tb))));
        for y in [add(&a, &b).unwrap(), add_into(a.clone(), &b).unwrap()] {
            assert_eq!(y.tangent().unwrap().shape(), &[k, 2, 3]);
            let t: Vec<f64> = y.tangent().unwrap().iter().copied().collect();
            let expect: Vec<f64> = (0..k * 6).map(|i| 1.5 * i as f64).collect();
            assert_eq!(t, expect);
        }
    }
}

#[test]
fn shape_and_k_errors_are_typed() {
    let a: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], Some((2, &[0.0; 12]))));
    let b: Dual<f64, Ix2> = fixed(dual(&[3, 2], &[0.0; 6], None));
    assert!(matches!(
        add(&a, &b),
        Err(Error::ShapeMismatch { op: "add", .. })
    ));
    assert!(matches!(
        add_into(a.clone(), &b),
        Err(Error::ShapeMismatch { op: "add_into", .. })
    ));
    assert!(add_reference(&a, &b).is_err());
    let c: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], Some((3, &[0.0; 18]))));
    assert!(matches!(
        add(&a, &c),
        Err(Error::TangentCountMismatch {
            op: "add",
            lhs: 2,
            rhs: 3
        })
    ));
    assert!(matches!(
        add_into(a, &c),
        Err(Error::TangentCountMismatch {
            op: "add_into",
            lhs: 2,
            rhs: 3
        })
    ));
}
