//! Client local training on the tiny network: the loss falls, runs are reproducible bit for bit,
//! only assigned tensors move, every step is replayable from the key (checked against a manual
//! loop whose JVPs come from finite differences), non-finite steps are skipped and counted, and
//! `HeadGrad::Exact` uses the objective's exact gradient.

mod tiny_model;

use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array1, ArrayD};
use spry::federated::{
    ClientConfig, HeadGrad, LocalOptimizer, LossJvp, Objective, OptimizerState, Perturbation,
    StepKey, direction, train_local, train_local_mezo,
};
use spry::modules::{Directions, DropoutKey, Trainable};
use tiny_model::*;

fn key(seed: u64) -> StepKey {
    StepKey {
        seed,
        round: 3,
        client: 17,
        step: 0,
    }
}

fn cfg(k: usize, epochs: usize, optimizer: LocalOptimizer) -> ClientConfig {
    ClientConfig {
        k,
        local_epochs: epochs,
        optimizer,
        head_optimizer: None,
        jvp_clip: None,
        head_grad: HeadGrad::Forward,
        dropout: false,
        perturbation: Perturbation::All,
        ..ClientConfig::default()
    }
}

fn sgd(lr: f64) -> LocalOptimizer {
    LocalOptimizer::Sgd {
        lr,
        momentum: 0.0,
        weight_decay: 0.0,
    }
}

fn bits(a: &ArrayD<f64>) -> Vec<u64> {
    a.iter().map(|v| v.to_bits()).collect()
}

fn all_bits(t: &Trainable<f64>) -> Vec<Vec<u64>> {
    t.values().iter().map(bits).collect()
}

#[test]
fn adamw_lowers_the_training_loss() {
    let mut params = init_params(1);
    let batches = separable_batches(2, 48, 8);
    let before = plain_loss_all(&flatten(&params), &batches);
    let net = TinyNet::default();
    let c = cfg(4, 15, LocalOptimizer::adamw(0.05));
    let mut st = OptimizerState::new(params.len());
    let rep = train_local(
        &net,
        &mut params,
        &[0, 1, 2, 3],
        &batches,
        &c,
        &mut st,
        key(3),
    )
    .unwrap();
    let after = plain_loss_all(&flatten(&params), &batches);
    assert_eq!(rep.steps, 15 * 6);
    assert_eq!(rep.skipped, 0);
    assert_eq!(rep.n_examples, 48, "one epoch's worth of examples");
    assert!(rep.mean_loss.is_finite());
    assert!(
        after < 0.5 * before,
        "loss {before} → {after}: did not fall by half"
    );
    // accuracy on the separable data: the predicted class has the lowest single-row loss
    let theta = flatten(&params);
    let mut correct = 0;
    for b in &batches {
        for r in 0..b.y.len() {
            let x = b.x.slice(ndarray::s![r..r + 1, ..]).to_owned();
            let row_loss = |c: i64| {
                plain_loss(
                    &theta,
                    &Batch {
                        x: x.clone(),
                        y: vec![c],
                    },
                )
            };
            let pred = (0..C as i64)
                .min_by(|&a, &c| row_loss(a).total_cmp(&row_loss(c)))
                .unwrap();
            correct += usize::from(pred == b.y[r]);
        }
    }
    assert!(correct >= 44, "{correct}/48 correct");
}

#[test]
fn same_seed_bit_identical_other_seed_differs() {
    let batches = separable_batches(4, 24, 8);
    let run = |seed: u64, opt: LocalOptimizer| {
        let mut p = init_params(5);
        let mut st = OptimizerState::new(p.len());
        let rep = train_local(
            &TinyNet::default(),
            &mut p,
            &[0, 1, 2, 3],
            &batches,
            &ClientConfig {
                dropout: true,
                ..cfg(2, 2, opt)
            },
            &mut st,
            key(seed),
        )
        .unwrap();
        (all_bits(&p), rep, st)
    };
    for opt in [LocalOptimizer::adamw(0.01), sgd(0.1)] {
        let (a, ra, sa) = run(7, opt);
        let (b, rb, sb) = run(7, opt);
        assert_eq!(a, b, "{opt:?}");
        assert_eq!(ra, rb);
        assert_eq!(sa, sb);
        let (c, _, _) = run(8, opt);
        assert_ne!(a, c, "{opt:?}: another seed gave the same parameters");
    }
}

#[test]
fn non_assigned_params_unchanged_bit_for_bit() {
    let batches = separable_batches(6, 24, 8);
    for (assigned, frozen) in [
        (vec![2usize, 3], vec![0usize, 1]),
        (vec![0, 1], vec![2, 3]),
        (vec![1], vec![0, 2, 3]),
    ] {
        for head_grad in [HeadGrad::Forward, HeadGrad::Exact] {
            let mut p = init_params(9);
            let before = all_bits(&p);
            let net = TinyNet::default();
            let c = ClientConfig {
                head_grad,
                // decoupled weight decay must not touch the frozen tensors either
                ..cfg(3, 2, LocalOptimizer::adamw(0.05))
            };
            let mut st = OptimizerState::new(p.len());
            train_local(&net, &mut p, &assigned, &batches, &c, &mut st, key(1)).unwrap();
            let after = all_bits(&p);
            for &i in &frozen {
                assert_eq!(
                    after[i], before[i],
                    "{assigned:?} {head_grad:?}: p{i} moved"
                );
            }
            for &i in &assigned {
                assert_ne!(
                    after[i], before[i],
                    "{assigned:?} {head_grad:?}: p{i} did not move"
                );
            }
            // the objective never saw a tangent on a frozen tensor
            for call in net.calls.lock().unwrap().iter() {
                assert!(
                    call.tangent_on.iter().all(|p| assigned.contains(p)),
                    "{call:?}"
                );
            }
        }
    }
}

/// The directional derivative of the plain loss along direction `kk` of step `step`, on the
/// parameters in `perturbed` (central differences, independent of the crate's kernels).
fn fd_jvp(
    theta: &[f64],
    batch: &Batch,
    key: StepKey,
    kk: usize,
    perturbed: &[usize],
) -> (f64, Vec<f64>) {
    let off = offsets();
    let mut v = vec![0.0; theta.len()];
    for &p in perturbed {
        let d = direction::<f64>(key, kk, p, SHAPES[p]);
        v[off[p].clone()].copy_from_slice(d.as_slice().unwrap());
    }
    let h = 1e-5;
    let plus: Vec<f64> = theta.iter().zip(&v).map(|(t, v)| t + h * v).collect();
    let minus: Vec<f64> = theta.iter().zip(&v).map(|(t, v)| t - h * v).collect();
    (
        (plain_loss(&plus, batch) - plain_loss(&minus, batch)) / (2.0 * h),
        v,
    )
}

/// Epochs, directions per step and learning rate of [`manual_sgd`].
#[derive(Clone, Copy)]
struct Manual {
    epochs: usize,
    k: usize,
    lr: f64,
}

/// Plain SGD by hand: step s uses the directions keyed by (seed, round, client, s, k, p), with s
/// counting batches across epochs from 0; steps in `skip` are skipped but still counted.
/// Returns the final flat parameters and the mean loss over the steps taken.
fn manual_sgd(
    theta0: &[f64],
    batches: &[Batch],
    run: Manual,
    perturbed: &[usize],
    key: StepKey,
    skip: &[u64],
) -> (Vec<f64>, f64) {
    let Manual { epochs, k, lr } = run;
    let mut theta = theta0.to_vec();
    let mut step = 0u64;
    let (mut loss_sum, mut taken) = (0.0, 0);
    for _ in 0..epochs {
        for b in batches {
            let sk = StepKey { step, ..key };
            step += 1;
            if skip.contains(&sk.step) {
                continue;
            }
            let mut g = vec![0.0; theta.len()];
            for kk in 0..k {
                let (jvp, v) = fd_jvp(&theta, b, sk, kk, perturbed);
                for (gi, vi) in g.iter_mut().zip(&v) {
                    *gi += jvp * vi / k as f64;
                }
            }
            loss_sum += plain_loss(&theta, b);
            taken += 1;
            for (t, gi) in theta.iter_mut().zip(&g) {
                *t -= lr * gi;
            }
        }
    }
    (theta, loss_sum / taken as f64)
}

fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!((x - y).abs() < tol, "{what}[{i}]: {x} vs {y}");
    }
}

#[test]
fn steps_replay_from_the_key() {
    let batches = separable_batches(10, 24, 8);
    let (k, epochs, lr) = (3, 2, 0.1);
    for assigned in [vec![0usize, 1], vec![0, 1, 2, 3], vec![3]] {
        let mut p = init_params(12);
        let theta0 = flatten(&p);
        let net = TinyNet::default();
        let c = ClientConfig {
            dropout: true,
            ..cfg(k, epochs, sgd(lr))
        };
        let mut st = OptimizerState::new(p.len());
        let rep = train_local(&net, &mut p, &assigned, &batches, &c, &mut st, key(21)).unwrap();
        let (expect, mean_loss) = manual_sgd(
            &theta0,
            &batches,
            Manual { epochs, k, lr },
            &assigned,
            key(21),
            &[],
        );
        assert_close(&flatten(&p), &expect, 1e-8, &format!("{assigned:?}"));
        assert!((rep.mean_loss - mean_loss).abs() < 1e-8);
        assert_eq!(rep.steps, epochs * batches.len());
        // one call per step, with K directions and the pass's dropout key
        let calls = net.calls.lock().unwrap();
        assert_eq!(calls.len(), epochs * batches.len());
        for (s, call) in calls.iter().enumerate() {
            assert_eq!(call.k, k);
            assert_eq!(call.tangent_on, assigned);
            assert_eq!(
                call.dropout,
                Some(DropoutKey {
                    seed: 21,
                    parts: vec![3, 17, s as u64]
                })
            );
        }
    }
}

/// Wraps the tiny network and poisons the JVP (or the loss) on chosen calls.
struct Poisoned {
    inner: TinyNet,
    calls: AtomicUsize,
    nan_jvp_at: Vec<usize>,
    inf_jvp_at: Vec<usize>,
    nan_loss_at: Vec<usize>,
}

impl Poisoned {
    fn new(nan_jvp_at: Vec<usize>, inf_jvp_at: Vec<usize>, nan_loss_at: Vec<usize>) -> Self {
        Poisoned {
            inner: TinyNet::default(),
            calls: AtomicUsize::new(0),
            nan_jvp_at,
            inf_jvp_at,
            nan_loss_at,
        }
    }
}

impl Objective<f64> for Poisoned {
    type Batch = Batch;

    fn loss_jvp(
        &self,
        batch: &Batch,
        params: &Trainable<f64>,
        dirs: &Directions<f64>,
        dropout: Option<&DropoutKey>,
        exact_for: &[usize],
    ) -> spry::Result<LossJvp<f64>> {
        let i = self.calls.fetch_add(1, Ordering::SeqCst);
        let mut out = self
            .inner
            .loss_jvp(batch, params, dirs, dropout, exact_for)?;
        let jvp: &mut Array1<f64> = out.jvp.as_mut().unwrap();
        let last = jvp.len() - 1;
        if self.nan_jvp_at.contains(&i) {
            jvp[last] = f64::NAN;
        }
        if self.inf_jvp_at.contains(&i) {
            jvp[0] = f64::NEG_INFINITY;
        }
        if self.nan_loss_at.contains(&i) {
            out.loss = f64::NAN;
        }
        Ok(out)
    }

    fn batch_len(&self, batch: &Batch) -> usize {
        batch.y.len()
    }
}

#[test]
fn non_finite_steps_are_skipped_and_counted() {
    let batches = separable_batches(30, 48, 8); // 6 batches
    let (k, lr) = (2, 0.1);
    let assigned = [0usize, 1, 2, 3];
    let mut p = init_params(31);
    let theta0 = flatten(&p);
    let obj = Poisoned::new(vec![1], vec![4], vec![7]);
    let mut st = OptimizerState::new(p.len());
    let rep = train_local(
        &obj,
        &mut p,
        &assigned,
        &batches,
        &cfg(k, 2, sgd(lr)),
        &mut st,
        key(5),
    )
    .unwrap();
    assert_eq!(rep.skipped, 3);
    assert_eq!(rep.steps, 12 - 3);
    assert_eq!(rep.n_examples, 48);
    // the skipped steps change nothing, and the later steps keep their own keys
    let (expect, mean_loss) = manual_sgd(
        &theta0,
        &batches,
        Manual { epochs: 2, k, lr },
        &assigned,
        key(5),
        &[1, 4, 7],
    );
    assert_close(&flatten(&p), &expect, 1e-8, "with skips");
    assert!(
        (rep.mean_loss - mean_loss).abs() < 1e-8,
        "mean loss over the steps taken: {} vs {mean_loss}",
        rep.mean_loss
    );

    // every step poisoned: nothing moves, no optimizer state is created
    let mut p = init_params(31);
    let before = all_bits(&p);
    let obj = Poisoned::new((0..6).collect(), vec![], vec![]);
    let mut st = OptimizerState::new(p.len());
    let rep = train_local(
        &obj,
        &mut p,
        &assigned,
        &batches,
        &cfg(k, 1, LocalOptimizer::adamw(0.1)),
        &mut st,
        key(5),
    )
    .unwrap();
    assert_eq!((rep.steps, rep.skipped), (0, 6));
    assert!(rep.mean_loss.is_nan());
    assert_eq!(all_bits(&p), before);
    assert_eq!(st, OptimizerState::new(p.len()));
}

#[test]
fn head_grad_exact_uses_the_objectives_gradient() {
    let batches = vec![random_batch(40, 8)];
    let lr = 0.2;
    let k = 2;
    let mut p = init_params(41);
    let theta0 = flatten(&p);
    let net = TinyNet::default();
    let c = ClientConfig {
        head_grad: HeadGrad::Exact,
        ..cfg(k, 1, sgd(lr))
    };
    let mut st = OptimizerState::new(p.len());
    train_local(&net, &mut p, &[0, 1, 2, 3], &batches, &c, &mut st, key(42)).unwrap();
    {
        let calls = net.calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(
            calls[0].exact_for,
            vec![2, 3],
            "exact gradient requested for the head"
        );
        assert_eq!(calls[0].tangent_on, vec![0, 1], "head not perturbed");
    }
    let off = offsets();
    let after = flatten(&p);
    // head: one SGD step along the true gradient (central differences)
    let g = fd_gradient(&theta0, &batches[0]);
    for p in [2usize, 3] {
        let expect: Vec<f64> = off[p].clone().map(|i| theta0[i] - lr * g[i]).collect();
        assert_close(
            &after[off[p].clone()],
            &expect,
            1e-9,
            &format!("exact p{p}"),
        );
    }
    // hidden layer: the forward-gradient step along the replayed directions
    let (expect, _) = manual_sgd(
        &theta0,
        &batches,
        Manual { epochs: 1, k, lr },
        &[0, 1],
        key(42),
        &[],
    );
    for p in [0usize, 1] {
        assert_close(
            &after[off[p].clone()],
            &expect[off[p].clone()],
            1e-8,
            &format!("forward p{p}"),
        );
    }

    // Exact with the head unassigned: no exact gradient is requested, the head stays put.
    let mut p = init_params(41);
    let net = TinyNet::default();
    let mut st = OptimizerState::new(p.len());
    train_local(&net, &mut p, &[0, 1], &batches, &c, &mut st, key(42)).unwrap();
    assert!(net.calls.lock().unwrap()[0].exact_for.is_empty());
    assert_eq!(bits(p.value(2)), bits(init_params(41).value(2)));

    // Only the head assigned with Exact: a plain pass without directions, exact step.
    let mut p = init_params(41);
    let net = TinyNet::default();
    let mut st = OptimizerState::new(p.len());
    train_local(&net, &mut p, &[2, 3], &batches, &c, &mut st, key(42)).unwrap();
    {
        let calls = net.calls.lock().unwrap();
        assert_eq!(calls[0].k, 0);
        assert!(calls[0].tangent_on.is_empty());
    }
    let after = flatten(&p);
    for p in [2usize, 3] {
        let expect: Vec<f64> = off[p].clone().map(|i| theta0[i] - lr * g[i]).collect();
        assert_close(
            &after[off[p].clone()],
            &expect,
            1e-9,
            &format!("head only p{p}"),
        );
    }

    // Forward: nothing exact is requested, all four tensors perturbed.
    let net = TinyNet::default();
    let mut p = init_params(41);
    let mut st = OptimizerState::new(p.len());
    train_local(
        &net,
        &mut p,
        &[0, 1, 2, 3],
        &batches,
        &cfg(k, 1, sgd(lr)),
        &mut st,
        key(42),
    )
    .unwrap();
    let calls = net.calls.lock().unwrap();
    assert!(calls[0].exact_for.is_empty());
    assert_eq!(calls[0].tangent_on, vec![0, 1, 2, 3]);
}

/// Which local trainer a test runs.
#[derive(Clone, Copy)]
enum Trainer {
    ForwardGradient,
    ZeroOrder,
}

/// `init_params(init)` after one local round of `c` on `batches` (every tensor assigned, step
/// key `key(step)`), flattened.
fn trained_flat(
    trainer: Trainer,
    c: &ClientConfig,
    init: u64,
    step: u64,
    batches: &[Batch],
) -> Vec<f64> {
    let mut p = init_params(init);
    let mut st = OptimizerState::new(p.len());
    let (net, all) = (TinyNet::default(), [0, 1, 2, 3]);
    match trainer {
        Trainer::ForwardGradient => train_local(&net, &mut p, &all, batches, c, &mut st, key(step)),
        Trainer::ZeroOrder => train_local_mezo(&net, &mut p, &all, batches, c, &mut st, key(step)),
    }
    .unwrap();
    flatten(&p)
}

#[test]
fn head_optimizer_steps_the_exact_head_only() {
    // The head (exact gradient) takes the head optimizer's step, the hidden layer (forward
    // gradient) the base optimizer's: exactly the two single-group runs, spliced.
    let batches = vec![random_batch(60, 8)];
    let (k, lr, head_lr) = (2, 0.05, 0.3);
    let theta0 = flatten(&init_params(61));
    let c = ClientConfig {
        head_grad: HeadGrad::Exact,
        head_optimizer: Some(sgd(head_lr)),
        ..cfg(k, 1, sgd(lr))
    };
    let after = trained_flat(Trainer::ForwardGradient, &c, 61, 62, &batches);
    let off = offsets();
    let g = fd_gradient(&theta0, &batches[0]);
    for q in [2usize, 3] {
        let expect: Vec<f64> = off[q].clone().map(|i| theta0[i] - head_lr * g[i]).collect();
        assert_close(&after[off[q].clone()], &expect, 1e-9, &format!("head p{q}"));
    }
    let (expect, _) = manual_sgd(
        &theta0,
        &batches,
        Manual { epochs: 1, k, lr },
        &[0, 1],
        key(62),
        &[],
    );
    for q in [0usize, 1] {
        assert_close(
            &after[off[q].clone()],
            &expect[off[q].clone()],
            1e-8,
            &format!("hidden p{q}"),
        );
    }
}

#[test]
fn head_optimizer_steps_a_forward_gradient_head_too() {
    // With the head on forward gradients, one step moves every tensor along the same estimate:
    // the head by head_lr, the hidden layer by lr (the two single-group runs, spliced).
    let batches = vec![random_batch(63, 8)];
    let (k, lr, head_lr) = (2, 0.05, 0.01);
    let theta0 = flatten(&init_params(64));
    let c = ClientConfig {
        head_optimizer: Some(sgd(head_lr)),
        ..cfg(k, 1, sgd(lr))
    };
    let after = trained_flat(Trainer::ForwardGradient, &c, 64, 65, &batches);
    let (off, all) = (offsets(), [0, 1, 2, 3]);
    for (q, rate) in [(0usize, lr), (1, lr), (2, head_lr), (3, head_lr)] {
        let manual = Manual {
            epochs: 1,
            k,
            lr: rate,
        };
        let (expect, _) = manual_sgd(&theta0, &batches, manual, &all, key(65), &[]);
        assert_close(
            &after[off[q].clone()],
            &expect[off[q].clone()],
            1e-8,
            &format!("p{q} at {rate}"),
        );
    }
}

#[test]
fn fedmezo_steps_the_head_with_the_head_optimizer() {
    // One SPSA step moves every tensor along the same estimate: with a head optimizer the head
    // moves as a run at the head's rate does, the hidden layer as a run at the base rate does.
    let batches = vec![random_batch(66, 8)];
    let (lr, head_lr) = (0.05, 0.01);
    let run = |c: &ClientConfig| trained_flat(Trainer::ZeroOrder, c, 67, 68, &batches);
    let grouped = run(&ClientConfig {
        head_optimizer: Some(sgd(head_lr)),
        ..cfg(1, 1, sgd(lr))
    });
    let (base, head) = (run(&cfg(1, 1, sgd(lr))), run(&cfg(1, 1, sgd(head_lr))));
    let off = offsets();
    assert_ne!(base, flatten(&init_params(67)));
    for (q, expect) in [(0usize, &base), (1, &base), (2, &head), (3, &head)] {
        assert_eq!(&grouped[off[q].clone()], &expect[off[q].clone()], "p{q}");
    }
}

#[test]
fn jvp_clip_is_applied() {
    // With a tiny clip every |jvp| is clipped, so one SGD step is lr·c·(1/K)Σ sign(jvp_k) v_k.
    let batches = vec![random_batch(50, 8)];
    let (k, lr, clip) = (3, 0.5, 1e-6);
    let mut p = init_params(51);
    let theta0 = flatten(&p);
    let c = ClientConfig {
        jvp_clip: Some(clip),
        ..cfg(k, 1, sgd(lr))
    };
    let mut st = OptimizerState::new(p.len());
    train_local(
        &TinyNet::default(),
        &mut p,
        &[0, 1, 2, 3],
        &batches,
        &c,
        &mut st,
        key(52),
    )
    .unwrap();
    let mut expect = theta0.clone();
    for kk in 0..k {
        let (jvp, v) = fd_jvp(&theta0, &batches[0], key(52), kk, &[0, 1, 2, 3]);
        assert!(jvp.abs() > 1e-3, "test point too flat");
        for (e, vi) in expect.iter_mut().zip(&v) {
            *e -= lr * clip * jvp.signum() * vi / k as f64;
        }
    }
    assert_close(&flatten(&p), &expect, 1e-15, "clipped step");
}

#[test]
fn lr_schedule_scales_both_optimizers_per_round() {
    use spry::federated::LrSchedule;
    let c = ClientConfig {
        head_optimizer: Some(sgd(2.0)),
        lr_schedule: LrSchedule::InverseSqrt { rounds: 4.0 },
        ..cfg(1, 1, LocalOptimizer::adamw(0.5))
    };
    assert_eq!(c.for_round(0), c);
    // round 12: 1/√(1 + 12/4) = 1/2
    let late = c.for_round(12);
    assert_eq!(late.optimizer, LocalOptimizer::adamw(0.25));
    assert_eq!(late.head_optimizer, Some(sgd(1.0)));
    assert_eq!(late.lr_schedule, c.lr_schedule);
    assert_eq!(LrSchedule::Constant.factor(1_000_000), 1.0);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        assert!(LrSchedule::InverseSqrt { rounds: bad }.validate().is_err());
    }
}
