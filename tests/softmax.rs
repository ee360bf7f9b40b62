//! Softmax and log-softmax: finite differences, linearity, K stacking, primal equality, symbolic
//! zeros, reference twins, shift invariance, Σṗ = 0, large logits, f32, typed errors.

mod common;

use common::*;
use ndarray::{Ix0, Ix1, Ix2, Ix3, IxDyn, array};
use proptest::prelude::*;
use spry::kernels::{log_softmax, log_softmax_reference, softmax, softmax_reference};
use spry::{Dual, Error};

#[derive(Debug, Clone, Copy)]
enum Op {
    Softmax,
    LogSoftmax,
}

const OPS: [Op; 2] = [Op::Softmax, Op::LogSoftmax];

fn run(op: Op, x: &Dual<f64, IxDyn>) -> Dual<f64, IxDyn> {
    match op {
        Op::Softmax => softmax(x).unwrap(),
        Op::LogSoftmax => log_softmax(x).unwrap(),
    }
}

fn run_reference(op: Op, x: &Dual<f64, IxDyn>) -> Dual<f64, IxDyn> {
    match op {
        Op::Softmax => softmax_reference(x).unwrap(),
        Op::LogSoftmax => log_softmax_reference(x).unwrap(),
    }
}

/// Random case: x of shape `shape` (rank 1..=3, last axis C), K directions.
#[derive(Debug, Clone)]
struct Case {
    shape: Vec<usize>,
    k: usize,
    x: Vec<f64>,
    dirs: Vec<f64>,
}

impl Case {
    fn len(&self) -> usize {
        self.shape.iter().product()
    }
    fn c(&self) -> usize {
        *self.shape.last().unwrap()
    }
    fn dual(&self, k: usize, dirs: &[f64]) -> Dual<f64, IxDyn> {
        dual(&self.shape, &self.x, Some((k, dirs)))
    }
    fn f(&self, op: Op, x: &[f64]) -> Vec<f64> {
        flat(run(op, &dual(&self.shape, x, None)).primal())
    }
}

fn case() -> impl Strategy<Value = Case> {
    (prop::collection::vec(1usize..4, 0..3), 1usize..9, 1usize..4).prop_flat_map(|(lead, c, k)| {
        let mut shape = lead;
        shape.push(c);
        let n: usize = shape.iter().product();
        // logits in [-6, 6]: probabilities from ~1e-5 to ~1
        (values(n), values(k * n)).prop_map(move |(x, dirs)| Case {
            shape: shape.clone(),
            k,
            x: x.iter().map(|v| 3.0 * v).collect(),
            dirs,
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn matches_finite_differences(c in case()) {
        let n = c.len();
        for op in OPS {
            let y = run(op, &c.dual(c.k, &c.dirs));
            let t = tangent_or_zeros(&y, c.k);
            for kk in 0..c.k {
                let fd = fd_jvp(|x| c.f(op, x), &c.x, direction(&c.dirs, n, kk));
                assert_close(direction(&t, n, kk), &fd, FD_TOL, &format!("{op:?} jvp vs fd"))?;
            }
        }
    }

    #[test]
    fn is_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let n = c.len();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).map(|v| v * 0.7 + 0.1).collect();
        let mix = lincomb(a, v1, b, &v2);
        for op in OPS {
            let tan = |d: &[f64]| tangent_or_zeros(&run(op, &c.dual(1, d)), 1);
            let expect = lincomb(a, &tan(v1), b, &tan(&v2));
            assert_close(&tan(&mix), &expect, EXACT_TOL, &format!("{op:?} linearity"))?;
        }
    }

    #[test]
    fn k_stacked_equals_k_single_runs(c in case()) {
        let n = c.len();
        for op in OPS {
            let stacked = tangent_or_zeros(&run(op, &c.dual(c.k, &c.dirs)), c.k);
            for kk in 0..c.k {
                let single = tangent_or_zeros(&run(op, &c.dual(1, direction(&c.dirs, n, kk))), 1);
                prop_assert_eq!(direction(&stacked, n, kk), &single[..], "{:?} stacked vs single", op);
            }
        }
    }

    #[test]
    fn primal_equals_plain_forward_bitwise(c in case()) {
        for op in OPS {
            let y = run(op, &c.dual(c.k, &c.dirs));
            prop_assert_eq!(flat(y.primal()), c.f(op, &c.x), "{:?}", op);
        }
    }

    #[test]
    fn matches_reference(c in case()) {
        for op in OPS {
            let x = c.dual(c.k, &c.dirs);
            let (fast, slow) = (run(op, &x), run_reference(op, &x));
            assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
            assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
        }
    }

    #[test]
    fn shift_invariance(c in case(), shifts in values(64)) {
        // ẋ = c_row·1 on each row ⇒ ṗ = 0 and l̇ = 0; and the primal ignores a constant shift.
        let (n, cc) = (c.len(), c.c());
        let dir: Vec<f64> = (0..n).map(|i| 5.0 * shifts[(i / cc) % shifts.len()]).collect();
        for op in OPS {
            let t = tangent_or_zeros(&run(op, &c.dual(1, &dir)), 1);
            assert_close(&t, &vec![0.0; n], 1e-13, &format!("{op:?} shift tangent"))?;
        }
        let shifted: Vec<f64> = c.x.iter().zip(&dir).map(|(x, s)| x + s).collect();
        assert_close(&c.f(Op::Softmax, &shifted), &c.f(Op::Softmax, &c.x), 1e-14, "shifted primal")?;
    }

    #[test]
    fn softmax_tangent_rows_sum_to_zero(c in case()) {
        let (n, cc) = (c.len(), c.c());
        let t = tangent_or_zeros(&softmax(&c.dual(c.k, &c.dirs)).unwrap(), c.k);
        for (r, row) in t.chunks(cc).enumerate() {
            let s: f64 = row.iter().sum();
            prop_assert!(s.abs() <= 1e-14, "row {} of {}: Σṗ = {}", r, c.k * n / cc, s);
        }
        let p = softmax(&c.dual(c.k, &c.dirs)).unwrap();
        for row in flat(p.primal()).chunks(cc) {
            prop_assert!((row.iter().sum::<f64>() - 1.0).abs() <= 1e-14);
        }
    }

    #[test]
    fn f32_agrees_with_f64(c in case()) {
        let x = c.dual(c.k, &c.dirs);
        let x32 = dual_to_f32(&x);
        for op in OPS {
            let (y, y32) = match op {
                Op::Softmax => (softmax(&x).unwrap(), softmax(&x32).unwrap()),
                Op::LogSoftmax => (log_softmax(&x).unwrap(), log_softmax(&x32).unwrap()),
            };
            // compare against the f64 kernel run on the f32-rounded inputs
            let x64 = dual(&c.shape, &flat_f32(x32.primal()), Some((c.k, &flat_f32(x32.tangent().unwrap()))));
            let y64 = run(op, &x64);
            assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-5, "f32 primal")?;
            assert_close(&flat_f32(y32.tangent().unwrap()), &flat(y64.tangent().unwrap()), 1e-5, "f32 tangent")?;
            prop_assert_eq!(y.k(), y32.k());
        }
    }
}

#[test]
fn large_logits_are_finite_and_correct() {
    // p = [σ, 0, 1 − σ, 0] with σ = 1/(1 + e⁻¹); the other two entries underflow.
    let x = [1e4, -1e4, 1e4 - 1.0, 0.0];
    let dir = [0.5, -1.0, 2.0, 3.0];
    let sig = 1.0 / (1.0 + (-1.0f64).exp());
    let p = [sig, 0.0, 1.0 - sig, 0.0];
    let dot: f64 = p.iter().zip(&dir).map(|(a, b)| a * b).sum();
    let pd: Vec<f64> = p.iter().zip(&dir).map(|(a, b)| a * (b - dot)).collect();
    let lse = 1e4 + (1.0 + (-1.0f64).exp()).ln();
    let l: Vec<f64> = x.iter().map(|v| v - lse).collect();
    let ld: Vec<f64> = dir.iter().map(|b| b - dot).collect();

    let x64: Dual<f64, Ix1> = fixed(dual(&[4], &x, Some((1, &dir))));
    let y = softmax(&x64).unwrap();
    assert_close(&flat(y.primal()), &p, 1e-15, "p").unwrap();
    assert_close(&flat(y.tangent().unwrap()), &pd, 1e-15, "ṗ").unwrap();
    let y = log_softmax(&x64).unwrap();
    assert_close(&flat(y.primal()), &l, 1e-15, "l").unwrap();
    assert_close(&flat(y.tangent().unwrap()), &ld, 1e-15, "l̇").unwrap();

    let x32 = dual_to_f32(&x64);
    let y = softmax(&x32).unwrap();
    assert!(
        y.primal()
            .iter()
            .chain(y.tangent().unwrap())
            .all(|v| v.is_finite())
    );
    assert_close(&flat_f32(y.primal()), &p, 1e-6, "p f32").unwrap();
    assert_close(&flat_f32(y.tangent().unwrap()), &pd, 1e-6, "ṗ f32").unwrap();
    let y = log_softmax(&x32).unwrap();
    assert!(
        y.primal()
            .iter()
            .chain(y.tangent().unwrap())
            .all(|v| v.is_finite())
    );
    // l ≈ −2e4 is stored with f32 spacing 2e-3: compare relative to the magnitude
    assert_close(&flat_f32(y.primal()), &l, 1e-7, "l f32").unwrap();
    assert_close(&flat_f32(y.tangent().unwrap()), &ld, 1e-6, "l̇ f32").unwrap();

    // all logits huge and equal: uniform, and −ln 3
    let big: Dual<f32, Ix1> = Dual::constant(array![3e38f32, 3e38, 3e38]);
    let p = softmax(&big).unwrap();
    assert!(p.primal().iter().all(|&v| (v - 1.0 / 3.0).abs() < 1e-7));
    let l = log_softmax(&big).unwrap();
    assert!(l.primal().iter().all(|&v| (v + 3f32.ln()).abs() < 1e-6));
}

#[test]
fn zero_tangent_in_gives_zero_tangent_out() {
    let x: Dual<f64, Ix3> = fixed(dual(
        &[2, 2, 3],
        &[0.1, 0.4, -1.0, 2.0, 0.0, 0.3, 1.0, 1.0, 1.0, -2.0, 5.0, 0.5],
        None,
    ));
    for op in OPS {
        let y = run(op, &dual(&[2, 2, 3], &flat(x.primal()), None));
        assert!(y.is_constant(), "{op:?}");
    }
    assert!(softmax(&x).unwrap().is_constant());
    assert!(log_softmax(&x).unwrap().is_constant());
}

#[test]
fn k_one_and_k_thirty_two() {
    let (rows, c) = (3, 5);
    let x: Vec<f64> = (0..rows * c)
        .map(|i| ((i * 7) % 11) as f64 * 0.3 - 1.5)
        .collect();
    for k in [1usize, 32] {
        let dirs: Vec<f64> = (0..k * rows * c)
            .map(|i| ((i * 13) % 17) as f64 * 0.1 - 0.8)
            .collect();
        let xd = dual(&[rows, c], &x, Some((k, &dirs)));
        for op in OPS {
            let (fast, slow) = (run(op, &xd), run_reference(op, &xd));
            assert_eq!(fast.k(), Some(k));
            assert_eq!(fast.tangent().unwrap().shape(), &[k, rows, c]);
            assert_close(
                &tangent_or_zeros(&fast, k),
                &tangent_or_zeros(&slow, k),
                EXACT_TOL,
                "K",
            )
            .unwrap();
            let fd = fd_jvp(
                |v| flat(run(op, &dual(&[rows, c], v, None)).primal()),
                &x,
                direction(&dirs, rows * c, k - 1),
            );
            let last = direction(&tangent_or_zeros(&fast, k), rows * c, k - 1).to_vec();
            assert_close(&last, &fd, FD_TOL, "last direction vs fd").unwrap();
        }
    }
}

#[test]
fn shape_errors_are_typed() {
    let scalar: Dual<f64, Ix0> = Dual::constant(ndarray::arr0(1.0));
    assert!(matches!(
        softmax(&scalar),
        Err(Error::ShapeMismatch { op: "softmax", .. })
    ));
    assert!(matches!(
        log_softmax(&scalar),
        Err(Error::ShapeMismatch {
            op: "log_softmax",
            ..
        })
    ));
    let empty: Dual<f64, Ix2> = Dual::constant(ndarray::Array2::zeros((3, 0)));
    assert!(matches!(
        softmax(&empty),
        Err(Error::ShapeMismatch { op: "softmax", .. })
    ));
    assert!(matches!(
        log_softmax(&empty),
        Err(Error::ShapeMismatch {
            op: "log_softmax",
            ..
        })
    ));
    assert!(matches!(
        softmax_reference(&empty),
        Err(Error::ShapeMismatch { .. })
    ));
    // no rows at all is fine: an empty output
    let no_rows: Dual<f64, Ix2> = Dual::constant(ndarray::Array2::zeros((0, 4)));
    assert_eq!(softmax(&no_rows).unwrap().shape(), &[0, 4]);
}
