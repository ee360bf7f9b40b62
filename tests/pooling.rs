//! Mean pooling over valid tokens and first-token pooling: finite differences, linearity, K
//! stacking, primal equality, symbolic zeros, empty sequences, the reference twins, typed errors
//! and f32.

mod common;

use common::*;
use ndarray::{Array2, Ix2, Ix3};
use proptest::prelude::*;
use spry::kernels::{first_token_pool, first_token_pool_reference, mean_pool, mean_pool_reference};
use spry::{Dual, Error};

/// Random case: x `[b, t, h]`, a padding mask `[b, t]`, K directions over x.
#[derive(Debug, Clone)]
struct Case {
    b: usize,
    t: usize,
    h: usize,
    k: usize,
    x: Vec<f64>,
    mask: Vec<bool>,
    dirs: Vec<f64>,
}

/// Which pooling a test runs.
#[derive(Debug, Clone, Copy)]
enum Pool {
    Mean,
    First,
}

impl Case {
    fn n_x(&self) -> usize {
        self.b * self.t * self.h
    }
    fn n_out(&self) -> usize {
        self.b * self.h
    }
    fn mask(&self) -> Array2<bool> {
        Array2::from_shape_vec((self.b, self.t), self.mask.clone()).unwrap()
    }
    fn x(&self, k: usize, dirs: Option<&[f64]>) -> Dual<f64, Ix3> {
        fixed(dual(
            &[self.b, self.t, self.h],
            &self.x,
            dirs.map(|d| (k, d)),
        ))
    }
    fn pool(&self, pool: Pool, x: &Dual<f64, Ix3>) -> Dual<f64, Ix2> {
        match pool {
            Pool::Mean => mean_pool(x, self.mask().view()).unwrap(),
            Pool::First => first_token_pool(x).unwrap(),
        }
    }
    fn reference(&self, pool: Pool, x: &Dual<f64, Ix3>) -> Dual<f64, Ix2> {
        match pool {
            Pool::Mean => mean_pool_reference(x, self.mask().view()).unwrap(),
            Pool::First => first_token_pool_reference(x).unwrap(),
        }
    }
    fn f(&self, pool: Pool, x: &[f64]) -> Vec<f64> {
        let c = Case {
            x: x.to_vec(),
            ..self.clone()
        };
        flat(self.pool(pool, &c.x(0, None)).primal())
    }
    fn run(&self, pool: Pool, k: usize, dirs: &[f64]) -> Dual<f64, Ix2> {
        self.pool(pool, &self.x(k, Some(dirs)))
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..4, 1usize..5, 1usize..5, 1usize..4).prop_flat_map(|(b, t, h, k)| {
        (
            values(b * t * h),
            prop::collection::vec(prop::bool::weighted(0.6), b * t),
            values(k * b * t * h),
        )
            .prop_map(move |(x, mask, dirs)| Case {
                b,
                t,
                h,
                k,
                x,
                mask,
                dirs,
            })
    })
}

fn pool() -> impl Strategy<Value = Pool> {
    prop_oneof![Just(Pool::Mean), Just(Pool::First)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn pooling_matches_finite_differences(c in case(), p in pool()) {
        let y = c.run(p, c.k, &c.dirs);
        for kk in 0..c.k {
            let fd = fd_jvp(|x| c.f(p, x), &c.x, direction(&c.dirs, c.n_x(), kk));
            assert_close(direction(&tangent_or_zeros(&y, c.k), c.n_out(), kk), &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    #[test]
    fn pooling_is_linear_in_the_tangent(c in case(), p in pool(), s in -2.0f64..2.0, t in -2.0f64..2.0) {
        let n = c.n_x();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix: Vec<f64> = v1.iter().zip(&v2).map(|(p, q)| s * p + t * q).collect();
        let run = |d: &[f64]| tangent_or_zeros(&c.run(p, 1, d), 1);
        let (t1, t2, tm) = (run(v1), run(&v2), run(&mix));
        let expect: Vec<f64> = t1.iter().zip(&t2).map(|(p, q)| s * p + t * q).collect();
        assert_close(&tm, &expect, EXACT_TOL, "linearity")?;
    }

    #[test]
    fn pooling_k_stacked_equals_k_single_runs(c in case(), p in pool()) {
        let stacked = tangent_or_zeros(&c.run(p, c.k, &c.dirs), c.k);
        for kk in 0..c.k {
            let single = tangent_or_zeros(&c.run(p, 1, direction(&c.dirs, c.n_x(), kk)), 1);
            prop_assert_eq!(direction(&stacked, c.n_out(), kk), &single[..]);
        }
    }

    #[test]
    fn pooling_primal_equals_plain_forward(c in case(), p in pool()) {
        let y = c.run(p, c.k, &c.dirs);
        let plain = c.pool(p, &c.x(0, None));
        prop_assert!(plain.is_constant());
        prop_assert_eq!(y.primal(), plain.primal());
    }

    #[test]
    fn pooling_matches_reference(c in case(), p in pool()) {
        for x in [c.x(c.k, Some(&c.dirs)), c.x(0, None)] {
            let fast = c.pool(p, &x);
            let slow = c.reference(p, &x);
            prop_assert_eq!(fast.is_constant(), slow.is_constant());
            assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
            assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
        }
    }

    /// A sequence without a valid token pools to a zero row with a zero tangent row.
    #[test]
    fn mean_pool_of_a_fully_masked_sequence_is_zero(c in case(), row in 0usize..3) {
        let mut c = c;
        let row = row % c.b;
        c.mask[row * c.t..(row + 1) * c.t].iter_mut().for_each(|m| *m = false);
        let y = c.run(Pool::Mean, c.k, &c.dirs);
        prop_assert!(y.primal().row(row).iter().all(|&v| v == 0.0));
        let t = y.tangent().unwrap();
        for kk in 0..c.k {
            prop_assert!(t.index_axis(ndarray::Axis(0), kk).row(row).iter().all(|&v| v == 0.0));
        }
    }

    #[test]
    fn pooling_f32_matches_f64(c in case(), p in pool()) {
        let x = c.x(c.k, Some(&c.dirs));
        let y64 = c.pool(p, &x);
        let x32 = dual_to_f32(&x);
        let y32 = match p {
            Pool::Mean => mean_pool(&x32, c.mask().view()).unwrap(),
            Pool::First => first_token_pool(&x32).unwrap(),
        };
        assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-6, "f32 primal")?;
        assert_close(&flat_f32(y32.tangent().unwrap()), &tangent_or_zeros(&y64, c.k), 1e-6, "f32 tangent")?;
    }
}

#[test]
fn mean_pool_worked_example() {
    // b = 0: tokens 0 and 2 valid; b = 1: token 1 valid. h = 1.
    let x: Dual<f64, Ix3> = fixed(dual(
        &[2, 3, 1],
        &[1.0, 100.0, 3.0, 7.0, 5.0, 9.0],
        Some((1, &[10.0, 1000.0, 30.0, 70.0, 50.0, 90.0])),
    ));
    let mask = ndarray::arr2(&[[true, false, true], [false, true, false]]);
    let y = mean_pool(&x, mask.view()).unwrap();
    assert_eq!(flat(y.primal()), vec![2.0, 5.0]);
    assert_eq!(tangent_or_zeros(&y, 1), vec![20.0, 50.0]);
    let y = first_token_pool(&x).unwrap();
    assert_eq!(flat(y.primal()), vec![1.0, 7.0]);
    assert_eq!(tangent_or_zeros(&y, 1), vec![10.0, 70.0]);
}

#[test]
fn k_one_and_k_thirty_two() {
    for k in [1usize, 32] {
        let t: Vec<f64> = (0..k * 2 * 3 * 2).map(|i| i as f64).collect();
        let x: Dual<f64, Ix3> = fixed(dual(&[2, 3, 2], &[0.5; 12], Some((k, &t))));
        let mask = Array2::from_elem((2, 3), true);
        let y = mean_pool(&x, mask.view()).unwrap();
        assert_eq!(y.tangent().unwrap().shape(), &[k, 2, 2]);
        let y1 = first_token_pool(&x).unwrap();
        assert_eq!(y1.tangent().unwrap().shape(), &[k, 2, 2]);
        for kk in 0..k {
            for b in 0..2 {
                for j in 0..2 {
                    let at = |tt: usize| t[((kk * 2 + b) * 3 + tt) * 2 + j];
                    let mean = (at(0) + at(1) + at(2)) / 3.0;
                    assert!((y.tangent().unwrap()[[kk, b, j]] - mean).abs() < 1e-12);
                    assert_eq!(y1.tangent().unwrap()[[kk, b, j]], at(0));
                }
            }
        }
    }
}

#[test]
fn errors_are_typed() {
    let x: Dual<f64, Ix3> = fixed(dual(&[2, 3, 4], &[0.0; 24], None));
    let mask = Array2::from_elem((3, 2), true);
    assert!(matches!(
        mean_pool(&x, mask.view()),
        Err(Error::ShapeMismatch {
            op: "mean_pool",
            ..
        })
    ));
    assert!(mean_pool_reference(&x, mask.view()).is_err());
    let empty: Dual<f64, Ix3> = Dual::constant(ndarray::Array3::zeros((2, 0, 4)));
    assert!(matches!(
        first_token_pool(&empty),
        Err(Error::ShapeMismatch {
            op: "first_token_pool",
            ..
        })
    ));
    assert!(first_token_pool_reference(&empty).is_err());
    // T = 0 is fine for mean pooling: every sequence is empty, so every row is zero.
    let y = mean_pool(&empty, Array2::from_elem((2, 0), true).view()).unwrap();
    assert_eq!(y.primal(), &Array2::<f64>::zeros((2, 4)));
}
