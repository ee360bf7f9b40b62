//! GELU (erf and tanh), SiLU, tanh and SwiGLU: finite differences (including around 0 and at
//! large |x|), linearity, K stacking, primal equality, symbolic zeros, the reference twins, the
//! dfdx GELU-derivative bug, Erf vs Tanh, f32 against f64, typed errors.

mod common;

use common::*;
use ndarray::{Ix0, IxDyn, arr0};
use proptest::prelude::*;
use spry::kernels::{
    GeluKind, gelu, gelu_into, gelu_reference, silu, silu_reference, swiglu, swiglu_into,
    swiglu_reference, tanh, tanh_reference,
};
use spry::{Dual, Error, Float};

#[derive(Debug, Clone, Copy)]
enum Act {
    GeluErf,
    GeluTanh,
    Silu,
    Tanh,
}

const ACTS: [Act; 4] = [Act::GeluErf, Act::GeluTanh, Act::Silu, Act::Tanh];

impl Act {
    fn run<F: Float, D: ndarray::Dimension>(self, x: &Dual<F, D>) -> Dual<F, D> {
        match self {
            Act::GeluErf => gelu(x, GeluKind::Erf),
            Act::GeluTanh => gelu(x, GeluKind::Tanh),
            Act::Silu => silu(x),
            Act::Tanh => tanh(x),
        }
        .unwrap()
    }
    fn run_reference(self, x: &Dual<f64, IxDyn>) -> Dual<f64, IxDyn> {
        match self {
            Act::GeluErf => gelu_reference(x, GeluKind::Erf),
            Act::GeluTanh => gelu_reference(x, GeluKind::Tanh),
            Act::Silu => silu_reference(x),
            Act::Tanh => tanh_reference(x),
        }
        .unwrap()
    }
    /// The primal output at `x` (shape `shape`).
    fn f(self, shape: &[usize], x: &[f64]) -> Vec<f64> {
        flat(self.run(&dual(shape, x, None)).primal())
    }
}

/// Random case: x of rank 0 to 3, K directions.
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
    fn dual(&self, k: usize, dirs: &[f64]) -> Dual<f64, IxDyn> {
        dual(&self.shape, &self.x, Some((k, dirs)))
    }
}

/// Cases with values drawn from `range`.
fn case_in(lo: f64, hi: f64) -> impl Strategy<Value = Case> {
    (prop::collection::vec(1usize..4, 0..=3), 1usize..4).prop_flat_map(move |(shape, k)| {
        let n: usize = shape.iter().product();
        (prop::collection::vec(lo..hi, n), values(k * n)).prop_map(move |(x, dirs)| Case {
            shape: shape.clone(),
            k,
            x,
            dirs,
        })
    })
}

fn case() -> impl Strategy<Value = Case> {
    case_in(-6.0, 6.0)
}

/// Checks the K tangents of `act` at the case against central differences.
fn check_fd(c: &Case, act: Act) -> Result<(), TestCaseError> {
    let y = act.run(&c.dual(c.k, &c.dirs));
    let t = tangent_or_zeros(&y, c.k);
    for kk in 0..c.k {
        let fd = fd_jvp(
            |x| act.f(&c.shape, x),
            &c.x,
            direction(&c.dirs, c.len(), kk),
        );
        assert_close(
            direction(&t, c.len(), kk),
            &fd,
            FD_TOL,
            &format!("{act:?} jvp vs fd"),
        )?;
    }
    Ok(())
}

/// Random SwiGLU case: gate and up of one shape, K directions for each.
#[derive(Debug, Clone)]
struct GluCase {
    c: Case,
    up: Vec<f64>,
    up_dirs: Vec<f64>,
}

impl GluCase {
    /// (gate, up) with tangents on the operands `mask` selects.
    fn duals(&self, k: usize, dg: &[f64], du: &[f64], mask: [bool; 2]) -> [Dual<f64, IxDyn>; 2] {
        let s = &self.c.shape;
        [
            dual(s, &self.c.x, mask[0].then_some((k, dg))),
            dual(s, &self.up, mask[1].then_some((k, du))),
        ]
    }
    fn f(&self, theta: &[f64]) -> Vec<f64> {
        let n = self.c.len();
        let s = &self.c.shape;
        let y = swiglu(&dual(s, &theta[..n], None), &dual(s, &theta[n..], None)).unwrap();
        flat(y.primal())
    }
}

fn glu_case() -> impl Strategy<Value = GluCase> {
    case().prop_flat_map(|c| {
        let n = c.len();
        let k = c.k;
        (
            Just(c),
            prop::collection::vec(-3.0f64..3.0, n),
            values(k * n),
        )
            .prop_map(|(c, up, up_dirs)| GluCase { c, up, up_dirs })
    })
}

const GLU_MASKS: [[bool; 2]; 3] = [[true, false], [false, true], [true, true]];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn activations_match_finite_differences(c in case()) {
        for act in ACTS {
            check_fd(&c, act)?;
        }
    }

    #[test]
    fn activations_match_finite_differences_around_zero(c in case_in(-1e-3, 1e-3)) {
        for act in ACTS {
            check_fd(&c, act)?;
        }
    }

    #[test]
    fn activations_match_reference(c in case()) {
        let x = c.dual(c.k, &c.dirs);
        for act in ACTS {
            let (fast, slow) = (act.run(&x), act.run_reference(&x));
            assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
            assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
        }
    }

    #[test]
    fn activations_are_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let n = c.len();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix = lincomb(a, v1, b, &v2);
        for act in ACTS {
            let run = |d: &[f64]| tangent_or_zeros(&act.run(&c.dual(1, d)), 1);
            let (t1, t2, tm) = (run(v1), run(&v2), run(&mix));
            assert_close(&tm, &lincomb(a, &t1, b, &t2), EXACT_TOL, "linearity")?;
        }
    }

    #[test]
    fn activations_k_stacked_equal_k_single_runs(c in case()) {
        for act in ACTS {
            let stacked = tangent_or_zeros(&act.run(&c.dual(c.k, &c.dirs)), c.k);
            for kk in 0..c.k {
                let single = act.run(&c.dual(1, direction(&c.dirs, c.len(), kk)));
                prop_assert_eq!(direction(&stacked, c.len(), kk), &tangent_or_zeros(&single, 1)[..]);
            }
        }
    }

    #[test]
    fn activations_primal_equals_plain_forward_bitwise(c in case()) {
        for act in ACTS {
            let y = act.run(&c.dual(c.k, &c.dirs));
            prop_assert_eq!(flat(y.primal()), act.f(&c.shape, &c.x));
        }
    }

    #[test]
    fn gelu_into_equals_gelu_bitwise(c in case()) {
        let x = c.dual(c.k, &c.dirs);
        let constant = Dual::constant(x.primal().clone());
        for kind in [GeluKind::Erf, GeluKind::Tanh] {
            for x in [&x, &constant] {
                prop_assert_eq!(gelu_into(x.clone(), kind).unwrap(), gelu(x, kind).unwrap());
                let x32 = dual_to_f32(x);
                prop_assert_eq!(gelu_into(x32.clone(), kind).unwrap(), gelu(&x32, kind).unwrap());
            }
        }
    }

    #[test]
    fn activations_f32_match_f64(c in case()) {
        let c = Case { x: round_f32(&c.x), dirs: round_f32(&c.dirs), ..c };
        let x = c.dual(c.k, &c.dirs);
        for act in ACTS {
            let (y64, y32) = (act.run(&x), act.run(&dual_to_f32(&x)));
            assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-5, "f32 primal")?;
            assert_close(&flat_f32(y32.tangent().unwrap()), &tangent_or_zeros(&y64, c.k), 1e-5, "f32 tangent")?;
        }
    }

    #[test]
    fn swiglu_matches_reference_and_fd_for_every_symbolic_zero_pattern(g in glu_case()) {
        let (k, n) = (g.c.k, g.c.len());
        let theta: Vec<f64> = g.c.x.iter().chain(&g.up).copied().collect();
        for mask in GLU_MASKS {
            let [gate, up] = g.duals(k, &g.c.dirs, &g.up_dirs, mask);
            let fast = swiglu(&gate, &up).unwrap();
            let slow = swiglu_reference(&gate, &up).unwrap();
            prop_assert_eq!(fast.k(), Some(k));
            assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
            let t = tangent_or_zeros(&fast, k);
            assert_close(&t, &tangent_or_zeros(&slow, k), EXACT_TOL, "tangent")?;
            for kk in 0..k {
                let dg = if mask[0] { direction(&g.c.dirs, n, kk).to_vec() } else { vec![0.0; n] };
                let du = if mask[1] { direction(&g.up_dirs, n, kk).to_vec() } else { vec![0.0; n] };
                let v: Vec<f64> = dg.into_iter().chain(du).collect();
                let fd = fd_jvp(|th| g.f(th), &theta, &v);
                assert_close(direction(&t, n, kk), &fd, FD_TOL, "swiglu jvp vs fd")?;
            }
        }
    }

    #[test]
    fn swiglu_into_equals_swiglu_bitwise(g in glu_case()) {
        for mask in [[false, false], [true, false], [false, true], [true, true]] {
            let [gate, up] = g.duals(g.c.k, &g.c.dirs, &g.up_dirs, mask);
            prop_assert_eq!(swiglu_into(gate.clone(), &up).unwrap(), swiglu(&gate, &up).unwrap());
            let (gate, up) = (dual_to_f32(&gate), dual_to_f32(&up));
            prop_assert_eq!(swiglu_into(gate.clone(), &up).unwrap(), swiglu(&gate, &up).unwrap());
        }
    }

    #[test]
    fn swiglu_linear_stacked_and_primal(g in glu_case(), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let (k, n) = (g.c.k, g.c.len());
        let both = [true, true];
        // linearity over joint (ġ, u̇) directions
        let run = |dg: &[f64], du: &[f64]| {
            let [gate, up] = g.duals(1, dg, du, both);
            tangent_or_zeros(&swiglu(&gate, &up).unwrap(), 1)
        };
        let (g1, u1) = (&g.c.dirs[..n], &g.up_dirs[..n]);
        let g2: Vec<f64> = g.c.dirs.iter().rev().take(n).copied().collect();
        let u2: Vec<f64> = g.up_dirs.iter().rev().take(n).copied().collect();
        let (t1, t2) = (run(g1, u1), run(&g2, &u2));
        let tm = run(&lincomb(a, g1, b, &g2), &lincomb(a, u1, b, &u2));
        assert_close(&tm, &lincomb(a, &t1, b, &t2), EXACT_TOL, "linearity")?;
        // K stacked = K single runs, and the primal is the plain forward, bitwise
        let [gate, up] = g.duals(k, &g.c.dirs, &g.up_dirs, both);
        let y = swiglu(&gate, &up).unwrap();
        let stacked = tangent_or_zeros(&y, k);
        for kk in 0..k {
            let single = run(direction(&g.c.dirs, n, kk), direction(&g.up_dirs, n, kk));
            prop_assert_eq!(direction(&stacked, n, kk), &single[..]);
        }
        let theta: Vec<f64> = g.c.x.iter().chain(&g.up).copied().collect();
        prop_assert_eq!(flat(y.primal()), g.f(&theta));
        // f32 against f64 on the same (rounded) inputs
        let [gate, up] = g.duals(k, &round_f32(&g.c.dirs), &round_f32(&g.up_dirs), both);
        let gate = dual(&g.c.shape, &round_f32(&g.c.x), gate.tangent().map(|t| (k, t.as_slice().unwrap())));
        let up = dual(&g.c.shape, &round_f32(&g.up), up.tangent().map(|t| (k, t.as_slice().unwrap())));
        let (y64, y32) = (swiglu(&gate, &up).unwrap(), swiglu(&dual_to_f32(&gate), &dual_to_f32(&up)).unwrap());
        assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-5, "f32 primal")?;
        assert_close(&flat_f32(y32.tangent().unwrap()), &tangent_or_zeros(&y64, k), 1e-5, "f32 tangent")?;
    }
}

/// Large enough for the element-wise kernels to split the work across threads.
#[test]
fn in_place_activations_equal_theirs_bitwise_when_split_across_threads() {
    let (shape, k) = ([4, 128, 384], 3);
    let n: usize = shape.iter().product();
    let x = dual(&shape, &seeded(n, 1), Some((k, &seeded(k * n, 2))));
    for kind in [GeluKind::Erf, GeluKind::Tanh] {
        assert_eq!(gelu_into(x.clone(), kind).unwrap(), gelu(&x, kind).unwrap());
        let x32 = dual_to_f32(&x);
        assert_eq!(
            gelu_into(x32.clone(), kind).unwrap(),
            gelu(&x32, kind).unwrap()
        );
    }
    let up = dual(&shape, &seeded(n, 3), Some((k, &seeded(k * n, 4))));
    assert_eq!(
        swiglu_into(x.clone(), &up).unwrap(),
        swiglu(&x, &up).unwrap()
    );
}

#[test]
fn large_inputs_are_finite_and_match_fd() {
    let x = [-30.0, -10.0, 10.0, 30.0];
    let v = [1.0, -0.5, 0.75, -1.0];
    for act in ACTS {
        let y = act.run(&dual(&[4], &x, Some((1, &v))));
        let t = tangent_or_zeros(&y, 1);
        let fd = fd_jvp(|x| act.f(&[4], x), &x, &v);
        assert!(
            flat(y.primal()).iter().chain(&t).all(|v| v.is_finite()),
            "{act:?}"
        );
        for (a, e) in t.iter().zip(&fd) {
            assert!(
                (a - e).abs() <= FD_TOL * (1.0 + e.abs()),
                "{act:?}: {a} vs fd {e}"
            );
        }
    }
    // f32 far out, where x² and e^{−x} overflow: still finite.
    let big: Vec<f64> = vec![-1e20, -1e4, -30.0, -10.0, 10.0, 30.0, 1e4, 1e20];
    let x32 = dual_to_f32(&dual(&[8], &big, Some((2, &[1.0; 16]))));
    for act in ACTS {
        let y = act.run(&x32);
        let all = y.primal().iter().chain(y.tangent().unwrap());
        assert!(all.clone().all(|v| v.is_finite()), "{act:?}: {y:?}");
    }
}

/// dfdx's `accurate_gelu` derivative omits the 1/√2 chain factor of erf(x/√2), making the φ term
/// √2 too large. Finite differences catch it; a literal derived from the code would not.
#[test]
fn gelu_erf_derivative_at_one_matches_fd_not_the_dfdx_formula() {
    let x = dual(&[1], &[1.0], Some((1, &[1.0])));
    let t = gelu(&x, GeluKind::Erf).unwrap().tangent().unwrap()[[0, 0]];
    let f = |x: &[f64]| flat(gelu(&dual(&[1], x, None), GeluKind::Erf).unwrap().primal());
    let fd = fd_jvp(f, &[1.0], &[1.0])[0];
    assert!((t - fd).abs() < 1e-9, "{t} vs fd {fd}");
    let cdf = 0.5 * (1.0 + libm::erf(std::f64::consts::FRAC_1_SQRT_2));
    let dfdx = cdf + 0.5 * std::f64::consts::FRAC_2_SQRT_PI * (-0.5f64).exp();
    assert!((t - dfdx).abs() > 0.04, "{t} vs dfdx's {dfdx}");
}

#[test]
fn gelu_erf_and_tanh_differ_by_less_than_1e_3_but_are_not_equal() {
    let xs: Vec<f64> = (-800..=800).map(|i| i as f64 / 100.0).collect();
    let x = dual(&[xs.len()], &xs, Some((1, &vec![1.0; xs.len()])));
    let (e, t) = (
        gelu(&x, GeluKind::Erf).unwrap(),
        gelu(&x, GeluKind::Tanh).unwrap(),
    );
    let max_diff = |a: Vec<f64>, b: Vec<f64>| {
        a.iter()
            .zip(&b)
            .fold(0.0f64, |m, (p, q)| m.max((p - q).abs()))
    };
    let dy = max_diff(flat(e.primal()), flat(t.primal()));
    assert!(dy < 1e-3 && dy > 1e-4, "max value difference {dy}");
    let dt = max_diff(tangent_or_zeros(&e, 1), tangent_or_zeros(&t, 1));
    assert!(dt > 1e-4, "max slope difference {dt}");
}

#[test]
fn zero_tangent_in_gives_zero_tangent_out() {
    let x = dual(&[2, 3], &[-2.0, -0.5, 0.0, 0.5, 2.0, 9.0], None);
    for act in ACTS {
        assert!(act.run(&x).is_constant(), "{act:?}");
        assert!(act.run_reference(&x).is_constant(), "{act:?}");
    }
    assert!(swiglu(&x, &x).unwrap().is_constant());
    assert!(swiglu_reference(&x, &x).unwrap().is_constant());
}

#[test]
fn k_one_and_k_thirty_two() {
    let xs = [-2.0, -0.5, 0.0, 0.5, 2.0, 9.0];
    for k in [1usize, 32] {
        let t: Vec<f64> = (0..k * 6)
            .map(|i| ((i * 7 % 11) as f64) / 5.0 - 1.0)
            .collect();
        let x = dual(&[2, 3], &xs, Some((k, &t)));
        for act in ACTS {
            let y = act.run(&x);
            assert_eq!(y.tangent().unwrap().shape(), &[k, 2, 3]);
            for kk in 0..k {
                let x1 = dual(&[2, 3], &xs, Some((1, direction(&t, 6, kk))));
                assert_eq!(y.direction(kk).unwrap(), act.run(&x1).direction(0).unwrap());
            }
        }
        let y = swiglu(&x, &x).unwrap();
        assert_eq!(y.k(), Some(k));
        assert_eq!(y.tangent().unwrap().shape(), &[k, 2, 3]);
        for kk in 0..k {
            let x1 = dual(&[2, 3], &xs, Some((1, direction(&t, 6, kk))));
            let y1 = swiglu(&x1, &x1).unwrap();
            assert_eq!(y.direction(kk).unwrap(), y1.direction(0).unwrap());
        }
    }
}

#[test]
fn rank_zero_and_empty_inputs() {
    let x: Dual<f64, Ix0> = Dual::new(arr0(0.5), ndarray::arr1(&[1.0, -2.0])).unwrap();
    for act in ACTS {
        let y = act.run(&x);
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.k(), Some(2));
    }
    assert_eq!(swiglu(&x, &x).unwrap().k(), Some(2));
    let e = dual(&[2, 0], &[], Some((3, &[])));
    for act in ACTS {
        assert_eq!(act.run(&e).tangent().unwrap().shape(), &[3, 2, 0]);
    }
}

#[test]
fn swiglu_bad_operands_give_typed_errors() {
    let a = dual(&[2, 3], &[0.0; 6], Some((2, &[0.0; 12])));
    let b = dual(&[3, 2], &[0.0; 6], None);
    assert!(matches!(
        swiglu(&a, &b),
        Err(Error::ShapeMismatch { op: "swiglu", .. })
    ));
    assert!(matches!(
        swiglu_reference(&a, &b),
        Err(Error::ShapeMismatch { .. })
    ));
    let c = dual(&[2, 3], &[0.0; 6], Some((3, &[0.0; 18])));
    assert!(matches!(
        swiglu(&a, &c),
        Err(Error::TangentCountMismatch {
            op: "swiglu",
            lhs: 2,
            rhs: 3
        })
    ));
    assert!(matches!(
        swiglu_reference(&c, &a),
        Err(Error::TangentCountMismatch { .. })
    ));
    assert!(matches!(
        swiglu_into(a.clone(), &b),
        Err(Error::ShapeMismatch {
            op: "swiglu_into",
            ..
        })
    ));
    assert!(matches!(
        swiglu_into(a, &c),
        Err(Error::TangentCountMismatch {
            op: "swiglu_into",
            ..
        })
    ));
}

/// Large inputs are split across threads: every element equals the same element computed in a
/// small (serial) call, bitwise, in f32 and f64, primal and tangent; and the large f32 GELU stays
/// within f32 tolerance of the f64 reference.
#[test]
fn threaded_elements_equal_small_calls_bitwise() {
    let (n, k) = (300_000, 2);
    let xs: Vec<f64> = (0..n)
        .map(|i| (i * 7919 % 20_000) as f64 / 1000.0 - 10.0)
        .collect();
    let ts: Vec<f64> = (0..k * n)
        .map(|i| (i * 104_729 % 997) as f64 / 500.0 - 1.0)
        .collect();
    let big = dual(&[n], &xs, Some((k, &ts)));
    let picks = [0, 1, n / 3, n / 2 + 7, n - 1];
    for act in ACTS {
        for (tangent, x) in [
            (true, big.clone()),
            (false, Dual::constant(big.primal().clone())),
        ] {
            let (y, y32) = (act.run(&x), act.run(&dual_to_f32(&x)));
            for &i in &picks {
                let t: Vec<f64> = (0..k).map(|kk| ts[kk * n + i]).collect();
                let small = dual(&[1], &xs[i..=i], tangent.then_some((k, &t[..])));
                let (s, s32) = (act.run(&small), act.run(&dual_to_f32(&small)));
                assert_eq!(y.primal()[[i]], s.primal()[[0]], "{act:?} at {i}");
                assert_eq!(y32.primal()[[i]], s32.primal()[[0]], "{act:?} f32 at {i}");
                if tangent {
                    for kk in 0..k {
                        assert_eq!(y.tangent().unwrap()[[kk, i]], s.tangent().unwrap()[[kk, 0]]);
                        assert_eq!(
                            y32.tangent().unwrap()[[kk, i]],
                            s32.tangent().unwrap()[[kk, 0]]
                        );
                    }
                }
            }
            if tangent {
                let r = act.run_reference(&x);
                let scale = 1.0 + flat(r.primal()).iter().fold(0.0f64, |m, v| m.max(v.abs()));
                for (a, e) in flat_f32(y32.primal()).iter().zip(flat(r.primal()).iter()) {
                    assert!((a - e).abs() <= 1e-5 * scale, "{act:?}: {a} vs {e}");
                }
                for (a, e) in flat_f32(y32.tangent().unwrap())
                    .iter()
                    .zip(flat(r.tangent().unwrap()).iter())
                {
                    assert!((a - e).abs() <= 1e-5 * scale, "{act:?} tangent: {a} vs {e}");
                }
            }
        }
    }
}
