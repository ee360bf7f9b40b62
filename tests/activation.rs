//! Activations (GELU erf/tanh, SiLU, tanh, SwiGLU): finite differences, linearity, K stacking,
//! primal equality, symbolic zeros, reference twins, extreme inputs, f32.

mod common;

use common::*;
use ndarray::{Ix2, IxDyn};
use proptest::prelude::*;
use spry::kernels::{
    GeluKind, gelu, gelu_reference, silu, silu_reference, swiglu, swiglu_reference, tanh,
    tanh_reference,
};
use spry::{Dual, Error, Result};

type Unary = fn(&Dual<f64, IxDyn>) -> Result<Dual<f64, IxDyn>>;

fn gelu_erf(x: &Dual<f64, IxDyn>) -> Result<Dual<f64, IxDyn>> {
    gelu(x, GeluKind::Erf)
}
fn gelu_tanh(x: &Dual<f64, IxDyn>) -> Result<Dual<f64, IxDyn>> {
    gelu(x, GeluKind::Tanh)
}
fn gelu_erf_ref(x: &Dual<f64, IxDyn>) -> Result<Dual<f64, IxDyn>> {
    gelu_reference(x, GeluKind::Erf)
}
fn gelu_tanh_ref(x: &Dual<f64, IxDyn>) -> Result<Dual<f64, IxDyn>> {
    gelu_reference(x, GeluKind::Tanh)
}

/// (name, fast, reference)
fn unaries() -> Vec<(&'static str, Unary, Unary)> {
    vec![
        ("gelu_erf", gelu_erf, gelu_erf_ref),
        ("gelu_tanh", gelu_tanh, gelu_tanh_ref),
        ("silu", silu, silu_reference),
        ("tanh", tanh, tanh_reference),
    ]
}

/// Shapes, values scaled by `scale`, K directions.
fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<f64>, Vec<f64>, f64)> {
    (
        1usize..4,
        1usize..6,
        1usize..4,
        prop_oneof![Just(1.0), Just(4.0)],
    )
        .prop_flat_map(|(r, c, k, scale)| {
            (
                Just(r),
                Just(c),
                Just(k),
                values(r * c),
                values(k * r * c),
                Just(scale),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn unary_activations_are_exact((r, c, k, x, t, scale) in case()) {
        let x: Vec<f64> = x.iter().map(|v| v * scale).collect();
        let n = r * c;
        for (name, fast, slow) in unaries() {
            let d = dual(&[r, c], &x, Some((k, &t)));
            let y = fast(&d).unwrap();
            // JVP vs central differences, per direction
            for kk in 0..k {
                let fd = fd_jvp(|p| flat(fast(&dual(&[r, c], p, None)).unwrap().primal()), &x, direction(&t, n, kk));
                assert_close(direction(&tangent_or_zeros(&y, k), n, kk), &fd, FD_TOL, name)?;
            }
            // fast = reference
            let z = slow(&d).unwrap();
            assert_close(&flat(y.primal()), &flat(z.primal()), EXACT_TOL, name)?;
            assert_close(&tangent_or_zeros(&y, k), &tangent_or_zeros(&z, k), EXACT_TOL, name)?;
            // primal of the dual pass = plain forward, bitwise
            let plain = fast(&dual(&[r, c], &x, None)).unwrap();
            prop_assert!(plain.is_constant());
            prop_assert_eq!(flat(plain.primal()), flat(y.primal()));
            // K stacked = K single runs; linearity
            for kk in 0..k {
                let single = fast(&dual(&[r, c], &x, Some((1, direction(&t, n, kk))))).unwrap();
                assert_close(&tangent_or_zeros(&single, 1), direction(&tangent_or_zeros(&y, k), n, kk), EXACT_TOL, name)?;
            }
            let t2: Vec<f64> = t[..n].iter().map(|v| 3.0 * v - 1.0).collect();
            let mix: Vec<f64> = t[..n].iter().zip(&t2).map(|(a, b)| 2.0 * a - 0.5 * b).collect();
            let run = |v: &[f64]| tangent_or_zeros(&fast(&dual(&[r, c], &x, Some((1, v)))).unwrap(), 1);
            let expect: Vec<f64> = run(&t[..n]).iter().zip(run(&t2)).map(|(a, b)| 2.0 * a - 0.5 * b).collect();
            assert_close(&run(&mix), &expect, EXACT_TOL, name)?;
        }
    }

    #[test]
    fn swiglu_is_exact((r, c, k, x, t, _s) in case(), u in values(60), tu in values(240)) {
        let n = r * c;
        let (u, tu) = (&u[..n], &tu[..k * n]);
        let g = dual(&[r, c], &x, Some((k, &t)));
        let up = dual(&[r, c], u, Some((k, tu)));
        let y = swiglu(&g, &up).unwrap();
        let f = |p: &[f64]| flat(swiglu(&dual(&[r, c], &p[..n], None), &dual(&[r, c], &p[n..], None)).unwrap().primal());
        let theta: Vec<f64> = x.iter().chain(u).copied().collect();
        for kk in 0..k {
            let v: Vec<f64> = direction(&t, n, kk).iter().chain(direction(tu, n, kk)).copied().collect();
            assert_close(direction(&tangent_or_zeros(&y, k), n, kk), &fd_jvp(f, &theta, &v), FD_TOL, "swiglu fd")?;
        }
        let z = swiglu_reference(&g, &up).unwrap();
        assert_close(&tangent_or_zeros(&y, k), &tangent_or_zeros(&z, k), EXACT_TOL, "swiglu ref")?;
        prop_assert_eq!(flat(y.primal()), flat(swiglu(&dual(&[r, c], &x, None), &dual(&[r, c], u, None)).unwrap().primal()));
        // one side constant: its term vanishes, the other matches the reference
        for (gd, ud) in [(g.clone(), dual(&[r, c], u, None)), (dual(&[r, c], &x, None), up.clone())] {
            let a = swiglu(&gd, &ud).unwrap();
            let b = swiglu_reference(&gd, &ud).unwrap();
            assert_close(&tangent_or_zeros(&a, k), &tangent_or_zeros(&b, k), EXACT_TOL, "swiglu one-sided")?;
        }
        prop_assert!(swiglu(&dual(&[r, c], &x, None), &dual(&[r, c], u, None)).unwrap().is_constant());
    }
}

#[test]
fn extreme_inputs_stay_finite_and_match_differences() {
    let xs = [-30.0, -10.0, -1e-9, 0.0, 1e-9, 1.0, 10.0, 30.0];
    let t = vec![1.0; xs.len()];
    for (name, fast, _) in unaries() {
        let y = fast(&dual(&[xs.len()], &xs, Some((1, &t)))).unwrap();
        assert!(
            y.primal()
                .iter()
                .chain(y.tangent().unwrap().iter())
                .all(|v| v.is_finite()),
            "{name}"
        );
        let fd = fd_jvp(
            |p| flat(fast(&dual(&[xs.len()], p, None)).unwrap().primal()),
            &xs,
            &t,
        );
        for (a, b) in tangent_or_zeros(&y, 1).iter().zip(&fd) {
            assert!((a - b).abs() < 1e-6, "{name}: {a} vs {b}");
        }
    }
}

#[test]
fn gelu_forms_differ_slightly() {
    let xs: Vec<f64> = (-40..=40).map(|i| i as f64 / 10.0).collect();
    let e = gelu(&dual(&[xs.len()], &xs, None), GeluKind::Erf).unwrap();
    let t = gelu(&dual(&[xs.len()], &xs, None), GeluKind::Tanh).unwrap();
    let max = flat(e.primal())
        .iter()
        .zip(flat(t.primal()))
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(max > 1e-5 && max < 1e-3, "max |erf − tanh| = {max}");
}

#[test]
fn k_thirty_two_and_f32() {
    let x: Vec<f64> = (0..12).map(|i| i as f64 / 3.0 - 2.0).collect();
    let t: Vec<f64> = (0..32 * 12)
        .map(|i| ((i * 7) % 11) as f64 / 5.0 - 1.0)
        .collect();
    let d = dual(&[3, 4], &x, Some((32, &t)));
    for (name, fast, _) in unaries() {
        let y = fast(&d).unwrap();
        assert_eq!(y.tangent().unwrap().shape(), &[32, 3, 4]);
        let y32 = match name {
            "gelu_erf" => gelu(&dual_to_f32(&d), GeluKind::Erf),
            "gelu_tanh" => gelu(&dual_to_f32(&d), GeluKind::Tanh),
            "silu" => silu(&dual_to_f32(&d)),
            _ => tanh(&dual_to_f32(&d)),
        }
        .unwrap();
        for (a, b) in flat_f32(y32.tangent().unwrap())
            .iter()
            .zip(y.tangent().unwrap().iter())
        {
            assert!(
                (a - b).abs() < 1e-5 * (1.0 + b.abs()),
                "{name} f32 {a} vs f64 {b}"
            );
        }
    }
}

#[test]
fn swiglu_errors_are_typed() {
    let a: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], Some((2, &[0.0; 12]))));
    let b: Dual<f64, Ix2> = fixed(dual(&[2, 2], &[0.0; 4], None));
    assert!(matches!(
        swiglu(&a, &b),
        Err(Error::ShapeMismatch { op: "swiglu", .. })
    ));
    let c: Dual<f64, Ix2> = fixed(dual(&[2, 3], &[0.0; 6], Some((3, &[0.0; 18]))));
    assert!(matches!(
        swiglu(&a, &c),
        Err(Error::TangentCountMismatch { lhs: 2, rhs: 3, .. })
    ));
}
