//! The federated simulation end to end on a tiny model: learning, resume equals an uninterrupted
//! run, worker-count independence, per-iteration mode and its byte counts, baselines, dropouts.

mod tiny_model;

use ndarray::ArrayD;
use spry::federated::{
    Aggregator, Attack, AttackKind, Checkpoint, ClientConfig, CombineRule, CommMode, FederatedTask,
    HeadGrad, LocalOptimizer, Method, Objective, Perturbation, Plan, Planner, PlannerKind,
    ServerOptimizer, SimConfig, Simulation,
};
use spry::modules::Trainable;
use spry::{Error, Result};
use tiny_model::{TinyTask, init_params};

fn config(method: Method, comm: CommMode) -> SimConfig {
    SimConfig {
        method,
        clients_per_round: 4,
        rounds: 6,
        batch_size: 6,
        comm,
        planner: PlannerKind::Reference,
        server: ServerOptimizer::fedavg(),
        client: ClientConfig {
            k: 4,
            local_epochs: 1,
            optimizer: LocalOptimizer::adamw(0.05),
            head_optimizer: None,
            jvp_clip: None,
            head_grad: HeadGrad::Forward,
            dropout: false,
            perturbation: Perturbation::All,
            ..ClientConfig::default()
        },
        keep_client_state: false,
        seed: 11,
        eval_every: 3,
        drop_prob: 0.0,
        min_clients: 1,
        workers: 1,
        shared_units: Vec::new(),
        diagnostics: None,
        combine: CombineRule::Mean,
        attack: None,
    }
}

fn run(cfg: SimConfig) -> Simulation<f64> {
    let task = TinyTask::new();
    let mut sim = Simulation::new(cfg, init_params(5)).unwrap();
    sim.run(&task, None, |_| true).unwrap();
    sim
}

fn test_loss(sim: &Simulation<f64>) -> f64 {
    TinyTask::new().evaluate(&sim.global).unwrap().loss
}

#[test]
fn every_method_lowers_the_test_loss() {
    let before = TinyTask::new().evaluate(&init_params(5)).unwrap().loss;
    for (method, comm) in [
        (Method::Spry, CommMode::PerEpoch),
        (Method::Spry, CommMode::PerIteration),
        (Method::FedFgd, CommMode::PerEpoch),
        (Method::FedMezo, CommMode::PerEpoch),
    ] {
        let sim = run(config(method, comm));
        let after = test_loss(&sim);
        assert!(
            after < 0.8 * before,
            "{method:?}/{comm:?}: {before} -> {after}"
        );
        assert_eq!(sim.history.len(), 6);
        assert!(sim.history[2].test.is_some() && sim.history[1].test.is_none());
    }
}

/// Every client trains the last unit only.
struct LastUnitOnly;

impl Planner for LastUnitOnly {
    fn name(&self) -> &'static str {
        "last-unit-only"
    }
    fn plan(&self, _round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        Ok(Plan {
            units: vec![vec![n_units - 1]; n_clients],
        })
    }
}

/// The global becomes the round's averages; counts its rounds (its checkpointed state).
struct TakeAverages {
    rounds: u64,
}

impl Aggregator<f64> for TakeAverages {
    fn apply(
        &mut self,
        global: &mut Trainable<f64>,
        averages: &[Option<ArrayD<f64>>],
    ) -> Result<()> {
        for (p, a) in averages.iter().enumerate() {
            if let Some(a) = a {
                global.set_value(p, a.clone())?;
            }
        }
        self.rounds += 1;
        Ok(())
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!(self.rounds)
    }
    fn restore(&mut self, state: serde_json::Value) -> Result<()> {
        self.rounds = state
            .as_u64()
            .ok_or_else(|| Error::invalid("TakeAverages", "not a count"))?;
        Ok(())
    }
}

#[test]
fn a_users_planner_and_aggregator_plug_in() {
    let task = TinyTask::new();
    let cfg = config(Method::Spry, CommMode::PerEpoch);
    let init = init_params(5);
    let last = init.units().len() - 1;
    let mut sim = Simulation::new(cfg.clone(), init.clone())
        .unwrap()
        .with_planner(Box::new(LastUnitOnly))
        .unwrap()
        .with_aggregator(Box::new(TakeAverages { rounds: 0 }))
        .unwrap();
    let want: Vec<usize> = init.units()[last].params.clone().collect();
    assert!(sim.assignments(0, 4).unwrap().iter().all(|a| *a == want));
    sim.run_round(&task).unwrap();
    sim.run_round(&task).unwrap();
    for (p, (a, b)) in sim.global.values().iter().zip(init.values()).enumerate() {
        assert_eq!(a == b, !want.contains(&p), "parameter {p}");
    }
    // FedAvg at η = 1 takes the averages too, up to rounding
    let mut fedavg = Simulation::new(cfg.clone(), init.clone())
        .unwrap()
        .with_planner(Box::new(LastUnitOnly))
        .unwrap();
    fedavg.run_round(&task).unwrap();
    fedavg.run_round(&task).unwrap();
    for (a, b) in sim.global.values().iter().zip(fedavg.global.values()) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
    // the aggregator's state survives a checkpoint; a resumed run must plug it in again
    let ckpt = sim.checkpoint();
    assert_eq!(ckpt.aggregator_state, Some(serde_json::json!(2)));
    let mut bare = Simulation::resume(&cfg, init.clone(), ckpt.clone()).unwrap();
    assert!(bare.run_round(&task).is_err());
    let resumed = Simulation::resume(&cfg, init.clone(), ckpt)
        .unwrap()
        .with_aggregator(Box::new(TakeAverages { rounds: 0 }))
        .unwrap();
    assert_eq!(
        resumed.checkpoint().aggregator_state,
        Some(serde_json::json!(2))
    );
    // a planner only replaces Spry's; per-iteration rounds have nothing to aggregate
    let mezo = Simulation::new(config(Method::FedMezo, CommMode::PerEpoch), init.clone());
    assert!(mezo.unwrap().with_planner(Box::new(LastUnitOnly)).is_err());
    let per_it = Simulation::new(config(Method::Spry, CommMode::PerIteration), init);
    assert!(
        per_it
            .unwrap()
            .with_aggregator(Box::new(TakeAverages { rounds: 0 }))
            .is_err()
    );
}

#[test]
fn the_lr_schedule_applies_from_the_second_round() {
    use spry::federated::LrSchedule;
    let task = TinyTask::new();
    for comm in [CommMode::PerEpoch, CommMode::PerIteration] {
        let plain = config(Method::Spry, comm);
        let mut decayed = plain.clone();
        decayed.client.lr_schedule = LrSchedule::InverseSqrt { rounds: 1.0 };
        let mut a = Simulation::new(plain, init_params(5)).unwrap();
        let mut b = Simulation::new(decayed.clone(), init_params(5)).unwrap();
        a.run_round(&task).unwrap();
        b.run_round(&task).unwrap();
        assert_eq!(
            a.global, b.global,
            "{comm:?}: round 0 runs at the full rate"
        );
        a.run_round(&task).unwrap();
        b.run_round(&task).unwrap();
        assert_ne!(a.global, b.global, "{comm:?}: round 1 runs at 1/√2 of it");
        decayed.client.lr_schedule = LrSchedule::InverseSqrt { rounds: 0.0 };
        assert!(Simulation::new(decayed, init_params(5)).is_err());
    }
}

#[test]
fn resume_from_checkpoint_equals_an_uninterrupted_run() {
    let dir = std::env::temp_dir().join(format!("spry-sim-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ckpt = dir.join("checkpoint.json");
    let cfg = config(Method::Spry, CommMode::PerEpoch);
    let full = run(cfg.clone());
    // "crash" after round 3: stop, then start a new process-like run from the file
    let task = TinyTask::new();
    let mut first = Simulation::new(cfg.clone(), init_params(5)).unwrap();
    first.run(&task, Some(&ckpt), |m| m.round < 3).unwrap();
    assert_eq!(first.round, 3);
    drop(first);
    let loaded = Simulation::<f64>::load_checkpoint(&ckpt).unwrap();
    let mut resumed = Simulation::resume(&cfg, init_params(5), loaded).unwrap();
    resumed.run(&task, Some(&ckpt), |_| true).unwrap();
    for (a, b) in full.global.values().iter().zip(resumed.global.values()) {
        assert_eq!(a, b, "resumed parameters differ from the uninterrupted run");
    }
    let strip = |s: &Simulation<f64>| {
        s.history
            .iter()
            .map(|m| {
                (
                    m.round,
                    m.train_loss.to_bits(),
                    m.test.map(|t| t.loss.to_bits()),
                    m.bytes,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&full), strip(&resumed));
    // a checkpoint from another configuration is refused
    let mut other = cfg.clone();
    other.seed = 12;
    let loaded = Simulation::<f64>::load_checkpoint(&ckpt).unwrap();
    assert!(matches!(
        Simulation::resume(&other, init_params(5), loaded),
        Err(Error::InvalidArgument { .. })
    ));
    // a flipped byte anywhere in the body (a digit, a bracket, a letter) is caught by the
    // checksum; so is a file without one
    let good = std::fs::read(&ckpt).unwrap();
    let body = good.iter().position(|&b| b == b'{').unwrap() + 1;
    let body = body
        + good[body..]
            .windows(12)
            .position(|w| w == b"\"checkpoint\"")
            .unwrap();
    for at in (body..good.len() - 1).step_by((good.len() - body) / 97 + 1) {
        let mut bad = good.clone();
        bad[at] ^= if bad[at].is_ascii_digit() { 0x01 } else { 0x20 };
        std::fs::write(&ckpt, &bad).unwrap();
        assert!(
            matches!(
                Simulation::<f64>::load_checkpoint(&ckpt),
                Err(Error::Format { .. })
            ),
            "a change at byte {at} of {} went unnoticed",
            good.len()
        );
    }
    let plain = serde_json::to_vec(
        &Simulation::<f64>::load_checkpoint(&{
            std::fs::write(&ckpt, &good).unwrap();
            ckpt.clone()
        })
        .unwrap(),
    )
    .unwrap();
    std::fs::write(&ckpt, plain).unwrap();
    assert!(matches!(
        Simulation::<f64>::load_checkpoint(&ckpt),
        Err(Error::Format { .. })
    ));
    // a corrupt checkpoint is a typed error
    std::fs::write(&ckpt, b"{not json").unwrap();
    assert!(matches!(
        Simulation::<f64>::load_checkpoint(&ckpt),
        Err(Error::Format { .. })
    ));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn two_workers_give_the_same_result_as_one() {
    let mut cfg = config(Method::Spry, CommMode::PerEpoch);
    let one = run(cfg.clone());
    cfg.workers = 2;
    let two = run(cfg);
    assert_eq!(one.global.values(), two.global.values());
}

#[test]
fn per_iteration_uploads_k_scalars_per_step() {
    let cfg = config(Method::Spry, CommMode::PerIteration);
    let sim = run(cfg.clone());
    let epoch = run(config(Method::Spry, CommMode::PerEpoch));
    let steps = 4; // 24 examples in batches of 6
    let k = cfg.client.k as u64;
    let m = cfg.clients_per_round as u64;
    for r in &sim.history {
        assert_eq!(r.bytes.up, steps * m * (4 * k + 4), "round {}", r.round);
    }
    // per-epoch uploads the assigned tensors instead: far more than O(K) per step here
    assert!(epoch.history[0].bytes.up > sim.history[0].bytes.up / 2);
    // the server's replay of the directions is what moved the weights
    assert_ne!(sim.global.values(), init_params(5).values());
}

/// With one client per round, per-iteration mode replays exactly that client's local training:
/// the server regenerates its directions, averages (one contributor) and steps the same
/// optimizers, the exact head gradient included, so both modes end at the same weights.
#[test]
fn per_iteration_with_one_client_equals_per_epoch() {
    for head_grad in [HeadGrad::Forward, HeadGrad::Exact] {
        let mut cfg = config(Method::Spry, CommMode::PerIteration);
        cfg.clients_per_round = 1;
        cfg.rounds = 3;
        cfg.client.head_grad = head_grad;
        cfg.client.head_optimizer = Some(LocalOptimizer::Sgd {
            lr: 0.5,
            momentum: 0.0,
            weight_decay: 0.0,
        });
        let iteration = run(cfg.clone());
        cfg.comm = CommMode::PerEpoch;
        let epoch = run(cfg);
        assert_ne!(iteration.global.values(), init_params(5).values());
        for (p, (a, b)) in iteration
            .global
            .values()
            .iter()
            .zip(epoch.global.values())
            .enumerate()
        {
            for (x, y) in a.iter().zip(b.iter()) {
                assert!(
                    (x - y).abs() <= 1e-9 * (1.0 + y.abs()),
                    "{head_grad:?} param {p}: per-iteration {x} vs per-epoch {y}"
                );
            }
        }
    }
}

/// An exact head gradient in per-iteration mode adds its values (plus one index per tensor) to
/// the upload of every step of every client assigned the head, and the averaged gradient to
/// the broadcast; the JVP part stays K scalars per step.
#[test]
fn per_iteration_exact_head_uploads_the_head_gradient() {
    // FedFgd: every client is assigned every unit, the head included
    let mut cfg = config(Method::FedFgd, CommMode::PerIteration);
    let forward = run(cfg.clone());
    cfg.client.head_grad = HeadGrad::Exact;
    let exact = run(cfg.clone());
    let task = TinyTask::new();
    let params = init_params(5);
    let head = task.exact_params();
    let head_len: usize = head.iter().map(|&p| params.value(p).len()).sum();
    let per_step = spry::federated::comm::upload_gradients(head_len, head.len());
    let (steps, m) = (4u64, cfg.clients_per_round as u64);
    for (f, e) in forward.history.iter().zip(&exact.history) {
        assert_eq!(
            e.bytes.up,
            f.bytes.up + steps * m * per_step,
            "round {}",
            e.round
        );
        assert_eq!(
            e.bytes.down,
            f.bytes.down + steps * m * per_step,
            "round {}",
            e.round
        );
    }
    assert!(test_loss(&exact) < TinyTask::new().evaluate(&params).unwrap().loss);
}

/// `shared_units` adds units to every client's plan and is left out of the planning: with the
/// head shared, every sampled client trains it, once, on top of the units the planner gave it
/// (without sharing, the planner gives each of the two units to two of the four clients; with
/// the head shared, it gives the other unit to all four); a unit that does not exist is refused.
#[test]
fn shared_units_are_trained_by_every_client() {
    let params = init_params(5);
    let head_unit = params.units().len() - 1;
    let head: Vec<usize> = params.units()[head_unit].params.clone().collect();
    let has_head = |ps: &Vec<usize>| head.iter().all(|p| ps.contains(p));
    let mut cfg = config(Method::Spry, CommMode::PerEpoch);
    let plain = Simulation::new(cfg.clone(), init_params(5)).unwrap();
    cfg.shared_units = vec![head_unit];
    let shared = Simulation::new(cfg.clone(), init_params(5)).unwrap();
    for round in 0..3 {
        let a = plain.assignments(round, 4).unwrap();
        let b = shared.assignments(round, 4).unwrap();
        assert_eq!(
            a.iter().filter(|ps| has_head(ps)).count(),
            2,
            "round {round}"
        );
        for (pa, pb) in a.iter().zip(&b) {
            assert!(
                pa.iter().all(|p| pb.contains(p)),
                "round {round}: plan dropped"
            );
            for p in &head {
                assert_eq!(pb.iter().filter(|&q| q == p).count(), 1, "round {round}");
            }
            // the planner spends no slot on the shared head: every client gets the other unit
            assert!(pb.contains(&0) && pb.contains(&1), "round {round}: {pb:?}");
        }
    }
    // and the run uploads the head from every client: more bytes than the plan alone
    let (with, without) = (
        run(cfg.clone()),
        run(config(Method::Spry, CommMode::PerEpoch)),
    );
    assert!(with.history[0].bytes.up > without.history[0].bytes.up);
    cfg.shared_units = vec![2];
    assert!(matches!(
        Simulation::new(cfg, init_params(5)),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn dropped_clients_and_failed_rounds_leave_the_state_unchanged() {
    let mut cfg = config(Method::Spry, CommMode::PerEpoch);
    cfg.drop_prob = 0.9;
    cfg.min_clients = 4;
    let sim = run(cfg);
    let failed = sim.history.iter().filter(|m| m.failed.is_some()).count();
    assert!(failed > 0, "with 90% dropouts some rounds must fail");
    if failed == sim.history.len() {
        assert_eq!(sim.global.values(), init_params(5).values());
    }
}

#[test]
fn the_same_seed_reproduces_the_run_and_another_seed_does_not() {
    let cfg = config(Method::Spry, CommMode::PerEpoch);
    assert_eq!(
        run(cfg.clone()).global.values(),
        run(cfg.clone()).global.values()
    );
    let mut other = cfg;
    other.seed = 12;
    assert_ne!(
        run(other).global.values(),
        run(config(Method::Spry, CommMode::PerEpoch))
            .global
            .values()
    );
}

/// Head-only training moves the shared head and nothing else; it needs a shared unit.
#[test]
fn head_only_trains_only_the_head() {
    let mut cfg = config(Method::HeadOnly, CommMode::PerEpoch);
    assert!(Simulation::new(cfg.clone(), init_params(5)).is_err());
    cfg.shared_units = vec![1];
    cfg.client.head_grad = HeadGrad::Exact;
    let sim = run(cfg);
    let init = init_params(5);
    assert_eq!(sim.global.value(0), init.value(0));
    assert_eq!(sim.global.value(1), init.value(1));
    assert_ne!(sim.global.value(2), init.value(2));
    assert!(test_loss(&sim) < TinyTask::new().evaluate(&init).unwrap().loss);
}

/// Diagnostics change nothing in the run, appear every round, measure gradients every
/// `gradient_every` rounds, and their time is not counted in `wall_s`.
#[test]
fn diagnostics_observe_without_changing_the_run() {
    use spry::federated::DiagnosticsConfig;
    let mut cfg = config(Method::Spry, CommMode::PerEpoch);
    cfg.client.head_grad = HeadGrad::Exact;
    let plain = run(cfg.clone());
    cfg.diagnostics = Some(DiagnosticsConfig {
        probe_size: 6,
        stack: 4,
        draws: 2,
        gradient_every: 2,
    });
    let probed = run(cfg);
    assert_eq!(plain.global, probed.global);
    for m in &probed.history {
        let d = m.diagnostics.as_ref().expect("diagnostics every round");
        if (m.round - 1) % 2 == 0 {
            assert_eq!(d.unit.as_deref(), Some("hidden"));
            assert!(d.grad_norm > 0.0 && d.estimator_cosine.is_finite());
            assert!(d.update_cosine.abs() <= 1.0);
        } else {
            assert!(d.unit.is_none() && d.grad_norm.is_nan());
        }
        assert!(d.adapter_norm > 0.0 && d.adapter_update > 0.0 && d.head_update > 0.0);
        assert!(d.adapter_loss_change.is_finite() && d.seconds >= 0.0);
    }
}

#[test]
fn a_checkpoint_is_validated_before_a_resume_uses_it() {
    let cfg = config(Method::Spry, CommMode::PerEpoch);
    let task = TinyTask::new();
    let mut sim = Simulation::new(cfg.clone(), init_params(5)).unwrap();
    sim.run(&task, None, |m| m.round < 2).unwrap();
    let good = serde_json::to_value(sim.checkpoint()).unwrap();
    let sizes: Vec<usize> = init_params(5).values().iter().map(|v| v.len()).collect();
    let resume = |v: &serde_json::Value| {
        let ckpt: Checkpoint = serde_json::from_value(v.clone()).unwrap();
        Simulation::resume(&cfg, init_params(5), ckpt).map(|_| ())
    };
    resume(&good).unwrap();
    type Edit = fn(&mut serde_json::Value, &[usize]);
    let cases: [(&str, Edit); 8] = [
        ("a tensor one value short", |v, _| {
            v["params"][0].as_array_mut().unwrap().pop();
        }),
        ("a parameter of 1e308", |v, _| {
            v["params"][0][0] = 1e308.into()
        }),
        ("a parameter of -1e39", |v, _| {
            v["params"][1][0] = (-1e39).into()
        }),
        ("round u64::MAX", |v, _| v["round"] = u64::MAX.into()),
        ("more metrics than rounds", |v, _| v["round"] = 1.into()),
        ("another server optimizer", |v, _| {
            v["server"]["optimizer"] = serde_json::to_value(ServerOptimizer::fedadam()).unwrap();
        }),
        ("a negative second moment", |v, sizes| {
            let mut vs = vec![serde_json::Value::Null; sizes.len()];
            vs[0] = vec![-1.0; sizes[0]].into();
            v["server"]["v"] = vs.into();
        }),
        ("a client state shorter than the parameters", |v, _| {
            v["client_states"] = serde_json::json!({"0": {"steps": [0], "m": [null], "v": [null]}});
        }),
    ];
    for (what, edit) in cases {
        let mut bad = good.clone();
        edit(&mut bad, &sizes);
        assert!(
            matches!(resume(&bad), Err(Error::InvalidArgument { .. })),
            "{what}: accepted"
        );
    }
}

/// One hostile client per round scaling its change by 10⁴: the weighted mean follows it, the
/// coordinate-wise median and the clipped mean do not.
#[test]
fn robust_combination_withstands_a_scaling_client() {
    let task = TinyTask::new();
    let loss_of = |combine: CombineRule, attack: Option<Attack>| {
        let mut cfg = config(Method::FedFgd, CommMode::PerEpoch);
        cfg.combine = combine;
        cfg.attack = attack;
        let mut sim = Simulation::new(cfg, init_params(5)).unwrap();
        sim.run(&task, None, |_| true).unwrap();
        task.evaluate(&sim.global).unwrap().loss
    };
    let attack = Some(Attack {
        clients_per_round: 1,
        kind: AttackKind::Scale { factor: 1e4 },
    });
    let before = task.evaluate(&init_params(5)).unwrap().loss;
    let honest = loss_of(CombineRule::Mean, None);
    let attacked = loss_of(CombineRule::Mean, attack);
    assert!(
        honest < before && attacked > before,
        "{before} {honest} {attacked}"
    );
    for rule in [
        CombineRule::Median,
        CombineRule::ClipToMedian { factor: 1.0 },
    ] {
        let robust = loss_of(rule, attack);
        assert!(
            robust < before,
            "{rule}: {before} -> {robust} (honest {honest})"
        );
    }
    // per-iteration mode has no updates to corrupt: refused rather than ignored
    let mut cfg = config(Method::Spry, CommMode::PerIteration);
    cfg.attack = attack;
    assert!(matches!(
        Simulation::new(cfg, init_params(5)),
        Err(Error::InvalidArgument { .. })
    ));
}
