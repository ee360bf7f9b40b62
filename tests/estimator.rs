//! The forward-gradient estimator: the formula on hand-built directions, non-finite JVPs,
//! clipping, and on a tiny network (f64) unbiasedness against finite differences and the 1/K
//! fall of its variance, with tolerances derived from the estimator's variance.

mod tiny_model;

use ndarray::{ArrayD, IxDyn};
use spry::federated::{
    Estimate, EstimatorConfig, Objective, StepKey, directions, forward_gradient,
};
use spry::modules::{Directions, Trainable};
use tiny_model::*;

fn arr(shape: &[usize], v: &[f64]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

/// p0 `[2]`, p1 `[1, 2]`, p2 `[3]`.
fn registry() -> Trainable<f64> {
    let mut t = Trainable::new();
    t.push_unit("a", vec![("p0".into(), arr(&[2], &[0.0, 0.0]))])
        .unwrap();
    t.push_unit(
        "b",
        vec![
            ("p1".into(), arr(&[1, 2], &[0.0, 0.0])),
            ("p2".into(), arr(&[3], &[0.0; 3])),
        ],
    )
    .unwrap();
    t
}

/// K = 2 hand-built directions on p0 and p1, none on p2.
fn hand_dirs(t: &Trainable<f64>) -> Directions<f64> {
    Directions::new(
        t,
        2,
        vec![
            // v0 = [1, 2], v1 = [3, −1]
            Some(arr(&[2, 2], &[1.0, 2.0, 3.0, -1.0])),
            // v0 = [[0.5, −4]], v1 = [[2, 0]]
            Some(arr(&[2, 1, 2], &[0.5, -4.0, 2.0, 0.0])),
            None,
        ],
    )
    .unwrap()
}

fn grads(e: Estimate<f64>) -> Vec<Option<ArrayD<f64>>> {
    match e {
        Estimate::Gradient(g) => g,
        Estimate::NonFinite => panic!("unexpected NonFinite"),
    }
}

#[test]
fn formula_on_hand_built_directions() {
    let t = registry();
    let dirs = hand_dirs(&t);
    let g = grads(forward_gradient(&[0.5, 2.0], &dirs, &EstimatorConfig::default()).unwrap());
    assert_eq!(g.len(), 3);
    // p0: (0.5·[1, 2] + 2·[3, −1]) / 2 = [3.25, −0.5]
    assert_eq!(g[0].as_ref().unwrap(), &arr(&[2], &[3.25, -0.5]));
    // p1: (0.5·[0.5, −4] + 2·[2, 0]) / 2 = [2.125, −1]
    assert_eq!(g[1].as_ref().unwrap(), &arr(&[1, 2], &[2.125, -1.0]));
    assert!(g[2].is_none());
}

#[test]
fn single_direction_is_jvp_times_v() {
    let t = registry();
    let dirs = Directions::new(
        &t,
        1,
        vec![None, None, Some(arr(&[1, 3], &[1.0, -2.0, 0.25]))],
    )
    .unwrap();
    let g = grads(forward_gradient(&[-4.0], &dirs, &EstimatorConfig::default()).unwrap());
    assert!(g[0].is_none() && g[1].is_none());
    assert_eq!(g[2].as_ref().unwrap(), &arr(&[3], &[-4.0, 8.0, -1.0]));
}

#[test]
fn no_directions_give_no_gradient() {
    let t = registry();
    let g = grads(
        forward_gradient(&[], &Directions::none(t.len()), &EstimatorConfig::default()).unwrap(),
    );
    assert_eq!(g, vec![None, None, None]);
}

#[test]
fn non_finite_jvp_is_reported() {
    let t = registry();
    let dirs = hand_dirs(&t);
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        for cfg in [
            EstimatorConfig::default(),
            EstimatorConfig {
                jvp_clip: Some(1.0),
            },
        ] {
            assert_eq!(
                forward_gradient(&[1.0, bad], &dirs, &cfg).unwrap(),
                Estimate::NonFinite,
                "{bad} {cfg:?}"
            );
            assert_eq!(
                forward_gradient(&[bad, 1.0], &dirs, &cfg).unwrap(),
                Estimate::NonFinite
            );
        }
    }
}

#[test]
fn wrong_jvp_count_is_a_shape_error() {
    let t = registry();
    let dirs = hand_dirs(&t);
    for jvp in [&[1.0][..], &[1.0, 2.0, 3.0][..]] {
        let err = forward_gradient(jvp, &dirs, &EstimatorConfig::default()).unwrap_err();
        assert!(matches!(err, spry::Error::ShapeMismatch { .. }), "{err:?}");
    }
}

#[test]
fn clipping_bounds_each_jvp_scalar() {
    let t = registry();
    let dirs = hand_dirs(&t);
    let cfg = EstimatorConfig {
        jvp_clip: Some(1.0),
    };
    // jvp [3, −0.5] → clipped [1, −0.5]; p0: (1·[1, 2] − 0.5·[3, −1]) / 2 = [−0.25, 1.25]
    let g = grads(forward_gradient(&[3.0, -0.5], &dirs, &cfg).unwrap());
    assert_eq!(g[0].as_ref().unwrap(), &arr(&[2], &[-0.25, 1.25]));
    // p1: (1·[0.5, −4] − 0.5·[2, 0]) / 2 = [−0.25, −2]
    assert_eq!(g[1].as_ref().unwrap(), &arr(&[1, 2], &[-0.25, -2.0]));
    // jvp [−7, 0.25] → [−1, 0.25]; p0: (−[1, 2] + 0.25·[3, −1]) / 2 = [−0.125, −1.125]
    let g = grads(forward_gradient(&[-7.0, 0.25], &dirs, &cfg).unwrap());
    assert_eq!(g[0].as_ref().unwrap(), &arr(&[2], &[-0.125, -1.125]));
    // within the range nothing changes
    let a = forward_gradient(&[0.5, -0.75], &dirs, &cfg).unwrap();
    let b = forward_gradient(&[0.5, -0.75], &dirs, &EstimatorConfig::default()).unwrap();
    assert_eq!(a, b);
}

#[test]
fn f32_estimate_matches_formula() {
    let mut t = Trainable::<f32>::new();
    t.push_unit("a", vec![("p".into(), ArrayD::zeros(IxDyn(&[2])))])
        .unwrap();
    let v = ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![1.0f32, 2.0, 3.0, -1.0]).unwrap();
    let dirs = Directions::new(&t, 2, vec![Some(v)]).unwrap();
    let g = match forward_gradient(&[0.5f32, 2.0], &dirs, &EstimatorConfig::default()).unwrap() {
        Estimate::Gradient(g) => g,
        Estimate::NonFinite => panic!(),
    };
    let g = g[0].as_ref().unwrap();
    assert_eq!(g.as_slice().unwrap(), &[3.25f32, -0.5]);
}

// ---- statistics on the tiny network ---------------------------------------------------------

struct Run {
    /// Mean of the N estimates (flat, over the perturbed coordinates).
    mean: Vec<f64>,
    /// Per-estimate squared errors ‖ĝ − a‖².
    sq_err: Vec<f64>,
}

/// N estimates of the gradient of the loss on `batch`, each from one dual pass with K
/// directions drawn by `directions` on `assigned`, flattened over the assigned coordinates.
fn run(
    params: &Trainable<f64>,
    batch: &Batch,
    assigned: &[usize],
    k: usize,
    n: usize,
    truth: &[f64],
) -> Run {
    let net = TinyNet::default();
    let d = truth.len();
    let mut sum = vec![0.0; d];
    let mut sq_err = Vec::with_capacity(n);
    for i in 0..n {
        let key = StepKey {
            seed: 2024 + k as u64,
            round: 0,
            client: 0,
            step: i as u64,
        };
        let dirs = directions(params, assigned, k, key).unwrap();
        let out = net.loss_jvp(batch, params, &dirs, None, &[]).unwrap();
        let jvp = out.jvp.unwrap();
        let g = grads(
            forward_gradient(jvp.as_slice().unwrap(), &dirs, &EstimatorConfig::default()).unwrap(),
        );
        let flat: Vec<f64> = assigned
            .iter()
            .flat_map(|&p| g[p].as_ref().unwrap().iter().copied().collect::<Vec<_>>())
            .collect();
        assert_eq!(flat.len(), d);
        let mut e = 0.0;
        for j in 0..d {
            sum[j] += flat[j];
            e += (flat[j] - truth[j]).powi(2);
        }
        sq_err.push(e);
    }
    Run {
        mean: sum.iter().map(|s| s / n as f64).collect(),
        sq_err,
    }
}

/// The true gradient restricted to `assigned`, flattened.
fn truth_on(full: &[f64], assigned: &[usize]) -> Vec<f64> {
    let off = offsets();
    assigned
        .iter()
        .flat_map(|&p| full[off[p].clone()].to_vec())
        .collect()
}

/// Asserts the mean of N estimates with K directions is within 5 standard errors of the truth
/// on every coordinate. For v ~ N(0, I_d), Var[(a·v) v_i] = E[(a·v)² v_i²] − a_i² = ‖a‖² + a_i²
/// (Isserlis), so the mean of N K-direction estimates has variance (‖a‖² + a_i²) / (K·N).
fn assert_unbiased(mean: &[f64], truth: &[f64], k: usize, n: usize) {
    let norm2: f64 = truth.iter().map(|a| a * a).sum();
    for (i, (m, a)) in mean.iter().zip(truth).enumerate() {
        let se = ((norm2 + a * a) / (k * n) as f64).sqrt();
        assert!(
            (m - a).abs() < 5.0 * se,
            "coordinate {i}: mean {m} vs true {a} (5 SE = {})",
            5.0 * se
        );
    }
}

/// Mean and standard error of a sample.
fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
    (m, (var / n).sqrt())
}

#[test]
fn dual_pass_jvp_matches_finite_differences() {
    let params = init_params(5);
    let batch = random_batch(6, 8);
    let theta = flatten(&params);
    let key = StepKey {
        seed: 1,
        round: 2,
        client: 3,
        step: 4,
    };
    let dirs = directions(&params, &[0, 1, 2, 3], 3, key).unwrap();
    let out = TinyNet::default()
        .loss_jvp(&batch, &params, &dirs, None, &[])
        .unwrap();
    assert!((out.loss - plain_loss(&theta, &batch)).abs() < 1e-12);
    let jvp = out.jvp.unwrap();
    let h = 1e-5;
    for kk in 0..3 {
        let v: Vec<f64> = (0..4)
            .flat_map(|p| {
                dirs.get(p)
                    .unwrap()
                    .index_axis(ndarray::Axis(0), kk)
                    .iter()
                    .copied()
                    .collect::<Vec<_>>()
            })
            .collect();
        let plus: Vec<f64> = theta.iter().zip(&v).map(|(t, v)| t + h * v).collect();
        let minus: Vec<f64> = theta.iter().zip(&v).map(|(t, v)| t - h * v).collect();
        let fd = (plain_loss(&plus, &batch) - plain_loss(&minus, &batch)) / (2.0 * h);
        assert!((jvp[kk] - fd).abs() < 1e-7, "k {kk}: {} vs {fd}", jvp[kk]);
    }
}

/// Unbiasedness (mean of N estimates → ∇f, per coordinate within 5 SE) and the 1/K variance
/// law: E‖ĝ_K − a‖² = (d + 1)‖a‖² / K, so MSE(K = 1) / MSE(K = 8) ≈ 8.
#[test]
fn unbiased_and_variance_falls_as_one_over_k() {
    let params = init_params(11);
    let batch = random_batch(12, 8);
    let theta = flatten(&params);
    let full = fd_gradient(&theta, &batch);
    let all = [0usize, 1, 2, 3];
    let truth = truth_on(&full, &all);
    let d = truth.len();
    assert_eq!(d, N_SCALARS);
    let norm2: f64 = truth.iter().map(|a| a * a).sum();
    assert!(norm2 > 1e-4, "degenerate test point: ‖a‖² = {norm2}");

    let n = 4000;
    let mut mse = Vec::new();
    for k in [1usize, 8] {
        let r = run(&params, &batch, &all, k, n, &truth);
        assert_unbiased(&r.mean, &truth, k, n);
        // The empirical MSE against its theoretical value, within 5 of its own standard errors.
        let (m, se) = mean_se(&r.sq_err);
        let theory = (d as f64 + 1.0) * norm2 / k as f64;
        assert!(
            (m - theory).abs() < 5.0 * se,
            "K = {k}: MSE {m} vs theory {theory} (SE {se})"
        );
        mse.push((m, se));
    }
    // Ratio of the two MSEs; relative SE by the delta method for a ratio of independent means.
    let ((m1, se1), (m8, se8)) = (mse[0], mse[1]);
    let ratio = m1 / m8;
    let rel_se = ((se1 / m1).powi(2) + (se8 / m8).powi(2)).sqrt();
    assert!(
        (ratio - 8.0).abs() < 5.0 * 8.0 * rel_se,
        "MSE ratio {ratio}, expected 8 ± {}",
        5.0 * 8.0 * rel_se
    );
}

/// Perturbing only the head (a client's slice) estimates the head's gradient without bias, and
/// the MSE is (d_S + 1)‖a_S‖²/K over the slice S only: splitting shrinks the variance.
#[test]
fn unbiased_on_an_assigned_slice() {
    let params = init_params(21);
    let batch = random_batch(22, 8);
    let full = fd_gradient(&flatten(&params), &batch);
    let slice = [2usize, 3];
    let truth = truth_on(&full, &slice);
    let (k, n) = (2, 3000);
    let r = run(&params, &batch, &slice, k, n, &truth);
    assert_unbiased(&r.mean, &truth, k, n);
    let norm2: f64 = truth.iter().map(|a| a * a).sum();
    let (m, se) = mean_se(&r.sq_err);
    let theory = (truth.len() as f64 + 1.0) * norm2 / k as f64;
    assert!(
        (m - theory).abs() < 5.0 * se,
        "MSE {m} vs {theory} (SE {se})"
    );
}
