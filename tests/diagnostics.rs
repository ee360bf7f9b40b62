//! Diagnostics: the exact gradient computed in forward mode equals central finite differences,
//! the estimator cosine behaves as the theory says, and the perturbation rules pick the right
//! tensors.

mod tiny_model;

use ndarray::{ArrayD, IxDyn};
use spry::federated::diagnostics::{cosine, estimator_cosine, exact_gradient, norm, zeroed};
use spry::federated::{Perturbation, StepKey, directions};
use spry::modules::Trainable;
use tiny_model::{TinyNet, fd_gradient, flatten, init_params, offsets, random_batch};

#[test]
fn exact_gradient_matches_finite_differences_for_any_stack() {
    let net = TinyNet::default();
    let params = init_params(3);
    let batch = random_batch(4, 7);
    let fd = fd_gradient(&flatten(&params), &batch);
    let all: Vec<usize> = (0..params.len()).collect();
    // stacks that divide the 31 scalars, straddle parameters, and exceed them
    for stack in [1, 3, 7, 16, 64] {
        let g = exact_gradient(&net, &batch, &params, &all, stack).unwrap();
        for (p, range) in offsets().iter().enumerate() {
            assert_eq!(g[p].shape(), params.value(p).shape());
            for (got, want) in g[p].iter().zip(&fd[range.clone()]) {
                assert!(
                    (got - want).abs() < 1e-8,
                    "stack {stack} param {p}: {got} vs {want}"
                );
            }
        }
    }
    // a subset, in the caller's order
    let g = exact_gradient(&net, &batch, &params, &[2, 0], 5).unwrap();
    let [o0, _, o2, _] = offsets();
    assert!(g[0].iter().zip(&fd[o2]).all(|(a, b)| (a - b).abs() < 1e-8));
    assert!(g[1].iter().zip(&fd[o0]).all(|(a, b)| (a - b).abs() < 1e-8));
}

#[test]
fn exact_gradient_rejects_bad_arguments() {
    let net = TinyNet::default();
    let params = init_params(3);
    let batch = random_batch(4, 7);
    assert!(exact_gradient(&net, &batch, &params, &[0], 0).is_err());
    assert!(exact_gradient(&net, &batch, &params, &[9], 4).is_err());
}

#[test]
fn estimator_cosine_grows_with_k_towards_one() {
    let net = TinyNet::default();
    let params = init_params(3);
    let batch = random_batch(4, 16);
    let of = [0usize, 1]; // the hidden unit: 16 scalars
    let g = exact_gradient(&net, &batch, &params, &of, 8).unwrap();
    let draws = |k: usize, n: u64| -> Vec<_> {
        (0..n)
            .map(|step| {
                let key = StepKey {
                    seed: 1,
                    round: 0,
                    client: 0,
                    step,
                };
                directions(&params, &of, k, key).unwrap()
            })
            .collect()
    };
    let c1 = estimator_cosine(&net, &batch, &params, &of, &g, &draws(1, 64)).unwrap();
    let c4096 = estimator_cosine(&net, &batch, &params, &of, &g, &draws(4096, 2)).unwrap();
    // E[cos] for K = 1 over d = 16 Gaussian coordinates is about √(2/(π·16)) ≈ 0.2
    assert!(c1 > 0.1 && c1 < 0.35, "K = 1: {c1}");
    assert!(c4096 > 0.98, "K = 4096: {c4096}");
    // a draw without directions on the probed tensors is refused
    let none = spry::modules::Directions::none(params.len());
    assert!(estimator_cosine(&net, &batch, &params, &of, &g, &[none]).is_err());
}

#[test]
fn cosine_norm_and_zeroed() {
    let a = vec![ArrayD::from_shape_vec(IxDyn(&[2]), vec![3.0f64, 0.0]).unwrap()];
    let b = vec![ArrayD::from_shape_vec(IxDyn(&[2]), vec![1.0f64, 1.0]).unwrap()];
    assert!((cosine(&a, &b) - 1.0 / 2f64.sqrt()).abs() < 1e-12);
    assert_eq!(cosine(&a, &[ArrayD::zeros(IxDyn(&[2]))]), 0.0);
    assert!((norm(&a) - 3.0).abs() < 1e-12);
    let p = zeroed(&init_params(1), &[1, 3]).unwrap();
    assert!(p.value(1).iter().all(|v| *v == 0.0) && p.value(3).iter().all(|v| *v == 0.0));
    assert_eq!(p.value(0), init_params(1).value(0));
}

/// Two LoRA units (A then B each) and a head, with the first unit's B non-zero.
fn lora_registry() -> Trainable<f64> {
    let z = |s: &[usize]| ArrayD::<f64>::zeros(IxDyn(s));
    let mut t = Trainable::new();
    for (l, b) in [(0, 0.5), (1, 0.0)] {
        t.push_unit(
            format!("layer.{l}.q"),
            vec![
                (format!("layer.{l}.q.lora_A.weight"), z(&[1, 4]) + 0.1),
                (format!("layer.{l}.q.lora_B.weight"), z(&[4, 1]) + b),
            ],
        )
        .unwrap();
    }
    t.push_unit("classifier", vec![("classifier.weight".into(), z(&[2, 4]))])
        .unwrap();
    t
}

#[test]
fn perturbation_rules_pick_the_tensors() {
    let t = lora_registry();
    let all = [0, 1, 2, 3, 4];
    assert_eq!(Perturbation::All.filter(&t, &all), vec![0, 1, 2, 3, 4]);
    assert_eq!(Perturbation::LoraBOnly.filter(&t, &all), vec![1, 3, 4]);
    // unit 0's B is non-zero, so its A is perturbed; unit 1's B is zero, so its A is not
    assert_eq!(Perturbation::BFirst.filter(&t, &all), vec![0, 1, 3, 4]);
    assert_eq!(Perturbation::BFirst.filter(&t, &[2]), Vec::<usize>::new());
}
