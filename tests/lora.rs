//! LoRA linear layer: finite differences jointly over x, A, B (any of them dual or constant),
//! the shared dropout mask, linearity, K stacking, primal equality, symbolic zeros, the PEFT
//! `B = 0` initialisation, the reference twin, typed errors and the f32 instantiation.

mod common;

use common::*;
use ndarray::{Array1, Array2, ArrayD, Ix2, Ix3, IxDyn};
use proptest::prelude::*;
use spry::kernels::{lora_linear, lora_linear_reference};
use spry::{Dual, Error};

/// Which of x, A, B carry a tangent.
type Flags = (bool, bool, bool);
const ALL: Flags = (true, true, true);

/// Random case: x `[rows, inp]`, frozen w `[out, inp]` and bias, A `[r, inp]`, B `[out, r]`,
/// an optional dropout mask, and K directions over (x, A, B).
#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    inp: usize,
    out: usize,
    r: usize,
    k: usize,
    scale: f64,
    theta: Vec<f64>,
    dirs: Vec<f64>,
    w: Vec<f64>,
    bias: Vec<f64>,
    mask: Option<Vec<f64>>,
}

impl Case {
    fn sizes(&self) -> (usize, usize, usize) {
        (self.rows * self.inp, self.r * self.inp, self.out * self.r)
    }
    fn n_params(&self) -> usize {
        let (a, b, c) = self.sizes();
        a + b + c
    }
    /// Splits a flat parameter vector into (x, A, B).
    fn split<'a>(&self, v: &'a [f64]) -> (&'a [f64], &'a [f64], &'a [f64]) {
        let (a, b, _) = self.sizes();
        (&v[..a], &v[a..a + b], &v[a + b..])
    }
    fn w(&self) -> Array2<f64> {
        arr(&[self.out, self.inp], &self.w)
            .into_dimensionality()
            .unwrap()
    }
    fn bias(&self) -> Array1<f64> {
        arr(&[self.out], &self.bias).into_dimensionality().unwrap()
    }
    fn mask(&self) -> Option<ArrayD<f64>> {
        self.mask.as_ref().map(|m| arr(&[self.rows, self.inp], m))
    }
    /// The primal output for parameters `theta` (all constants, the fixed mask).
    fn f(&self, theta: &[f64]) -> Vec<f64> {
        let (x, a, b) = self.split(theta);
        let x = dual(&[self.rows, self.inp], x, None);
        let a: Dual<f64, Ix2> = fixed(dual(&[self.r, self.inp], a, None));
        let b: Dual<f64, Ix2> = fixed(dual(&[self.out, self.r], b, None));
        let (w, bias, mask) = (self.w(), self.bias(), self.mask());
        let y = lora_linear(
            &x,
            w.view(),
            Some(bias.view()),
            &a,
            &b,
            self.scale,
            mask.as_ref().map(|m| m.view()),
        )
        .unwrap();
        flat(y.primal())
    }
    /// Dual inputs carrying direction block `dirs` (K directions of `n_params` each); operands
    /// whose flag is false are constants.
    fn duals(
        &self,
        k: usize,
        dirs: &[f64],
        (fx, fa, fb): Flags,
    ) -> (Dual<f64, IxDyn>, Dual<f64, Ix2>, Dual<f64, Ix2>) {
        let (x, a, b) = self.split(&self.theta);
        let n = self.n_params();
        let pick = |part: usize| -> Vec<f64> {
            (0..k)
                .flat_map(|kk| {
                    let (dx, da, db) = self.split(&dirs[kk * n..(kk + 1) * n]);
                    [dx, da, db][part].to_vec()
                })
                .collect()
        };
        let (px, pa, pb) = (pick(0), pick(1), pick(2));
        (
            dual(&[self.rows, self.inp], x, fx.then_some((k, &px[..]))),
            fixed(dual(&[self.r, self.inp], a, fa.then_some((k, &pa[..])))),
            fixed(dual(&[self.out, self.r], b, fb.then_some((k, &pb[..])))),
        )
    }
    /// The fast kernel on `duals(k, dirs, flags)`.
    fn run(&self, k: usize, dirs: &[f64], flags: Flags) -> Dual<f64, IxDyn> {
        let (x, a, b) = self.duals(k, dirs, flags);
        let (w, bias, mask) = (self.w(), self.bias(), self.mask());
        lora_linear(
            &x,
            w.view(),
            Some(bias.view()),
            &a,
            &b,
            self.scale,
            mask.as_ref().map(|m| m.view()),
        )
        .unwrap()
    }
    /// Direction `v` with the parts of constant operands zeroed (what FD must move).
    fn restrict(&self, v: &[f64], (fx, fa, fb): Flags) -> Vec<f64> {
        let (dx, da, db) = self.split(v);
        let keep =
            |on: bool, d: &[f64]| -> Vec<f64> { if on { d.to_vec() } else { vec![0.0; d.len()] } };
        [keep(fx, dx), keep(fa, da), keep(fb, db)].concat()
    }
    fn n_out(&self) -> usize {
        self.rows * self.out
    }
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..4,
        1usize..6,
        1usize..5,
        1usize..4,
        1usize..4,
        any::<bool>(),
    )
        .prop_flat_map(|(rows, inp, out, r, k, with_mask)| {
            let n = rows * inp + r * inp + out * r;
            (
                values(n),
                values(k * n),
                values(out * inp),
                values(out),
                dropout_mask(rows * inp),
                -2.0f64..2.0,
            )
                .prop_map(move |(theta, dirs, w, bias, mask, scale)| Case {
                    rows,
                    inp,
                    out,
                    r,
                    k,
                    scale,
                    theta,
                    dirs,
                    w,
                    bias,
                    mask: with_mask.then_some(mask),
                })
        })
}

fn flags() -> impl Strategy<Value = Flags> {
    (any::<bool>(), any::<bool>(), any::<bool>())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// JVP vs central differences, jointly over x, A and B, with the same fixed mask in the FD.
    #[test]
    fn lora_matches_finite_differences_jointly(c in case()) {
        let y = c.run(c.k, &c.dirs, ALL);
        let n = c.n_params();
        for kk in 0..c.k {
            let fd = fd_jvp(|t| c.f(t), &c.theta, direction(&c.dirs, n, kk));
            assert_close(direction(&tangent_or_zeros(&y, c.k), c.n_out(), kk), &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    /// Every combination of dual and constant operands: FD moves only the dual ones.
    #[test]
    fn lora_any_operand_may_be_constant(c in case(), fl in flags()) {
        let y = c.run(c.k, &c.dirs, fl);
        if fl == (false, false, false) {
            prop_assert!(y.is_constant());
            return Ok(());
        }
        prop_assert_eq!(y.k(), Some(c.k));
        let n = c.n_params();
        for kk in 0..c.k {
            let v = c.restrict(direction(&c.dirs, n, kk), fl);
            let fd = fd_jvp(|t| c.f(t), &c.theta, &v);
            assert_close(direction(&tangent_or_zeros(&y, c.k), c.n_out(), kk), &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    #[test]
    fn lora_is_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, bc in -2.0f64..2.0) {
        let n = c.n_params();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix: Vec<f64> = v1.iter().zip(&v2).map(|(p, q)| a * p + bc * q).collect();
        let run = |d: &[f64]| tangent_or_zeros(&c.run(1, d, ALL), 1);
        let (t1, t2, tm) = (run(v1), run(&v2), run(&mix));
        let expect: Vec<f64> = t1.iter().zip(&t2).map(|(p, q)| a * p + bc * q).collect();
        assert_close(&tm, &expect, EXACT_TOL, "linearity")?;
    }

    #[test]
    fn lora_k_stacked_equals_k_single_runs(c in case(), fl in flags()) {
        let n = c.n_params();
        let stacked = tangent_or_zeros(&c.run(c.k, &c.dirs, fl), c.k);
        for kk in 0..c.k {
            let single = tangent_or_zeros(&c.run(1, direction(&c.dirs, n, kk), fl), 1);
            assert_close(direction(&stacked, c.n_out(), kk), &single, EXACT_TOL, "stacked vs single")?;
        }
    }

    /// The primal of the dual pass is bitwise the plain forward (all tangents symbolic zeros).
    #[test]
    fn lora_primal_equals_plain_forward(c in case(), fl in flags()) {
        let y = c.run(c.k, &c.dirs, fl);
        prop_assert_eq!(flat(y.primal()), c.f(&c.theta));
    }

    #[test]
    fn lora_matches_reference(c in case(), fl in flags()) {
        let (x, a, b) = c.duals(c.k, &c.dirs, fl);
        let (w, bias, mask) = (c.w(), c.bias(), c.mask());
        let fast = c.run(c.k, &c.dirs, fl);
        let slow = lora_linear_reference(&x, w.view(), Some(bias.view()), &a, &b, c.scale, mask.as_ref().map(|m| m.view())).unwrap();
        prop_assert_eq!(fast.is_constant(), slow.is_constant());
        assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
        assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
    }

    /// PEFT init B = 0: the Ȧ term is exactly zero. With B constant and x constant the tangent
    /// is all zeros; with x and B dual the result is bitwise the same whether A is dual or not.
    #[test]
    fn lora_b_zero_kills_the_a_term_exactly(c in case()) {
        let mut c = c;
        let (nx, na, _) = c.sizes();
        c.theta[nx + na..].iter_mut().for_each(|v| *v = 0.0);
        let only_a = c.run(c.k, &c.dirs, (false, true, false));
        prop_assert!(only_a.tangent().unwrap().iter().all(|&v| v == 0.0));
        let with_a = c.run(c.k, &c.dirs, ALL);
        let without_a = c.run(c.k, &c.dirs, (true, false, true));
        prop_assert_eq!(tangent_or_zeros(&with_a, c.k), tangent_or_zeros(&without_a, c.k));
    }

    /// The mask multiplies the tangent too: an ẋ supported on dropped entries only moves the
    /// frozen path (here W = 0 and b = 0), so the tangent is exactly zero.
    #[test]
    fn lora_dropped_inputs_carry_no_adapter_tangent(c in case()) {
        let mut c = c;
        let Some(mask) = c.mask.clone() else { return Ok(()) };
        c.w.iter_mut().for_each(|v| *v = 0.0);
        let n = c.n_params();
        for kk in 0..c.k {
            for (i, &m) in mask.iter().enumerate() {
                if m != 0.0 {
                    c.dirs[kk * n + i] = 0.0;
                }
            }
        }
        let y = c.run(c.k, &c.dirs, (true, false, false));
        prop_assert!(y.tangent().unwrap().iter().all(|&v| v == 0.0));
    }

    #[test]
    fn lora_f32_matches_f64(c in case(), fl in flags()) {
        let (x, a, b) = c.duals(c.k, &c.dirs, fl);
        let (w, bias, mask) = (c.w(), c.bias(), c.mask());
        let y64 = c.run(c.k, &c.dirs, fl);
        let (x32, a32, b32) = (dual_to_f32(&x), dual_to_f32(&a), dual_to_f32(&b));
        let (w32, bias32) = (w.mapv(|v| v as f32), bias.mapv(|v| v as f32));
        let mask32 = mask.map(|m| m.mapv(|v| v as f32));
        let y32 = lora_linear(&x32, w32.view(), Some(bias32.view()), &a32, &b32, c.scale as f32, mask32.as_ref().map(|m| m.view())).unwrap();
        assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-5, "f32 primal")?;
        let t32 = y32.tangent().map_or(vec![0.0; c.k * c.n_out()], flat_f32);
        assert_close(&t32, &tangent_or_zeros(&y64, c.k), 1e-5, "f32 tangent")?;
    }
}

#[test]
fn masked_fd_differs_from_unmasked_so_the_mask_reaches_the_tangent() {
    // x [1, 2], one entry dropped: the adapter sees only x₀, and ẋ₁ must not reach it.
    let x: Dual<f64, Ix2> = fixed(dual(&[1, 2], &[1.0, 2.0], Some((1, &[0.0, 1.0]))));
    let w = Array2::<f64>::zeros((1, 2));
    let a: Dual<f64, Ix2> = fixed(dual(&[1, 2], &[1.0, 1.0], None));
    let b: Dual<f64, Ix2> = fixed(dual(&[1, 1], &[1.0], None));
    let mask = ndarray::arr2(&[[2.0, 0.0]]);
    let y = lora_linear(&x, w.view(), None, &a, &b, 1.0, Some(mask.view())).unwrap();
    assert_eq!(flat(y.primal()), vec![2.0]);
    assert_eq!(tangent_or_zeros(&y, 1), vec![0.0]);
    let y = lora_linear(&x, w.view(), None, &a, &b, 1.0, None).unwrap();
    assert_eq!(tangent_or_zeros(&y, 1), vec![1.0]);
}

#[test]
fn zero_tangents_in_give_a_symbolic_zero_out() {
    let x: Dual<f64, Ix3> = fixed(dual(&[2, 2, 3], &[0.5; 12], None));
    let w = Array2::from_elem((4, 3), 0.1);
    let a: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.2; 6], None));
    let b: Dual<f64, Ix2> = fixed(dual(&[4, 2], &[0.3; 8], None));
    let y = lora_linear(&x, w.view(), None, &a, &b, 2.0, None).unwrap();
    assert!(y.is_constant());
    assert_eq!(y.shape(), &[2, 2, 4]);
}

#[test]
fn k_one_and_k_thirty_two_rank_three_input() {
    for k in [1usize, 32] {
        // x [2, 2, 3] with ẋ = 0.7 everywhere; A, B dual with tangents 0.1 and 0.2.
        let x: Dual<f64, Ix3> = fixed(dual(&[2, 2, 3], &[0.5; 12], Some((k, &vec![0.7; k * 12]))));
        let a: Dual<f64, Ix2> = fixed(dual(&[1, 3], &[0.2; 3], Some((k, &vec![0.1; k * 3]))));
        let b: Dual<f64, Ix2> = fixed(dual(&[4, 1], &[0.3; 4], Some((k, &vec![0.2; k * 4]))));
        let w = Array2::from_elem((4, 3), 0.1);
        let y = lora_linear(&x, w.view(), None, &a, &b, 2.0, None).unwrap();
        assert_eq!(y.k(), Some(k));
        assert_eq!(y.tangent().unwrap().shape(), &[k, 2, 2, 4]);
        // ẏ = 3·0.7·0.1 + 2·[(3·0.7·0.2 + 3·0.5·0.1)·0.3 + (3·0.5·0.2)·0.2]
        let expect = 3.0 * 0.7 * 0.1
            + 2.0 * ((3.0 * 0.7 * 0.2 + 3.0 * 0.5 * 0.1) * 0.3 + (3.0 * 0.5 * 0.2) * 0.2);
        for v in y.tangent().unwrap() {
            assert!((v - expect).abs() < 1e-12, "{v} vs {expect}");
        }
        let slow = lora_linear_reference(&x, w.view(), None, &a, &b, 2.0, None).unwrap();
        assert_eq!(slow.k(), Some(k));
    }
}

#[test]
fn shape_and_k_errors_are_typed() {
    let x: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], Some((2, &[0.0; 12]))));
    let w = Array2::<f64>::zeros((4, 3));
    let a: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], None));
    let b: Dual<f64, Ix2> = fixed(dual(&[4, 2], &[0.0; 8], None));
    let ok = lora_linear(&x, w.view(), None, &a, &b, 1.0, None);
    assert!(ok.is_ok());
    let shape_err = |r: spry::Result<Dual<f64, Ix2>>| {
        matches!(
            r,
            Err(Error::ShapeMismatch {
                op: "lora_linear",
                ..
            })
        )
    };
    // rank mismatch: A has r = 2, B has r = 3
    let b3: Dual<f64, Ix2> = fixed(dual(&[4, 3], &[0.0; 12], None));
    assert!(shape_err(lora_linear(
        &x,
        w.view(),
        None,
        &a,
        &b3,
        1.0,
        None
    )));
    // in mismatch: A [2, 5] against x [.., 3]
    let a5: Dual<f64, Ix2> = fixed(dual(&[2, 5], &[0.0; 10], None));
    assert!(shape_err(lora_linear(
        &x,
        w.view(),
        None,
        &a5,
        &b,
        1.0,
        None
    )));
    // out mismatch: B [5, 2] against W [4, 3]
    let b5: Dual<f64, Ix2> = fixed(dual(&[5, 2], &[0.0; 10], None));
    assert!(shape_err(lora_linear(
        &x,
        w.view(),
        None,
        &a,
        &b5,
        1.0,
        None
    )));
    // x's last axis differs from W's in
    let w5 = Array2::<f64>::zeros((4, 5));
    assert!(shape_err(lora_linear(
        &x,
        w5.view(),
        None,
        &a,
        &b,
        1.0,
        None
    )));
    // bias shape
    let bias = Array1::<f64>::zeros(3);
    assert!(shape_err(lora_linear(
        &x,
        w.view(),
        Some(bias.view()),
        &a,
        &b,
        1.0,
        None
    )));
    // mask shape
    let mask = Array2::<f64>::ones((3, 2));
    assert!(shape_err(lora_linear(
        &x,
        w.view(),
        None,
        &a,
        &b,
        1.0,
        Some(mask.view())
    )));
    // the reference twin checks the same
    assert!(lora_linear_reference(&x, w.view(), None, &a, &b3, 1.0, None).is_err());
    // K mismatch between x (K = 2) and B (K = 3)
    let bk: Dual<f64, Ix2> = fixed(dual(&[4, 2], &[0.0; 8], Some((3, &[0.0; 24]))));
    assert!(matches!(
        lora_linear(&x, w.view(), None, &a, &bk, 1.0, None),
        Err(Error::TangentCountMismatch { lhs: 2, rhs: 3, .. })
    ));
}

#[test]
fn transposed_mask_view_is_honoured() {
    // A non-row-major mask view (a transpose) must be read by logical index, not memory order.
    let x: Dual<f64, Ix2> = fixed(dual(
        &[2, 3],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
        Some((1, &[1.0; 6])),
    ));
    let w = Array2::<f64>::zeros((1, 3));
    let a: Dual<f64, Ix2> = fixed(dual(&[1, 3], &[1.0, 10.0, 100.0], None));
    let b: Dual<f64, Ix2> = fixed(dual(&[1, 1], &[1.0], None));
    let m_t = ndarray::arr2(&[[1.0, 0.0], [0.0, 2.0], [2.0, 0.0]]); // mᵀ
    let m = m_t.t();
    let fast = lora_linear(&x, w.view(), None, &a, &b, 1.0, Some(m)).unwrap();
    let slow = lora_linear_reference(&x, w.view(), None, &a, &b, 1.0, Some(m)).unwrap();
    // row 0: mask [1, 0, 2] → 1 + 600 = 601; row 1: mask [0, 2, 0] → 100
    assert_eq!(flat(fast.primal()), vec![601.0, 100.0]);
    assert_eq!(flat(slow.primal()), vec![601.0, 100.0]);
    assert_eq!(tangent_or_zeros(&fast, 1), vec![201.0, 20.0]);
}

/// PEFT's suffix rule, restricted by `layers_to_transform` to the listed layer indices.
#[test]
fn lora_targets_follow_names_and_layers() {
    use spry::modules::LoraConfig;
    let mut cfg = LoraConfig::new(1, 1.0, 0.0, &["query", "value"]);
    let q3 = "encoder.layer.3.attention.self.query";
    assert!(cfg.targets(q3) && cfg.targets("encoder.layer.0.attention.self.value"));
    assert!(!cfg.targets("encoder.layer.3.attention.self.key") && !cfg.targets("xquery"));
    cfg.layers_to_transform = Some(vec![4, 5]);
    assert!(!cfg.targets(q3));
    assert!(cfg.targets("encoder.layer.5.attention.self.query"));
    assert!(
        !cfg.targets("query"),
        "a path without a layer index is not in any listed layer"
    );
    // the field round-trips through adapter_config.json and is omitted when unset
    let json = serde_json::to_string(&cfg).unwrap();
    assert!(json.contains("\"layers_to_transform\":[4,5]"));
    assert_eq!(serde_json::from_str::<LoraConfig>(&json).unwrap(), cfg);
    let plain = serde_json::to_string(&LoraConfig::default()).unwrap();
    assert!(!plain.contains("layers_to_transform"));
}

#[test]
fn layer_lists_parse_as_a_command_line_spells_them() {
    use spry::modules::parse_layers;
    assert_eq!(parse_layers("all").unwrap(), None);
    assert_eq!(parse_layers("4,5").unwrap(), Some(vec![4, 5]));
    assert_eq!(parse_layers(" 3, 4 ").unwrap(), Some(vec![3, 4]));
    for bad in ["", "4,", "x", "-1", "4;5"] {
        assert!(parse_layers(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn the_tuned_classifier_adapters_sit_on_the_top_two_layers() {
    use spry::modules::LoraConfig;
    let cfg = LoraConfig::tuned_classifier(6);
    cfg.validate().unwrap();
    assert_eq!((cfg.r, cfg.lora_alpha, cfg.lora_dropout), (4, 4.0, 0.0));
    assert_eq!(cfg.layers_to_transform, Some(vec![4, 5]));
    assert!(cfg.targets("encoder.layer.5.attention.self.value"));
    assert!(!cfg.targets("encoder.layer.3.attention.self.query"));
    assert_eq!(cfg.modules_to_save, Some(vec!["classifier".to_string()]));
    assert_eq!(
        LoraConfig::tuned_classifier(1).layers_to_transform,
        Some(vec![0])
    );
}
