//! LayerNorm and RMSNorm: finite differences (x, γ, β all dual), linearity, K stacking, primal
//! equality, symbolic zeros, the Jacobian-form reference twin, ε handling, near-constant rows,
//! f32, and typed errors.

mod common;

use common::*;
use ndarray::{Ix1, IxDyn};
use proptest::prelude::*;
use spry::kernels::{layer_norm, layer_norm_dual, norm_reference, rms_norm, rms_norm_dual};
use spry::{Dual, Error};

fn vec1(x: &[f64], t: Option<(usize, &[f64])>) -> Dual<f64, Ix1> {
    fixed(dual(&[x.len()], x, t))
}

/// Runs the dual norm (`center` = LayerNorm) on flat inputs.
fn run(
    center: bool,
    shape: &[usize],
    x: &Dual<f64, IxDyn>,
    g: &Dual<f64, Ix1>,
    b: &Dual<f64, Ix1>,
    eps: f64,
) -> Dual<f64, IxDyn> {
    if center {
        layer_norm_dual(x, g, Some(b), eps).unwrap()
    } else {
        let _ = shape;
        rms_norm_dual(x, g, eps).unwrap()
    }
}

fn case() -> impl Strategy<Value = (usize, usize, usize, Vec<f64>, Vec<f64>, f64)> {
    (
        1usize..4,
        2usize..7,
        1usize..4,
        prop_oneof![Just(1e-5), Just(0.5), Just(1e-12)],
    )
        .prop_flat_map(|(r, n, k, eps)| {
            let len = r * n + 2 * n;
            (
                Just(r),
                Just(n),
                Just(k),
                values(len),
                values(k * len),
                Just(eps),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn norms_are_exact((r, n, k, theta, dirs, eps) in case()) {
        let len = r * n + 2 * n;
        let split = |v: &[f64]| (v[..r * n].to_vec(), v[r * n..r * n + n].to_vec(), v[r * n + n..].to_vec());
        let (x, g, b) = split(&theta);
        let pick = |part: usize| -> Vec<f64> {
            (0..k).flat_map(|kk| { let (a, b2, c) = split(direction(&dirs, len, kk)); [a, b2, c][part].clone() }).collect()
        };
        let (tx, tg, tb) = (pick(0), pick(1), pick(2));
        for center in [true, false] {
            let xd = dual(&[r, n], &x, Some((k, &tx)));
            let (gd, bd) = (vec1(&g, Some((k, &tg))), vec1(&b, Some((k, &tb))));
            let y = run(center, &[r, n], &xd, &gd, &bd, eps);
            let f = |p: &[f64]| {
                let (x, g, b) = split(p);
                flat(run(center, &[r, n], &dual(&[r, n], &x, None), &vec1(&g, None), &vec1(&b, None), eps).primal())
            };
            let mut v_all = dirs.clone();
            if !center {
                // RMSNorm has no β: its direction must not move the function
                for kk in 0..k { v_all[kk * len + r * n + n..(kk + 1) * len].iter_mut().for_each(|e| *e = 0.0); }
            }
            if eps >= 1e-5 {
                for kk in 0..k {
                    let fd = fd_jvp(f, &theta, direction(&v_all, len, kk));
                    assert_close(direction(&tangent_or_zeros(&y, k), r * n, kk), &fd, FD_TOL, "norm jvp vs fd")?;
                }
            }
            let z = norm_reference(&xd, &gd, if center { Some(&bd) } else { None }, eps, center).unwrap();
            assert_close(&flat(y.primal()), &flat(z.primal()), 1e-9, "norm primal vs reference")?;
            assert_close(&tangent_or_zeros(&y, k), &tangent_or_zeros(&z, k), 1e-9, "norm tangent vs reference")?;
            // primal = plain forward (frozen variant, constant input), bitwise
            let plain = if center {
                layer_norm(&dual(&[r, n], &x, None), gd.primal().view(), Some(bd.primal().view()), eps).unwrap()
            } else {
                rms_norm(&dual(&[r, n], &x, None), gd.primal().view(), eps).unwrap()
            };
            prop_assert!(plain.is_constant());
            prop_assert_eq!(flat(plain.primal()), flat(y.primal()));
            // K stacked = K single runs
            for kk in 0..k {
                let one = |t: &[f64], m: usize| direction(t, m, kk).to_vec();
                let y1 = run(center, &[r, n], &dual(&[r, n], &x, Some((1, &one(&tx, r * n)))), &vec1(&g, Some((1, &one(&tg, n)))), &vec1(&b, Some((1, &one(&tb, n)))), eps);
                assert_close(&tangent_or_zeros(&y1, 1), direction(&tangent_or_zeros(&y, k), r * n, kk), EXACT_TOL, "stacked vs single")?;
            }
            // normalised tangent sums to zero for LayerNorm with γ = 1 and frozen γ, β
            if center {
                let ones = vec![1.0; n];
                let yt = layer_norm(&xd, ndarray::ArrayView1::from(&ones), None, eps).unwrap();
                for row in tangent_or_zeros(&yt, k).chunks(n) {
                    prop_assert!(row.iter().sum::<f64>().abs() < 1e-8 * (1.0 + row.iter().map(|v| v.abs()).sum::<f64>()));
                }
            }
        }
    }

    #[test]
    fn norms_are_linear_in_the_tangent(x in values(12), t1 in values(12), t2 in values(12), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let g = vec![1.3; 4];
        for center in [true, false] {
            let f = |t: &[f64]| {
                let xd = dual(&[3, 4], &x, Some((1, t)));
                let y = if center { layer_norm(&xd, ndarray::ArrayView1::from(&g), None, 1e-5) } else { rms_norm(&xd, ndarray::ArrayView1::from(&g), 1e-5) };
                tangent_or_zeros(&y.unwrap(), 1)
            };
            let mix: Vec<f64> = t1.iter().zip(&t2).map(|(p, q)| a * p + b * q).collect();
            let expect: Vec<f64> = f(&t1).iter().zip(f(&t2)).map(|(p, q)| a * p + b * q).collect();
            assert_close(&f(&mix), &expect, EXACT_TOL, "linearity")?;
        }
    }
}

#[test]
fn scale_invariance_with_zero_epsilon() {
    // with ε = 0, LayerNorm and RMSNorm are invariant to scaling x: ẋ = x gives ẏ = 0
    let x = [0.3, -1.2, 2.0, 0.7, -0.4];
    let g = [1.0; 5];
    let y = layer_norm(
        &dual(&[5], &x, Some((1, &x))),
        ndarray::ArrayView1::from(&g),
        None,
        0.0,
    )
    .unwrap();
    assert!(tangent_or_zeros(&y, 1).iter().all(|v| v.abs() < 1e-12));
    let y = rms_norm(
        &dual(&[5], &x, Some((1, &x))),
        ndarray::ArrayView1::from(&g),
        0.0,
    )
    .unwrap();
    assert!(tangent_or_zeros(&y, 1).iter().all(|v| v.abs() < 1e-12));
}

#[test]
fn near_constant_rows_with_bert_epsilon() {
    // rows that are constant up to 1e-7: huge r, but finite values that match the reference
    let x: Vec<f64> = (0..8).map(|i| 3.0 + 1e-7 * (i as f64 - 3.5)).collect();
    let t: Vec<f64> = (0..8).map(|i| (i as f64).sin()).collect();
    let g: Vec<f64> = vec![0.9; 8];
    let b: Vec<f64> = vec![0.1; 8];
    let xd = dual(&[1, 8], &x, Some((1, &t)));
    let y = layer_norm_dual(&xd, &vec1(&g, None), Some(&vec1(&b, None)), 1e-12).unwrap();
    let z = norm_reference(&xd, &vec1(&g, None), Some(&vec1(&b, None)), 1e-12, true).unwrap();
    assert!(
        flat(y.primal())
            .iter()
            .chain(tangent_or_zeros(&y, 1).iter())
            .all(|v| v.is_finite())
    );
    let scale = tangent_or_zeros(&z, 1)
        .iter()
        .fold(1.0f64, |m, v| m.max(v.abs()));
    for (a, b) in tangent_or_zeros(&y, 1).iter().zip(tangent_or_zeros(&z, 1)) {
        assert!((a - b).abs() <= 1e-6 * scale, "{a} vs {b}");
    }
    // an exactly constant row: x̂ = 0, output = β, finite
    let c = layer_norm(
        &dual(&[1, 8], &[2.5; 8], Some((1, &t))),
        ndarray::ArrayView1::from(&g),
        Some(ndarray::ArrayView1::from(&b)),
        1e-12,
    )
    .unwrap();
    assert!(flat(c.primal()).iter().all(|v| (v - 0.1).abs() < 1e-12));
    assert!(tangent_or_zeros(&c, 1).iter().all(|v| v.is_finite()));
    // f32 on the near-constant row stays finite
    let y32 = layer_norm(
        &dual_to_f32(&xd),
        ndarray::ArrayView1::from(&g.iter().map(|&v| v as f32).collect::<Vec<_>>()),
        None,
        1e-12,
    )
    .unwrap();
    assert!(
        y32.primal()
            .iter()
            .chain(y32.tangent().unwrap().iter())
            .all(|v| v.is_finite())
    );
}

#[test]
fn k_thirty_two_and_f32_agree_with_f64() {
    let x: Vec<f64> = (0..24).map(|i| ((i * 5) % 7) as f64 / 3.0 - 1.0).collect();
    let t: Vec<f64> = (0..32 * 24)
        .map(|i| ((i * 3) % 13) as f64 / 6.0 - 1.0)
        .collect();
    let g: Vec<f64> = (0..6).map(|i| 0.5 + i as f64 / 10.0).collect();
    let xd = dual(&[4, 6], &x, Some((32, &t)));
    let y = layer_norm(&xd, ndarray::ArrayView1::from(&g), None, 1e-5).unwrap();
    assert_eq!(y.tangent().unwrap().shape(), &[32, 4, 6]);
    let g32: Vec<f32> = g.iter().map(|&v| v as f32).collect();
    let y32 = layer_norm(
        &dual_to_f32(&xd),
        ndarray::ArrayView1::from(&g32),
        None,
        1e-5,
    )
    .unwrap();
    for (a, b) in flat_f32(y32.tangent().unwrap())
        .iter()
        .zip(y.tangent().unwrap().iter())
    {
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let r32 = rms_norm(&dual_to_f32(&xd), ndarray::ArrayView1::from(&g32), 1e-5).unwrap();
    let r64 = rms_norm(&xd, ndarray::ArrayView1::from(&g), 1e-5).unwrap();
    for (a, b) in flat_f32(r32.tangent().unwrap())
        .iter()
        .zip(r64.tangent().unwrap().iter())
    {
        assert!((a - b).abs() < 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

#[test]
fn errors_are_typed() {
    let x = dual(&[2, 3], &[0.0; 6], Some((2, &[0.0; 12])));
    let g = [1.0; 4];
    assert!(matches!(
        layer_norm(&x, ndarray::ArrayView1::from(&g), None, 1e-5),
        Err(Error::ShapeMismatch {
            op: "layer_norm",
            ..
        })
    ));
    let g3 = [1.0; 3];
    for eps in [-1.0, f64::NAN, f64::INFINITY] {
        assert!(matches!(
            rms_norm(&x, ndarray::ArrayView1::from(&g3), eps),
            Err(Error::InvalidArgument { op: "rms_norm", .. })
        ));
    }
    let gd = vec1(&g3, Some((3, &[0.0; 9])));
    assert!(matches!(
        layer_norm_dual(&x, &gd, None, 1e-5),
        Err(Error::TangentCountMismatch { .. })
    ));
    let b2 = [0.0; 2];
    assert!(matches!(
        layer_norm(
            &x,
            ndarray::ArrayView1::from(&g3),
            Some(ndarray::ArrayView1::from(&b2)),
            1e-5
        ),
        Err(Error::ShapeMismatch { .. })
    ));
}
