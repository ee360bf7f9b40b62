//! The reverse-mode rules of `kernels::reverse` (LayerNorm, GELU in both forms, tanh, attention
//! with padding, causal masks and grouped-query heads, a frozen linear layer with a LoRA adapter,
//! dense and packed, mean and first-token pooling):
//!
//! - every gradient of `L(θ) = ⟨dy, f(θ)⟩` against f64 central differences, coordinate by
//!   coordinate (ε = 1e-6, tolerance 1e-6 relative to the largest gradient entry);
//! - the adjoint identity `⟨dy, J·v⟩ = ⟨Jᵀ·dy, v⟩` against the forward-mode kernel of the same op
//!   along a random direction v (an independent implementation; tolerance 1e-10);
//! - a packed weight's `dy·W` against the widened weight's; typed shape errors.

mod common;

use common::*;
use half::f16;
use ndarray::{Array1, Array2, Array3, Ix1, Ix2, Ix3};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use spry::io::{PackedFormat, PackedMatrix};
use spry::kernels::reverse::{
    attention_backward, first_token_pool_backward, frozen_linear_backward, gelu_backward,
    layer_norm_backward, lora_backward, mean_pool_backward, tanh_backward,
};
use spry::kernels::{
    AttentionShape, FrozenWeight, GeluKind, TILE_ROWS, attention, first_token_pool, gelu,
    layer_norm, lora_linear, mean_pool, tanh,
};
use spry::{Dual, Error};

/// Tolerance of the adjoint identity (two exact computations, accumulation-order noise only).
const ADJOINT_TOL: f64 = 1e-10;

fn dot(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The gradient of `L(θ) = ⟨dy, f(θ)⟩` by central differences, one coordinate at a time.
fn fd_gradient(f: impl Fn(&[f64]) -> Vec<f64>, theta: &[f64], dy: &[f64]) -> Vec<f64> {
    (0..theta.len())
        .map(|i| {
            let mut p = theta.to_vec();
            let mut m = theta.to_vec();
            p[i] += FD_EPS;
            m[i] -= FD_EPS;
            (dot(dy, &f(&p)) - dot(dy, &f(&m))) / (2.0 * FD_EPS)
        })
        .collect()
}

/// `⟨dy, J·v⟩ = ⟨grad, v⟩` to [`ADJOINT_TOL`] relative to the terms' scale.
fn check_adjoint(
    dy: &[f64],
    jv: &[f64],
    grad: &[f64],
    v: &[f64],
    what: &str,
) -> Result<(), TestCaseError> {
    let (lhs, rhs) = (dot(dy, jv), dot(grad, v));
    let scale = 1.0 + dy.iter().zip(jv).map(|(a, b)| (a * b).abs()).sum::<f64>();
    prop_assert!(
        (lhs - rhs).abs() <= ADJOINT_TOL * scale,
        "{}: <dy, Jv> = {} but <J^T dy, v> = {}",
        what,
        lhs,
        rhs
    );
    Ok(())
}

fn tangent_flat<D: ndarray::Dimension>(d: &Dual<f64, D>) -> Vec<f64> {
    tangent_or_zeros(d, 1)
}

// ---- LayerNorm ----------------------------------------------------------------------------------

/// A LayerNorm case: rows, width, ε, x, γ, dy, v.
type LnCase = (usize, usize, f64, Vec<f64>, Vec<f64>, Vec<f64>, Vec<f64>);

fn ln_case() -> impl Strategy<Value = LnCase> {
    (
        1usize..4,
        1usize..7,
        prop::sample::select(vec![1e-5, 0.5, 1e-12]),
    )
        .prop_flat_map(|(rows, n, eps)| {
            (
                Just(rows),
                Just(n),
                Just(eps),
                values(rows * n),
                values(n),
                values(rows * n),
                values(rows * n),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn layer_norm_backward_matches_finite_differences_and_the_jvp(
        (rows, n, eps, x, gamma, dy, v) in ln_case()
    ) {
        let g = Array1::from(gamma.clone());
        let beta = Array1::from(vec![0.3; n]);
        let f = |theta: &[f64]| {
            let x = Dual::<f64, Ix2>::constant(Array2::from_shape_vec((rows, n), theta.to_vec()).unwrap());
            flat(layer_norm(&x, g.view(), Some(beta.view()), eps).unwrap().primal())
        };
        let xa = Array2::from_shape_vec((rows, n), x.clone()).unwrap();
        let dya = Array2::from_shape_vec((rows, n), dy.clone()).unwrap();
        let grad = flat(&layer_norm_backward(xa.view(), g.view(), eps, dya.view()).unwrap());
        // BERT's ε = 1e-12 makes near-constant rows ill-conditioned for differences: the adjoint
        // identity covers it
        if eps >= 1e-5 {
            assert_close(&grad, &fd_gradient(f, &x, &dy), FD_TOL, "layer_norm_backward vs FD")?;
        }
        let xd = fixed::<Ix2>(dual(&[rows, n], &x, Some((1, &v))));
        let jv = tangent_flat(&layer_norm(&xd, g.view(), Some(beta.view()), eps).unwrap());
        check_adjoint(&dy, &jv, &grad, &v, "layer_norm")?;
    }

    #[test]
    fn activation_backward_matches_finite_differences_and_the_jvp(
        (x, dy, v) in (1usize..12).prop_flat_map(|n| (values(n), values(n), values(n)))
    ) {
        let n = x.len();
        let xa = Array1::from(x.clone());
        let dya = Array1::from(dy.clone());
        for kind in [GeluKind::Erf, GeluKind::Tanh] {
            let f = |theta: &[f64]| {
                flat(gelu(&Dual::<f64, Ix1>::constant(Array1::from(theta.to_vec())), kind).unwrap().primal())
            };
            let grad = flat(&gelu_backward(xa.view(), dya.view(), kind).unwrap());
            assert_close(&grad, &fd_gradient(f, &x, &dy), FD_TOL, &format!("gelu {kind:?} vs FD"))?;
            let jv = tangent_flat(&gelu(&fixed::<Ix1>(dual(&[n], &x, Some((1, &v)))), kind).unwrap());
            check_adjoint(&dy, &jv, &grad, &v, "gelu")?;
        }
        let f = |theta: &[f64]| flat(tanh(&Dual::<f64, Ix1>::constant(Array1::from(theta.to_vec()))).unwrap().primal());
        let y = xa.mapv(f64::tanh);
        let grad = flat(&tanh_backward(y.view(), dya.view()).unwrap());
        assert_close(&grad, &fd_gradient(f, &x, &dy), FD_TOL, "tanh vs FD")?;
        let jv = tangent_flat(&tanh(&fixed::<Ix1>(dual(&[n], &x, Some((1, &v))))).unwrap());
        check_adjoint(&dy, &jv, &grad, &v, "tanh")?;
    }
}

// ---- attention ----------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct AttnCase {
    b: usize,
    t: usize,
    s: usize,
    shape: AttentionShape,
    mask: Option<Vec<bool>>,
    theta: Vec<f64>,
    dy: Vec<f64>,
    v: Vec<f64>,
}

impl AttnCase {
    fn q_shape(&self) -> [usize; 3] {
        [self.b, self.t, self.shape.n_heads * self.shape.head_dim]
    }
    fn kv_shape(&self) -> [usize; 3] {
        [self.b, self.s, self.shape.n_kv_heads * self.shape.head_dim]
    }
    fn split<'a>(&self, v: &'a [f64]) -> [&'a [f64]; 3] {
        let nq: usize = self.q_shape().iter().product();
        let nkv: usize = self.kv_shape().iter().product();
        [&v[..nq], &v[nq..nq + nkv], &v[nq + nkv..]]
    }
    fn mask(&self) -> Option<Array2<bool>> {
        self.mask
            .as_ref()
            .map(|m| Array2::from_shape_vec((self.b, self.s), m.clone()).unwrap())
    }
    fn arrays(&self, theta: &[f64]) -> [Array3<f64>; 3] {
        let [q, k, v] = self.split(theta);
        [
            Array3::from_shape_vec(self.q_shape(), q.to_vec()).unwrap(),
            Array3::from_shape_vec(self.kv_shape(), k.to_vec()).unwrap(),
            Array3::from_shape_vec(self.kv_shape(), v.to_vec()).unwrap(),
        ]
    }
}

fn attn_case() -> impl Strategy<Value = AttnCase> {
    (
        1usize..3,
        1usize..4,
        1usize..5,
        prop::sample::select(vec![(1usize, 1usize), (2, 1), (2, 2), (4, 2)]),
        1usize..4,
        any::<bool>(),
        any::<bool>(),
    )
        .prop_flat_map(|(b, t, s, (h, hkv), d, causal, masked)| {
            let shape = AttentionShape {
                n_heads: h,
                n_kv_heads: hkv,
                head_dim: d,
                causal,
            };
            let n = b * t * h * d + 2 * b * s * hkv * d;
            let mask = if masked {
                prop::collection::vec(prop::bool::weighted(0.7), b * s)
                    .prop_map(Some)
                    .boxed()
            } else {
                Just(None).boxed()
            };
            (mask, values(n), values(b * t * h * d), values(n)).prop_map(
                move |(mask, theta, dy, v)| AttnCase {
                    b,
                    t,
                    s,
                    shape,
                    mask,
                    theta,
                    dy,
                    v,
                },
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn attention_backward_matches_finite_differences_and_the_jvp(c in attn_case()) {
        let mask = c.mask();
        let f = |theta: &[f64]| {
            let [q, k, v] = c.arrays(theta).map(Dual::constant);
            flat(attention(&q, &k, &v, mask.as_ref().map(|m| m.view()), &c.shape).unwrap().primal())
        };
        let [q, k, v] = c.arrays(&c.theta);
        let dy = Array3::from_shape_vec(c.q_shape(), c.dy.clone()).unwrap();
        let g = attention_backward(q.view(), k.view(), v.view(), mask.as_ref().map(|m| m.view()), &c.shape, dy.view()).unwrap();
        let grad: Vec<f64> = [flat(&g.q), flat(&g.k), flat(&g.v)].concat();
        assert_close(&grad, &fd_gradient(f, &c.theta, &c.dy), FD_TOL, "attention_backward vs FD")?;
        let shapes = [c.q_shape(), c.kv_shape(), c.kv_shape()];
        let [dq, dk, dv] = std::array::from_fn(|i| {
            fixed::<Ix3>(dual(&shapes[i], c.split(&c.theta)[i], Some((1, c.split(&c.v)[i]))))
        });
        let jv = tangent_flat(&attention(&dq, &dk, &dv, mask.as_ref().map(|m| m.view()), &c.shape).unwrap());
        check_adjoint(&c.dy, &jv, &grad, &c.v, "attention")?;
    }
}

// ---- linear with LoRA ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct LoraCase {
    n: usize,
    inp: usize,
    out: usize,
    r: usize,
    scale: f64,
    w: Vec<f64>,
    bias: Vec<f64>,
    /// x, A, B
    theta: Vec<f64>,
    dy: Vec<f64>,
    v: Vec<f64>,
}

impl LoraCase {
    fn split<'a>(&self, v: &'a [f64]) -> [&'a [f64]; 3] {
        let (nx, na) = (self.n * self.inp, self.r * self.inp);
        [&v[..nx], &v[nx..nx + na], &v[nx + na..]]
    }
    fn shapes(&self) -> [[usize; 2]; 3] {
        [[self.n, self.inp], [self.r, self.inp], [self.out, self.r]]
    }
    fn arrays(&self, theta: &[f64]) -> [Array2<f64>; 3] {
        let parts = self.split(theta);
        let shapes = self.shapes();
        std::array::from_fn(|i| Array2::from_shape_vec(shapes[i], parts[i].to_vec()).unwrap())
    }
}

fn lora_case() -> impl Strategy<Value = LoraCase> {
    (
        1usize..4,
        1usize..5,
        1usize..5,
        1usize..3,
        prop::sample::select(vec![0.5, 2.0]),
    )
        .prop_flat_map(|(n, inp, out, r, scale)| {
            let np = n * inp + r * inp + out * r;
            (
                values(out * inp),
                values(out),
                values(np),
                values(n * out),
                values(np),
            )
                .prop_map(move |(w, bias, theta, dy, v)| LoraCase {
                    n,
                    inp,
                    out,
                    r,
                    scale,
                    w,
                    bias,
                    theta,
                    dy,
                    v,
                })
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn lora_backward_matches_finite_differences_and_the_jvp(c in lora_case()) {
        let w = Array2::from_shape_vec((c.out, c.inp), c.w.clone()).unwrap();
        let bias = Array1::from(c.bias.clone());
        let f = |theta: &[f64]| {
            let [x, a, b] = c.arrays(theta).map(Dual::constant);
            flat(lora_linear(&x, w.view(), Some(bias.view()), &a, &b, c.scale, None).unwrap().primal())
        };
        let [x, a, b] = c.arrays(&c.theta);
        let dy = Array2::from_shape_vec((c.n, c.out), c.dy.clone()).unwrap();
        let mut dx = frozen_linear_backward(dy.view(), &FrozenWeight::Dense(w.clone())).unwrap();
        let g = lora_backward(x.view(), a.view(), b.view(), c.scale, dy.view(), Some(dx.view_mut())).unwrap();
        let grad: Vec<f64> = [flat(&dx), flat(&g.a), flat(&g.b)].concat();
        assert_close(&grad, &fd_gradient(f, &c.theta, &c.dy), FD_TOL, "lora vs FD")?;
        // without dx the factors' gradients are the same
        let g2 = lora_backward(x.view(), a.view(), b.view(), c.scale, dy.view(), None).unwrap();
        prop_assert_eq!(&g2, &g);
        let shapes = c.shapes();
        let [xd, ad, bd] = std::array::from_fn(|i| {
            fixed::<Ix2>(dual(&shapes[i], c.split(&c.theta)[i], Some((1, c.split(&c.v)[i]))))
        });
        let jv = tangent_flat(&lora_linear(&xd, w.view(), Some(bias.view()), &ad, &bd, c.scale, None).unwrap());
        check_adjoint(&c.dy, &jv, &grad, &c.v, "lora")?;
    }
}

/// A Q8_0 or F16 `[rows, cols]` matrix of random stored bytes.
fn random_packed(format: PackedFormat, rows: usize, cols: usize, seed: u64) -> PackedMatrix {
    let vals = seeded(rows * cols + rows * cols / 32 * 2, seed);
    let mut bytes = Vec::new();
    let f16_bytes = |x: f64| f16::from_f64(x).to_bits().to_le_bytes();
    match format {
        PackedFormat::F16 => {
            for &x in &vals[..rows * cols] {
                bytes.extend(f16_bytes(x));
            }
        }
        PackedFormat::Q8_0 => {
            for blk in 0..rows * cols / 32 {
                bytes.extend(f16_bytes(0.05 * vals[blk]));
                bytes.extend((0..32).map(|i| (vals[blk * 32 + i] * 60.0) as i8 as u8));
            }
        }
        other => panic!("{other:?} not used here"),
    }
    PackedMatrix::new(format, rows, cols, bytes).unwrap()
}

/// `dy·W` over a packed weight (several tiles, the last partial) equals the widened weight's,
/// up to the order of the tile sums; in f32 as well.
#[test]
fn packed_frozen_linear_backward_equals_the_widened_weight() {
    let (rows, cols, n) = (2 * TILE_ROWS + 44, 64, 3);
    for format in [PackedFormat::F16, PackedFormat::Q8_0] {
        let p = random_packed(format, rows, cols, 5);
        let dy = Array2::from_shape_vec((n, rows), seeded(n * rows, 6)).unwrap();
        let got =
            frozen_linear_backward(dy.view(), &FrozenWeight::<f64>::Packed(p.clone())).unwrap();
        let want = dy.dot(&p.to_dense::<f64>());
        assert_eq!(got.dim(), (n, cols));
        let scale = 1.0 + want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (a, b) in got.iter().zip(want.iter()) {
            assert!((a - b).abs() <= 1e-12 * scale, "{format}: {a} vs {b}");
        }
        let dy32 = dy.mapv(|v| v as f32);
        let got32 = frozen_linear_backward(dy32.view(), &FrozenWeight::<f32>::Packed(p)).unwrap();
        for (a, b) in got32.iter().zip(want.iter()) {
            assert!(
                (f64::from(*a) - b).abs() <= 1e-4 * scale,
                "{format} f32: {a} vs {b}"
            );
        }
    }
}

// ---- pooling ------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn pooling_backward_matches_finite_differences(
        (b, t, h, mask, x, dy) in (1usize..4, 1usize..5, 1usize..4).prop_flat_map(|(b, t, h)| (
            Just(b), Just(t), Just(h),
            prop::collection::vec(prop::bool::weighted(0.6), b * t),
            values(b * t * h),
            values(b * h),
        ))
    ) {
        // a sequence without any valid token pools to the constant zero row
        let m = Array2::from_shape_vec((b, t), mask).unwrap();
        let dya = Array2::from_shape_vec((b, h), dy.clone()).unwrap();
        let as3 = |theta: &[f64]| Dual::<f64, Ix3>::constant(Array3::from_shape_vec((b, t, h), theta.to_vec()).unwrap());
        let f = |theta: &[f64]| flat(mean_pool(&as3(theta), m.view()).unwrap().primal());
        let grad = flat(&mean_pool_backward(dya.view(), m.view()).unwrap());
        assert_close(&grad, &fd_gradient(f, &x, &dy), FD_TOL, "mean_pool_backward")?;
        let f = |theta: &[f64]| flat(first_token_pool(&as3(theta)).unwrap().primal());
        let grad = flat(&first_token_pool_backward(dya.view(), t).unwrap());
        assert_close(&grad, &fd_gradient(f, &x, &dy), FD_TOL, "first_token_pool_backward")?;
    }
}

// ---- typed errors -------------------------------------------------------------------------------

#[test]
fn reverse_rules_check_their_shapes() {
    let shape_err = |r: spry::Result<()>| matches!(r, Err(Error::ShapeMismatch { .. }));
    let x = Array2::<f64>::zeros((2, 3));
    let g = Array1::<f64>::ones(3);
    assert!(shape_err(
        layer_norm_backward(x.view(), g.view(), 1e-5, Array2::zeros((2, 4)).view()).map(drop)
    ));
    assert!(shape_err(
        layer_norm_backward(x.view(), Array1::ones(4).view(), 1e-5, x.view()).map(drop)
    ));
    assert!(matches!(
        layer_norm_backward(x.view(), g.view(), -1.0, x.view()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(shape_err(
        gelu_backward(x.view(), Array2::zeros((3, 2)).view(), GeluKind::Erf).map(drop)
    ));
    assert!(shape_err(
        tanh_backward(x.view(), Array2::zeros((2, 2)).view()).map(drop)
    ));
    let w = FrozenWeight::Dense(Array2::<f64>::zeros((4, 3)));
    assert!(shape_err(frozen_linear_backward(x.view(), &w).map(drop)));
    let (a, b) = (Array2::<f64>::zeros((1, 3)), Array2::<f64>::zeros((4, 1)));
    assert!(shape_err(
        lora_backward(
            x.view(),
            a.view(),
            b.view(),
            1.0,
            Array2::zeros((2, 5)).view(),
            None
        )
        .map(drop)
    ));
    assert!(shape_err(
        lora_backward(
            x.view(),
            b.view(),
            a.view(),
            1.0,
            Array2::zeros((2, 4)).view(),
            None
        )
        .map(drop)
    ));
    let shape = AttentionShape {
        n_heads: 2,
        n_kv_heads: 1,
        head_dim: 2,
        causal: false,
    };
    let q = Array3::<f64>::zeros((1, 3, 4));
    let kv = Array3::<f64>::zeros((1, 5, 2));
    assert!(attention_backward(q.view(), kv.view(), kv.view(), None, &shape, q.view()).is_ok());
    assert!(shape_err(
        attention_backward(q.view(), kv.view(), kv.view(), None, &shape, kv.view()).map(drop)
    ));
    let mask = Array2::from_elem((1, 4), true);
    assert!(shape_err(
        attention_backward(
            q.view(),
            kv.view(),
            kv.view(),
            Some(mask.view()),
            &shape,
            q.view()
        )
        .map(drop)
    ));
    let bad = AttentionShape {
        n_kv_heads: 3,
        ..shape
    };
    assert!(matches!(
        attention_backward(q.view(), kv.view(), kv.view(), None, &bad, q.view()),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(shape_err(
        mean_pool_backward(x.view(), Array2::from_elem((3, 2), true).view()).map(drop)
    ));
    assert!(shape_err(first_token_pool_backward(x.view(), 0).map(drop)));
}
