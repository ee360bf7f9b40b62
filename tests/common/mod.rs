//! Shared test helpers: finite differences, tolerant comparisons, random inputs.
#![allow(dead_code)]

use ndarray::{Array, ArrayD, Dimension, IxDyn};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use spry::Dual;

/// Step of the f64 central differences.
pub const FD_EPS: f64 = 1e-6;
/// Tolerance of JVP-vs-finite-difference checks in f64, relative to the output's scale.
pub const FD_TOL: f64 = 1e-6;
/// Tolerance of fast-vs-reference and K-stacked-vs-single checks (accumulation-order noise).
pub const EXACT_TOL: f64 = 1e-11;

/// Central finite difference `(f(x + εv) − f(x − εv)) / 2ε`.
pub fn fd_jvp(f: impl Fn(&[f64]) -> Vec<f64>, x: &[f64], v: &[f64]) -> Vec<f64> {
    let plus: Vec<f64> = x.iter().zip(v).map(|(a, b)| a + FD_EPS * b).collect();
    let minus: Vec<f64> = x.iter().zip(v).map(|(a, b)| a - FD_EPS * b).collect();
    let (fp, fm) = (f(&plus), f(&minus));
    fp.iter()
        .zip(&fm)
        .map(|(p, m)| (p - m) / (2.0 * FD_EPS))
        .collect()
}

/// Asserts `|actual − expected| ≤ tol · (1 + max|expected|)` element-wise.
pub fn assert_close(
    actual: &[f64],
    expected: &[f64],
    tol: f64,
    what: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(actual.len(), expected.len(), "{}: length", what);
    let scale = 1.0 + expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (a, e)) in actual.iter().zip(expected).enumerate() {
        prop_assert!(
            (a - e).abs() <= tol * scale,
            "{}: element {} differs: {} vs {} (tol {} x scale {})",
            what,
            i,
            a,
            e,
            tol,
            scale
        );
    }
    Ok(())
}

/// Flattens an array (any layout) to a row-major vector.
pub fn flat<D: Dimension>(a: &Array<f64, D>) -> Vec<f64> {
    a.iter().copied().collect()
}

/// Builds an array of the given shape from a slice (row-major).
pub fn arr(shape: &[usize], data: &[f64]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(shape), data.to_vec()).expect("shape matches data")
}

/// Builds a dual value of the given primal shape from a primal slice and K tangent directions
/// concatenated in `tangent` (`None` = symbolic zero).
pub fn dual(shape: &[usize], primal: &[f64], tangent: Option<(usize, &[f64])>) -> Dual<f64, IxDyn> {
    let p = arr(shape, primal);
    match tangent {
        None => Dual::constant(p),
        Some((k, t)) => {
            let mut ts = vec![k];
            ts.extend_from_slice(shape);
            Dual::new(p, arr(&ts, t)).expect("consistent dual")
        }
    }
}

/// Converts an IxDyn dual into a fixed-rank one.
pub fn fixed<D: Dimension>(d: Dual<f64, IxDyn>) -> Dual<f64, D> {
    let (p, t) = d.into_parts();
    let p = p.into_dimensionality::<D>().expect("rank");
    let t = t.map(|t| t.into_dimensionality::<D::Larger>().expect("rank"));
    Dual::with_tangent(p, t).expect("consistent")
}

/// The tangent of `d` flattened (direction-major), or zeros of `k · len` for a symbolic zero.
pub fn tangent_or_zeros<D: Dimension>(d: &Dual<f64, D>, k: usize) -> Vec<f64> {
    match d.tangent() {
        Some(t) => t.iter().copied().collect(),
        None => vec![0.0; k * d.primal().len()],
    }
}

/// Direction `k` of a flat direction-major tangent of `len` elements per direction.
pub fn direction(t: &[f64], len: usize, k: usize) -> &[f64] {
    &t[k * len..(k + 1) * len]
}

/// A strategy for `n` values in `[-2, 2]`.
pub fn values(n: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(-2.0f64..2.0, n)
}

/// Converts an f64 dual value to f32 (for the f32 instantiation checks).
pub fn dual_to_f32<D: Dimension>(d: &Dual<f64, D>) -> Dual<f32, D> {
    let p = d.primal().mapv(|v| v as f32);
    let t = d.tangent().map(|t| t.mapv(|v| v as f32));
    Dual::with_tangent(p, t).expect("consistent")
}

/// Flattens an f32 array to f64 values (row-major).
pub fn flat_f32<D: Dimension>(a: &Array<f32, D>) -> Vec<f64> {
    a.iter().map(|&v| f64::from(v)).collect()
}

/// A strategy for `n` dropout-mask entries: `0` (dropped) or `1/(1 − p)` with `p = 0.25`.
pub fn dropout_mask(n: usize) -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(prop::bool::weighted(0.75), n).prop_map(|keep| {
        keep.iter()
            .map(|&k| if k { 1.0 / 0.75 } else { 0.0 })
            .collect()
    })
}

/// Linear combination `a·x + b·y` of two equally long vectors.
pub fn lincomb(a: f64, x: &[f64], b: f64, y: &[f64]) -> Vec<f64> {
    x.iter().zip(y).map(|(p, q)| a * p + b * q).collect()
}

/// Rounds every value to f32 and back, so an f64 run sees exactly the f32 run's inputs.
pub fn round_f32(v: &[f64]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x as f32)).collect()
}

/// `n` deterministic values in `[-2, 2)` from `seed` (large cases: cheaper than proptest values).
pub fn seeded(n: usize, seed: u64) -> Vec<f64> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64 * 4.0 - 2.0
        })
        .collect()
}

/// Gives every LoRA B matrix and the classifier bias random `N(0, scale²)` values (PEFT starts B
/// at zero, which would make every A-direction term vanish).
pub fn randomise_b<F: spry::Float>(tr: &mut spry::modules::Trainable<F>, seed: u64, scale: f64) {
    let mut r = spry::rng::KeyedRng::new(seed, spry::rng::Domain::Init, &[0x7e57, 1]);
    for i in 0..tr.len() {
        let name = tr.names()[i].clone();
        if name.ends_with("lora_B.weight") || name.ends_with("classifier.bias") {
            let shape = tr.value(i).shape().to_vec();
            let v = ArrayD::from_shape_simple_fn(IxDyn(&shape), || F::from_f64(scale * r.normal()));
            tr.set_value(i, v).unwrap();
        }
    }
    assert!(
        tr.names().iter().any(|n| n.ends_with("lora_B.weight")),
        "the model has no LoRA adapter"
    );
}
