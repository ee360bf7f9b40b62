//! Perturbation directions: replay from the key bit for bit, independence of keys, N(0, 1)
//! statistics, and tangents only on the assigned parameters.

use ndarray::{ArrayD, IxDyn};
use spry::federated::{StepKey, direction, directions};
use spry::modules::Trainable;
use spry::rng::{Domain, KeyedRng};

/// Three units: p0 `[2, 3]`, p1 `[4]`, p2 `[3, 2]`, p3 `[5]`.
fn registry() -> Trainable<f64> {
    let mut t = Trainable::new();
    let z = |s: &[usize]| ArrayD::<f64>::zeros(IxDyn(s));
    t.push_unit(
        "u0",
        vec![("p0".into(), z(&[2, 3])), ("p1".into(), z(&[4]))],
    )
    .unwrap();
    t.push_unit("u1", vec![("p2".into(), z(&[3, 2]))]).unwrap();
    t.push_unit("u2", vec![("p3".into(), z(&[5]))]).unwrap();
    t
}

fn key() -> StepKey {
    StepKey {
        seed: 1234,
        round: 7,
        client: 42,
        step: 3,
    }
}

fn bits(a: &ArrayD<f64>) -> Vec<u64> {
    a.iter().map(|v| v.to_bits()).collect()
}

/// The documented key layout, written out: the `Perturbation` stream keyed by
/// `(seed, [round, client, step, k, param])`, filled in row-major order.
fn documented(key: StepKey, k: u64, param: u64, n: usize) -> Vec<u64> {
    let mut rng = KeyedRng::new(
        key.seed,
        Domain::Perturbation,
        &[key.round, key.client, key.step, k, param],
    );
    (0..n).map(|_| rng.normal().to_bits()).collect()
}

#[test]
fn server_regenerates_client_directions_bit_for_bit() {
    let t = registry();
    let k = 3;
    // The client's directions over its assigned parameters.
    let client = directions(&t, &[0, 2], k, key()).unwrap();
    assert_eq!(client.k(), k);
    // A server replays each (k, param) alone from the key, in a fresh process state.
    for p in [0usize, 2] {
        let tang = client.get(p).unwrap();
        let shape = t.value(p).shape().to_vec();
        for kk in 0..k {
            let server = direction::<f64>(key(), kk, p, &shape);
            let client_k = tang.index_axis(ndarray::Axis(0), kk).to_owned();
            assert_eq!(bits(&server), bits(&client_k), "param {p} k {kk}");
            assert_eq!(
                bits(&server),
                documented(key(), kk as u64, p as u64, server.len()),
                "param {p} k {kk}: documented key layout"
            );
        }
    }
    // Twice in a row, the same.
    let again = directions(&t, &[0, 2], k, key()).unwrap();
    assert_eq!(client, again);
}

#[test]
fn direction_of_a_param_does_not_depend_on_the_other_params_or_on_k() {
    let t = registry();
    let all = directions(&t, &[0, 1, 2, 3], 4, key()).unwrap();
    let one = directions(&t, &[2], 2, key()).unwrap();
    let a = all.get(2).unwrap();
    let b = one.get(2).unwrap();
    for kk in 0..2 {
        let x = a.index_axis(ndarray::Axis(0), kk).to_owned();
        let y = b.index_axis(ndarray::Axis(0), kk).to_owned();
        assert_eq!(bits(&x), bits(&y), "k {kk}");
    }
}

#[test]
fn different_keys_give_different_directions() {
    let shape = [64usize];
    let base = direction::<f64>(key(), 1, 2, &shape);
    let k0 = key();
    let variants = [
        (
            "seed",
            StepKey {
                seed: k0.seed + 1,
                ..k0
            },
            1,
            2,
        ),
        (
            "round",
            StepKey {
                round: k0.round + 1,
                ..k0
            },
            1,
            2,
        ),
        (
            "client",
            StepKey {
                client: k0.client + 1,
                ..k0
            },
            1,
            2,
        ),
        (
            "step",
            StepKey {
                step: k0.step + 1,
                ..k0
            },
            1,
            2,
        ),
        ("k", k0, 2, 2),
        ("param", k0, 1, 3),
        // swapping two key components must not give the same stream
        (
            "round<->client",
            StepKey {
                round: k0.client,
                client: k0.round,
                ..k0
            },
            1,
            2,
        ),
    ];
    let mut seen = vec![bits(&base)];
    for (what, key, k, p) in variants {
        let d = direction::<f64>(key, k, p, &shape);
        let b = bits(&d);
        assert!(
            b.iter().zip(&seen[0]).all(|(x, y)| x != y),
            "{what}: some coordinate coincides with the base direction"
        );
        assert!(!seen.contains(&b), "{what}: repeats an earlier direction");
        seen.push(b);
    }
    // Directions k = 0 and k = 1 of one directions() call differ everywhere.
    let t = registry();
    let d = directions(&t, &[3], 2, key()).unwrap();
    let tang = d.get(3).unwrap();
    let d0 = tang.index_axis(ndarray::Axis(0), 0);
    let d1 = tang.index_axis(ndarray::Axis(0), 1);
    assert!(d0.iter().zip(d1.iter()).all(|(a, b)| a != b));
}

/// Mean, variance, the mass within one standard deviation and the correlation between
/// directions, each checked against N(0, 1) with a tolerance of 5 standard errors:
/// - mean: SE = 1/√n;
/// - variance: SE = √(2/n) (the variance of z² is 2);
/// - P(|z| < 1) = 0.682689: SE = √(p(1−p)/n);
/// - correlation of independent draws: SE = 1/√n.
#[test]
fn directions_are_standard_normal() {
    let n_per = 4096;
    let shape = [n_per];
    let mut xs = Vec::new();
    let mut pairs = Vec::new();
    for client in 0..8u64 {
        for step in 0..4u64 {
            let key = StepKey {
                seed: 99,
                round: 1,
                client,
                step,
            };
            let a = direction::<f64>(key, 0, 5, &shape);
            let b = direction::<f64>(key, 1, 5, &shape);
            xs.extend(a.iter().copied());
            pairs.extend(a.iter().zip(b.iter()).map(|(x, y)| x * y));
        }
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    assert!(mean.abs() < 5.0 / n.sqrt(), "mean {mean}");
    assert!((var - 1.0).abs() < 5.0 * (2.0 / n).sqrt(), "variance {var}");
    let p1 = 0.682_689_492_137_086;
    let frac = xs.iter().filter(|x| x.abs() < 1.0).count() as f64 / n;
    assert!(
        (frac - p1).abs() < 5.0 * (p1 * (1.0 - p1) / n).sqrt(),
        "P(|z|<1) = {frac}"
    );
    // Tails: P(|z| > 3) = 0.0026998, a Bernoulli proportion as above.
    let p3 = 0.002_699_796_063_260_2;
    let frac3 = xs.iter().filter(|x| x.abs() > 3.0).count() as f64 / n;
    assert!(
        (frac3 - p3).abs() < 5.0 * (p3 * (1.0 - p3) / n).sqrt(),
        "P(|z|>3) = {frac3}"
    );
    // E[z_k0 · z_k1] = 0 with variance 1 per product.
    let corr = pairs.iter().sum::<f64>() / pairs.len() as f64;
    assert!(
        corr.abs() < 5.0 / (pairs.len() as f64).sqrt(),
        "correlation {corr}"
    );
}

#[test]
fn tangents_only_on_assigned_params_with_k_leading_axis() {
    let t = registry();
    for (assigned, k) in [(vec![1usize], 1usize), (vec![0, 3], 4), (vec![], 2)] {
        let d = directions(&t, &assigned, k, key()).unwrap();
        assert_eq!(d.per_param().len(), t.len());
        for p in 0..t.len() {
            match d.get(p) {
                Some(tang) => {
                    assert!(assigned.contains(&p), "param {p} got a tangent");
                    let mut expect = vec![k];
                    expect.extend_from_slice(t.value(p).shape());
                    assert_eq!(tang.shape(), expect.as_slice());
                    assert!(tang.iter().all(|v| v.is_finite() && *v != 0.0));
                }
                None => assert!(!assigned.contains(&p), "param {p} lacks its tangent"),
            }
        }
        assert_eq!(d.is_empty(), assigned.is_empty());
    }
}

#[test]
fn unknown_param_index_is_an_error() {
    let t = registry();
    let err = directions(&t, &[0, 4], 1, key()).unwrap_err();
    assert!(
        matches!(err, spry::Error::InvalidArgument { .. }),
        "{err:?}"
    );
}

#[test]
fn f32_directions_are_the_f64_draws_rounded() {
    let d64 = direction::<f64>(key(), 0, 1, &[3, 7]);
    let d32 = direction::<f32>(key(), 0, 1, &[3, 7]);
    assert_eq!(d32.shape(), &[3, 7]);
    for (a, b) in d64.iter().zip(d32.iter()) {
        assert_eq!(*a as f32, *b);
    }
}

/// A LoRA pair whose B `[3, 1]` holds `b`, and a second tensor (a head) `[2]`.
fn lora_registry(b: [f64; 3]) -> Trainable<f64> {
    let mut t = Trainable::new();
    t.push_unit(
        "layer.0.q",
        vec![
            (
                "layer.0.q.lora_A.weight".into(),
                ArrayD::ones(IxDyn(&[1, 2])),
            ),
            (
                "layer.0.q.lora_B.weight".into(),
                ArrayD::from_shape_vec(IxDyn(&[3, 1]), b.to_vec()).unwrap(),
            ),
        ],
    )
    .unwrap();
    t.push_unit(
        "head",
        vec![("head.weight".into(), ArrayD::zeros(IxDyn(&[2])))],
    )
    .unwrap();
    t
}

#[test]
fn guided_directions_lead_along_b_and_stay_unbiased() {
    use spry::federated::{DirectionScheme, directions_with};
    let t = lora_registry([3.0, 0.0, 4.0]);
    let w = [0.6, 0.0, 0.8];
    let params = [0, 1, 2];
    let k = 4;
    let d = directions_with(&t, &params, k, key(), DirectionScheme::GuidedByLoraB).unwrap();
    let b = d.get(1).unwrap();
    // direction 0: ±√K·ŵ; directions 1..K orthogonal to ŵ
    let lead: Vec<f64> = b.index_axis(ndarray::Axis(0), 0).iter().copied().collect();
    let s = lead[0] / (2.0 * w[0]);
    assert!((s.abs() - 1.0).abs() < 1e-12, "{lead:?}");
    for (x, wi) in lead.iter().zip(w) {
        assert!((x - s * 2.0 * wi).abs() < 1e-12);
    }
    for kk in 1..k {
        let v = b.index_axis(ndarray::Axis(0), kk);
        let dot: f64 = v.iter().zip(w).map(|(x, wi)| x * wi).sum();
        assert!(dot.abs() < 1e-12);
    }
    // A and the head keep their Gaussian directions; the same key replays bit for bit
    let plain = directions(&t, &params, k, key()).unwrap();
    assert_eq!(d.get(0), plain.get(0));
    assert_eq!(d.get(2), plain.get(2));
    let again = directions_with(&t, &params, k, key(), DirectionScheme::GuidedByLoraB).unwrap();
    assert_eq!(bits(b), bits(again.get(1).unwrap()));
    // a zero B, or K = 1, falls back to Gaussian directions
    let zero = lora_registry([0.0; 3]);
    let g = directions_with(&zero, &params, k, key(), DirectionScheme::GuidedByLoraB).unwrap();
    assert_eq!(g, directions(&zero, &params, k, key()).unwrap());
    let one = directions_with(&t, &params, 1, key(), DirectionScheme::GuidedByLoraB).unwrap();
    assert_eq!(one, directions(&t, &params, 1, key()).unwrap());
    // E[(1/K) Σ_k v vᵀ] = I over B and the head jointly (the estimator stays unbiased)
    let n = 6000u64;
    let mut m = [[0.0f64; 5]; 5];
    for step in 0..n {
        let key = StepKey { step, ..key() };
        let d = directions_with(&t, &[1, 2], k, key, DirectionScheme::GuidedByLoraB).unwrap();
        let (vb, vh) = (d.get(1).unwrap(), d.get(2).unwrap());
        for kk in 0..k {
            let v: Vec<f64> = vb
                .index_axis(ndarray::Axis(0), kk)
                .iter()
                .chain(vh.index_axis(ndarray::Axis(0), kk).iter())
                .copied()
                .collect();
            for i in 0..5 {
                for j in 0..5 {
                    m[i][j] += v[i] * v[j] / (k as f64 * n as f64);
                }
            }
        }
    }
    for (i, row) in m.iter().enumerate() {
        for (j, x) in row.iter().enumerate() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((x - want).abs() < 0.06, "E[vvᵀ][{i}][{j}] = {x}");
        }
    }
}

#[test]
fn orthogonal_directions_form_a_scaled_frame_and_stay_unbiased() {
    use spry::federated::{DirectionScheme, directions_with};
    // p0 `[2, 3]` (d = 6) takes an orthogonal frame; p1 `[4]` with K = 5 > d keeps Gaussian
    let t = registry();
    let k = 4;
    let d = directions_with(&t, &[0], k, key(), DirectionScheme::Orthogonal).unwrap();
    let v = d.get(0).unwrap();
    let rows: Vec<Vec<f64>> = v
        .outer_iter()
        .map(|r| r.iter().copied().collect())
        .collect();
    for i in 0..k {
        for j in 0..k {
            let dot: f64 = rows[i].iter().zip(&rows[j]).map(|(a, b)| a * b).sum();
            let want = if i == j { 6.0 } else { 0.0 };
            assert!((dot - want).abs() < 1e-9, "v{i}·v{j} = {dot}");
        }
    }
    // the first direction is the first Gaussian draw, rescaled
    let g = directions(&t, &[0], k, key()).unwrap();
    let g0: Vec<f64> = g
        .get(0)
        .unwrap()
        .outer_iter()
        .next()
        .unwrap()
        .iter()
        .copied()
        .collect();
    let ratio = rows[0][0] / g0[0];
    assert!(ratio > 0.0);
    for (a, b) in rows[0].iter().zip(&g0) {
        assert!((a - ratio * b).abs() < 1e-9);
    }
    let again = directions_with(&t, &[0], k, key(), DirectionScheme::Orthogonal).unwrap();
    assert_eq!(bits(v), bits(again.get(0).unwrap()));
    let wide = directions_with(&t, &[1], 5, key(), DirectionScheme::Orthogonal).unwrap();
    assert_eq!(wide, directions(&t, &[1], 5, key()).unwrap());
    // E[(1/K) Σ_k v vᵀ] = I
    let n = 4000u64;
    let mut m = [[0.0f64; 6]; 6];
    for step in 0..n {
        let key = StepKey { step, ..key() };
        let d = directions_with(&t, &[0], k, key, DirectionScheme::Orthogonal).unwrap();
        for r in d.get(0).unwrap().outer_iter() {
            let r: Vec<f64> = r.iter().copied().collect();
            for i in 0..6 {
                for j in 0..6 {
                    m[i][j] += r[i] * r[j] / (k as f64 * n as f64);
                }
            }
        }
    }
    for (i, row) in m.iter().enumerate() {
        for (j, x) in row.iter().enumerate() {
            let want = if i == j { 1.0 } else { 0.0 };
            assert!((x - want).abs() < 0.06, "E[vvᵀ][{i}][{j}] = {x}");
        }
    }
}

#[test]
fn schemes_and_rules_parse_from_their_command_line_names() {
    use spry::federated::{DirectionScheme, Perturbation};
    assert_eq!(
        "gaussian".parse::<DirectionScheme>().unwrap(),
        DirectionScheme::Gaussian
    );
    assert_eq!(
        "guided".parse::<DirectionScheme>().unwrap(),
        DirectionScheme::GuidedByLoraB
    );
    assert_eq!(
        "orthogonal".parse::<DirectionScheme>().unwrap(),
        DirectionScheme::Orthogonal
    );
    assert_eq!("all".parse::<Perturbation>().unwrap(), Perturbation::All);
    assert_eq!(
        "b-only".parse::<Perturbation>().unwrap(),
        Perturbation::LoraBOnly
    );
    assert_eq!(
        "b-first".parse::<Perturbation>().unwrap(),
        Perturbation::BFirst
    );
    assert!("Guided".parse::<DirectionScheme>().is_err() && "b".parse::<Perturbation>().is_err());
    use spry::federated::{CommMode, HeadGrad, Method, PlannerKind};
    assert_eq!("head-only".parse::<Method>().unwrap(), Method::HeadOnly);
    assert_eq!("fedmezo".parse::<Method>().unwrap(), Method::FedMezo);
    assert_eq!("depth".parse::<PlannerKind>().unwrap(), PlannerKind::Depth);
    assert_eq!(
        "per-iteration".parse::<CommMode>().unwrap(),
        CommMode::PerIteration
    );
    assert_eq!("forward".parse::<HeadGrad>().unwrap(), HeadGrad::Forward);
    let err = "spray".parse::<Method>().unwrap_err().to_string();
    assert!(err.contains("spry, fedmezo, fedfgd, head-only"), "{err}");
}
