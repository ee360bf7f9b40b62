//! Server side: per-parameter weighted averages over contributors, the server optimizers against
//! a transcription of Flower's `FedAvg`/`FedAdam`/`FedYogi`/`FedAdagrad` `aggregate_fit`, untrained
//! parameters (value and moments untouched), and every rejection case of `validate_update`.

use std::collections::{BTreeMap, BTreeSet};

use ndarray::{ArrayD, IxDyn};
use spry::Error;
use spry::federated::{
    Aggregator, ClientUpdate, CombineRule, RoundExpectation, ServerOptimizer, ServerState,
    aggregate_round, combine_updates, validate_update,
};
use spry::modules::Trainable;
use spry::rng::{Domain, KeyedRng};

const SHAPES: [&[usize]; 3] = [&[2, 2], &[3], &[2]];

fn arr(shape: &[usize], v: &[f64]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(shape), v.to_vec()).unwrap()
}

fn registry() -> Trainable<f64> {
    let mut t = Trainable::new();
    let init: [&[f64]; 3] = [&[0.1, -0.2, 0.3, 0.4], &[1.0, -1.0, 0.5], &[0.0, 2.0]];
    for (i, (s, v)) in SHAPES.iter().zip(init).enumerate() {
        t.push_unit(format!("u{i}"), vec![(format!("p{i}"), arr(s, v))])
            .unwrap();
    }
    t
}

fn bits(t: &Trainable<f64>) -> Vec<Vec<u64>> {
    t.values()
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn update(client: u64, round: u64, n: u64, params: Vec<(usize, ArrayD<f64>)>) -> ClientUpdate<f64> {
    ClientUpdate {
        client,
        round,
        n_examples: n,
        params,
    }
}

fn expectation(round: u64, allowed: &[(u64, &[usize])]) -> RoundExpectation {
    RoundExpectation {
        round,
        allowed: allowed
            .iter()
            .map(|(c, ps)| (*c, ps.iter().copied().collect::<BTreeSet<_>>()))
            .collect::<BTreeMap<_, _>>(),
    }
}

// ---- weighted averages ------------------------------------------------------------------------

#[test]
fn weighted_average_over_contributors_only() {
    let ups = vec![
        update(
            1,
            0,
            1,
            vec![
                (0, arr(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
                (1, arr(&[3], &[9.0, 9.0, 9.0])),
            ],
        ),
        update(2, 0, 3, vec![(0, arr(&[2, 2], &[5.0, 6.0, -1.0, 0.0]))]),
    ];
    let avg = combine_updates(&ups, &registry(), CombineRule::Mean).unwrap();
    // p0: (1·[1,2,3,4] + 3·[5,6,−1,0]) / 4 = [4, 5, 0, 1]
    assert_eq!(
        avg[0].as_ref().unwrap(),
        &arr(&[2, 2], &[4.0, 5.0, 0.0, 1.0])
    );
    // p1: only client 1 sent it → its value, whatever the other weights
    assert_eq!(avg[1].as_ref().unwrap(), &arr(&[3], &[9.0, 9.0, 9.0]));
    // p2: nobody
    assert!(avg[2].is_none());
    let none = combine_updates::<f64>(&[], &registry(), CombineRule::Mean).unwrap();
    assert!(none.iter().all(Option::is_none));
}

// ---- Flower's rules, transcribed --------------------------------------------------------------

/// One parameter's server state under Flower's `FedOpt` family (`current_weights`, `m_t`, `v_t`,
/// zero-initialised on first use, no bias correction).
#[derive(Clone, Debug)]
struct Flower {
    w: Vec<f64>,
    m: Option<Vec<f64>>,
    v: Option<Vec<f64>>,
}

impl Flower {
    /// `aggregate_fit` after `FedAvg`'s weighted average `avg`.
    fn step(&mut self, opt: &ServerOptimizer, avg: &[f64]) {
        let delta: Vec<f64> = avg.iter().zip(&self.w).map(|(a, w)| a - w).collect();
        if let ServerOptimizer::FedAvg { eta } = *opt {
            // Flower's FedAvg replaces the weights; η ≠ 1 scales the step.
            for (w, d) in self.w.iter_mut().zip(&delta) {
                *w += eta * d;
            }
            return;
        }
        if let ServerOptimizer::FedAvgM { eta, momentum } = *opt {
            // Flower's FedAvgM: pseudo_gradient = w − avg; momentum_vector = μ·mv + pg;
            // w ← w − η·mv (the first round sets mv = pg).
            let pg: Vec<f64> = delta.iter().map(|d| -d).collect();
            let mv = match self.m.take() {
                None => pg,
                Some(mv) => mv.iter().zip(&pg).map(|(m, p)| momentum * m + p).collect(),
            };
            for (w, m) in self.w.iter_mut().zip(&mv) {
                *w -= eta * m;
            }
            self.m = Some(mv);
            return;
        }
        let (eta, beta1, tau) = match *opt {
            ServerOptimizer::FedAdam {
                eta, beta1, tau, ..
            }
            | ServerOptimizer::FedYogi {
                eta, beta1, tau, ..
            } => (eta, beta1, tau),
            ServerOptimizer::FedAdagrad { eta, beta1, tau } => (eta, beta1, tau),
            ServerOptimizer::FedAvg { .. } | ServerOptimizer::FedAvgM { .. } => unreachable!(),
        };
        let m = self.m.get_or_insert_with(|| vec![0.0; delta.len()]);
        for (m, d) in m.iter_mut().zip(&delta) {
            *m = beta1 * *m + (1.0 - beta1) * d;
        }
        let v = self.v.get_or_insert_with(|| vec![0.0; delta.len()]);
        for (v, d) in v.iter_mut().zip(&delta) {
            let d2 = d * d;
            *v = match *opt {
                ServerOptimizer::FedAdam { beta2, .. } => beta2 * *v + (1.0 - beta2) * d2,
                // np.sign: −1, 0, +1
                ServerOptimizer::FedYogi { beta2, .. } => {
                    let s = *v - d2;
                    let sign = if s > 0.0 {
                        1.0
                    } else if s < 0.0 {
                        -1.0
                    } else {
                        0.0
                    };
                    *v - (1.0 - beta2) * d2 * sign
                }
                ServerOptimizer::FedAdagrad { .. } => *v + d2,
                ServerOptimizer::FedAvg { .. } | ServerOptimizer::FedAvgM { .. } => unreachable!(),
            };
        }
        let (m, v) = (self.m.as_ref().unwrap(), self.v.as_ref().unwrap());
        for i in 0..self.w.len() {
            self.w[i] += eta * m[i] / (v[i].sqrt() + tau);
        }
    }
}

/// `flwr.server.strategy.aggregate.aggregate` for one key over its contributors.
fn flower_average(contrib: &[(u64, Vec<f64>)]) -> Vec<f64> {
    let total: u64 = contrib.iter().map(|(n, _)| n).sum();
    let mut acc = vec![0.0; contrib[0].1.len()];
    for (n, w) in contrib {
        for (a, x) in acc.iter_mut().zip(w) {
            *a += x * *n as f64;
        }
    }
    acc.iter().map(|a| a / total as f64).collect()
}

/// Round `r`: which clients train which parameters (p2 nobody in rounds 2 and 3), with their
/// example counts.
fn round_plan(r: u64) -> Vec<(u64, u64, Vec<usize>)> {
    match r {
        0 => vec![(0, 8, vec![0]), (1, 3, vec![1, 2]), (2, 5, vec![0, 2])],
        1 => vec![(3, 2, vec![0, 1, 2])],
        2 => vec![(0, 4, vec![0, 1]), (2, 7, vec![1])],
        3 => vec![(1, 1, vec![0]), (3, 6, vec![0, 1])],
        _ => vec![(0, 9, vec![2]), (1, 2, vec![0, 1, 2]), (2, 5, vec![1])],
    }
}

/// The clients' uploads for round `r`: the current global value plus seeded noise (they train
/// from the global model).
fn uploads(global: &Trainable<f64>, r: u64) -> Vec<ClientUpdate<f64>> {
    round_plan(r)
        .into_iter()
        .map(|(c, n, ps)| {
            let mut rng = KeyedRng::new(5, Domain::Data, &[r, c]);
            let params = ps
                .into_iter()
                .map(|p| {
                    let v = global.value(p).mapv(|x| x + rng.uniform_in(-0.3, 0.3));
                    (p, v)
                })
                .collect();
            update(c, r, n, params)
        })
        .collect()
}

fn expectation_for(r: u64) -> RoundExpectation {
    let plan = round_plan(r);
    RoundExpectation {
        round: r,
        allowed: plan
            .iter()
            .map(|(c, _, ps)| (*c, ps.iter().copied().collect()))
            .collect(),
    }
}

fn all_optimizers() -> Vec<ServerOptimizer> {
    vec![
        ServerOptimizer::fedavg(),
        ServerOptimizer::FedAvg { eta: 0.5 },
        ServerOptimizer::fedavgm(0.9),
        ServerOptimizer::FedAvgM {
            eta: 0.2,
            momentum: 0.7,
        },
        ServerOptimizer::fedadam(),
        ServerOptimizer::fedyogi(),
        ServerOptimizer::fedadagrad(),
        ServerOptimizer::FedAdam {
            eta: 0.3,
            beta1: 0.5,
            beta2: 0.9,
            tau: 1e-2,
        },
        ServerOptimizer::FedYogi {
            eta: 0.3,
            beta1: 0.5,
            beta2: 0.9,
            tau: 1e-2,
        },
        ServerOptimizer::FedAdagrad {
            eta: 0.2,
            beta1: 0.7,
            tau: 1e-3,
        },
    ]
}

#[test]
fn defaults_are_flowers() {
    assert_eq!(
        ServerOptimizer::fedavg(),
        ServerOptimizer::FedAvg { eta: 1.0 }
    );
    assert_eq!(
        ServerOptimizer::fedavgm(0.9),
        ServerOptimizer::FedAvgM {
            eta: 1.0,
            momentum: 0.9
        }
    );
    for opt in all_optimizers() {
        assert_eq!(opt.with_eta(0.125).eta(), 0.125);
        assert_eq!(opt.with_eta(opt.eta()), opt);
    }
    assert_eq!(
        ServerOptimizer::fedyogi(),
        ServerOptimizer::FedYogi {
            eta: 1e-2,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-3
        }
    );
    assert_eq!(
        ServerOptimizer::fedadam(),
        ServerOptimizer::FedAdam {
            eta: 1e-1,
            beta1: 0.9,
            beta2: 0.99,
            tau: 1e-9
        }
    );
    assert_eq!(
        ServerOptimizer::fedadagrad(),
        ServerOptimizer::FedAdagrad {
            eta: 1e-1,
            beta1: 0.0,
            tau: 1e-9
        }
    );
}

/// Five rounds of every optimizer against the transcription, one Flower state per parameter
/// stepped only in the rounds someone trains it (p2 sits out rounds 2 and 3).
#[test]
fn server_optimizers_match_flower_over_rounds() {
    for opt in all_optimizers() {
        let mut global = registry();
        let mut state = ServerState::new(opt, global.len());
        let mut refs: Vec<Flower> = (0..global.len())
            .map(|p| Flower {
                w: global.value(p).iter().copied().collect(),
                m: None,
                v: None,
            })
            .collect();
        for r in 0..5 {
            let ups = uploads(&global, r);
            // the reference, key by key over its contributors
            for (p, flower) in refs.iter_mut().enumerate() {
                let contrib: Vec<(u64, Vec<f64>)> = ups
                    .iter()
                    .flat_map(|u| {
                        u.params
                            .iter()
                            .filter(|(q, _)| *q == p)
                            .map(|(_, v)| (u.n_examples, v.iter().copied().collect()))
                    })
                    .collect();
                if !contrib.is_empty() {
                    flower.step(&opt, &flower_average(&contrib));
                }
            }
            let p2_before = global.value(2).clone();
            let report =
                aggregate_round(&mut global, &mut state, &expectation_for(r), ups, 1).unwrap();
            assert!(report.rejected.is_empty());
            let untrained: Vec<usize> = if r == 2 || r == 3 { vec![2] } else { vec![] };
            assert_eq!(report.untrained, untrained, "round {r}");
            if r == 2 || r == 3 {
                assert_eq!(global.value(2), &p2_before, "p2 moved in round {r}");
            }
            for (p, flower) in refs.iter().enumerate() {
                for (j, (a, b)) in global.value(p).iter().zip(&flower.w).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-12 * (1.0 + b.abs()),
                        "{opt:?} round {r} p{p}[{j}]: {a} vs {b}"
                    );
                }
            }
        }
    }
}

/// The moments of parameter `p` as the state serialises them.
fn moments(state: &ServerState, p: usize) -> (serde_json::Value, serde_json::Value) {
    let v = serde_json::to_value(state).unwrap();
    (v["m"][p].clone(), v["v"][p].clone())
}

/// A parameter skipped in a round keeps its value and its moments: training it in rounds 0, 1
/// and 3 (not 2) ends exactly where training it in rounds 0, 1, 2' does, with 2' = round 3's
/// update.
#[test]
fn skipped_round_is_as_if_it_never_happened() {
    for opt in all_optimizers() {
        let a = |p: usize, r: u64| -> ArrayD<f64> {
            let mut rng = KeyedRng::new(8, Domain::Data, &[p as u64, r]);
            let mut x = ArrayD::zeros(IxDyn(SHAPES[p]));
            rng.fill_uniform(x.as_slice_mut().unwrap(), -1.0, 1.0);
            x
        };
        // scenario A: p1 trained by client 0 in rounds 0, 1, 3; p0 by client 1 every round
        let mut ga = registry();
        let mut sa = ServerState::new(opt, 3);
        for r in 0..4u64 {
            let mut ups = vec![update(1, r, 2, vec![(0, a(0, r))])];
            if r != 2 {
                ups.push(update(0, r, 3, vec![(1, a(1, r))]));
            }
            let exp = expectation(r, &[(0, &[1]), (1, &[0])]);
            let before = (ga.value(1).clone(), moments(&sa, 1));
            aggregate_round(&mut ga, &mut sa, &exp, ups, 1).unwrap();
            if r == 2 {
                assert_eq!(ga.value(1), &before.0, "{opt:?}: value moved");
                assert_eq!(moments(&sa, 1), before.1, "{opt:?}: moments moved");
            }
        }
        // scenario B: p1 in rounds 0, 1, 2 with round 2 carrying A's round-3 update
        let mut gb = registry();
        let mut sb = ServerState::new(opt, 3);
        for r in 0..3u64 {
            let src = if r == 2 { 3 } else { r };
            let ups = vec![update(0, r, 3, vec![(1, a(1, src))])];
            let exp = expectation(r, &[(0, &[1])]);
            aggregate_round(&mut gb, &mut sb, &exp, ups, 1).unwrap();
        }
        let b1: Vec<u64> = gb.value(1).iter().map(|x| x.to_bits()).collect();
        let a1: Vec<u64> = ga.value(1).iter().map(|x| x.to_bits()).collect();
        assert_eq!(a1, b1, "{opt:?}: p1 differs");
        assert_eq!(
            moments(&sa, 1),
            moments(&sb, 1),
            "{opt:?}: p1 moments differ"
        );
        // and the untouched p2 never got moments at all
        assert_eq!(moments(&sa, 2).0, serde_json::Value::Null);
    }
}

#[test]
fn apply_rejects_bad_averages_without_change() {
    let mut g = registry();
    let before = bits(&g);
    let mut st = ServerState::new(ServerOptimizer::fedyogi(), 3);
    let st0 = st.clone();
    let e = st
        .apply(&mut g, &[Some(arr(&[2, 2], &[0.0; 4])), None])
        .unwrap_err();
    assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
    let e = st
        .apply(
            &mut g,
            &[
                Some(arr(&[2, 2], &[0.0; 4])),
                Some(arr(&[4], &[0.0; 4])),
                None,
            ],
        )
        .unwrap_err();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    // a non-finite average, and a finite one whose step leaves the float range
    for average in [f64::NAN, f64::MAX] {
        let mut g = registry();
        g.set_value(0, arr(&[2, 2], &[-f64::MAX; 4])).unwrap();
        let before = bits(&g);
        let e = st
            .apply(&mut g, &[Some(arr(&[2, 2], &[average; 4])), None, None])
            .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        assert_eq!(bits(&g), before);
    }
    assert_eq!(bits(&g), before);
    assert_eq!(st, st0);
}

// ---- validation and rejection ----------------------------------------------------------------

const ROUND: u64 = 5;

fn valid10() -> ClientUpdate<f64> {
    update(
        10,
        ROUND,
        4,
        vec![
            (0, arr(&[2, 2], &[1.0, 1.0, 1.0, 1.0])),
            (1, arr(&[3], &[0.0, 0.5, 0.25])),
        ],
    )
}

fn valid11() -> ClientUpdate<f64> {
    update(11, ROUND, 2, vec![(2, arr(&[2], &[-1.0, 3.0]))])
}

fn round_expectation() -> RoundExpectation {
    expectation(ROUND, &[(10, &[0, 1]), (11, &[2]), (12, &[0])])
}

/// Every way an update can be bad, each from a client that would otherwise be fine.
fn bad_updates() -> Vec<(&'static str, ClientUpdate<f64>)> {
    let with = |f: &dyn Fn(&mut ClientUpdate<f64>)| {
        let mut u = valid10();
        f(&mut u);
        u
    };
    vec![
        ("stale round", with(&|u| u.round = ROUND - 1)),
        ("future round", with(&|u| u.round = ROUND + 1)),
        ("unsampled client", with(&|u| u.client = 99)),
        (
            "unassigned param",
            with(&|u| u.params.push((2, arr(&[2], &[0.0, 0.0])))),
        ),
        (
            "unknown index",
            with(&|u| u.params.push((3, arr(&[2], &[0.0, 0.0])))),
        ),
        (
            "repeated param",
            with(&|u| u.params.push((0, arr(&[2, 2], &[2.0; 4])))),
        ),
        (
            "wrong shape",
            with(&|u| u.params[0].1 = arr(&[4], &[1.0; 4])),
        ),
        (
            "wrong rank",
            with(&|u| u.params[1].1 = arr(&[1, 3], &[0.0; 3])),
        ),
        ("NaN", with(&|u| u.params[1].1[[1]] = f64::NAN)),
        ("+Inf", with(&|u| u.params[0].1[[1, 0]] = f64::INFINITY)),
        ("-Inf", with(&|u| u.params[1].1[[2]] = f64::NEG_INFINITY)),
        ("zero examples", with(&|u| u.n_examples = 0)),
        ("u64::MAX examples", with(&|u| u.n_examples = u64::MAX)),
    ]
}

#[test]
fn valid_updates_pass_validation() {
    let g = registry();
    let exp = round_expectation();
    validate_update(&valid10(), &exp, &g, &BTreeSet::new()).unwrap();
    validate_update(&valid11(), &exp, &g, &BTreeSet::from([10])).unwrap();
    // sending nothing is rejected: an empty update must not count towards min_clients
    assert!(matches!(
        validate_update(&update(10, ROUND, 1, vec![]), &exp, &g, &BTreeSet::new()),
        Err(Error::RejectedUpdate { client: 10, .. })
    ));
}

#[test]
fn every_rejection_case() {
    let g = registry();
    let exp = round_expectation();
    let mut cases = bad_updates();
    cases.push(("duplicate client", valid10()));
    for (what, u) in cases {
        let already = if what == "duplicate client" {
            BTreeSet::from([10])
        } else {
            BTreeSet::new()
        };
        match validate_update(&u, &exp, &g, &already) {
            Err(Error::RejectedUpdate {
                client,
                round,
                reason,
            }) => {
                assert_eq!((client, round), (u.client, u.round), "{what}");
                assert!(!reason.is_empty(), "{what}");
            }
            other => panic!("{what}: {other:?}"),
        }
    }
}

/// A round made only of a bad update fails for too few clients and leaves the global model and
/// the server state bit-identical.
#[test]
fn failed_round_leaves_state_bit_identical() {
    for (what, bad) in bad_updates() {
        let mut g = registry();
        let mut st = ServerState::new(ServerOptimizer::fedyogi(), 3);
        // give the state some history first
        aggregate_round(
            &mut g,
            &mut st,
            &expectation(0, &[(10, &[0, 1])]),
            vec![update(10, 0, 1, vec![(0, arr(&[2, 2], &[0.5; 4]))])],
            1,
        )
        .unwrap();
        let (g0, st0) = (bits(&g), st.clone());
        let err = aggregate_round(&mut g, &mut st, &round_expectation(), vec![bad], 1).unwrap_err();
        assert!(
            matches!(err, Error::Round { round: ROUND, .. }),
            "{what}: {err:?}"
        );
        assert_eq!(bits(&g), g0, "{what}: global changed");
        assert_eq!(st, st0, "{what}: state changed");
    }
    // enough valid updates but fewer than min_clients: same
    let mut g = registry();
    let mut st = ServerState::new(ServerOptimizer::fedadam(), 3);
    let (g0, st0) = (bits(&g), st.clone());
    let err = aggregate_round(
        &mut g,
        &mut st,
        &round_expectation(),
        vec![valid10(), valid11()],
        3,
    )
    .unwrap_err();
    assert!(matches!(err, Error::Round { .. }), "{err:?}");
    assert_eq!(bits(&g), g0);
    assert_eq!(st, st0);
    // no update at all with min_clients 0 still fails (at least one is required)
    let err = aggregate_round(&mut g, &mut st, &round_expectation(), vec![], 0).unwrap_err();
    assert!(matches!(err, Error::Round { .. }), "{err:?}");
    assert_eq!(bits(&g), g0);
}

/// With valid updates around it, a rejected update is reported and contributes nothing: the
/// outcome equals the round without it, bit for bit.
#[test]
fn rejected_update_among_valid_ones_changes_nothing() {
    let mut cases = bad_updates();
    // a second, different update from an already accepted client
    let mut dup = valid10();
    dup.params[0].1 = arr(&[2, 2], &[-7.0; 4]);
    cases.push(("duplicate client", dup));
    for opt in [ServerOptimizer::fedavg(), ServerOptimizer::fedyogi()] {
        for (what, bad) in &cases {
            let (mut ga, mut sa) = (registry(), ServerState::new(opt, 3));
            let (mut gb, mut sb) = (registry(), ServerState::new(opt, 3));
            // the bad one first (so it is judged on its own fault), except the duplicate
            let ups = if *what == "duplicate client" {
                vec![valid10(), bad.clone(), valid11()]
            } else {
                vec![bad.clone(), valid10(), valid11()]
            };
            let ra = aggregate_round(&mut ga, &mut sa, &round_expectation(), ups, 2).unwrap();
            let rb = aggregate_round(
                &mut gb,
                &mut sb,
                &round_expectation(),
                vec![valid10(), valid11()],
                2,
            )
            .unwrap();
            assert_eq!(bits(&ga), bits(&gb), "{opt:?} {what}");
            assert_eq!(sa, sb, "{opt:?} {what}");
            assert_eq!(ra.accepted, vec![10, 11], "{what}");
            assert_eq!(ra.rejected.len(), 1, "{what}");
            assert_eq!(ra.rejected[0].0, bad.client, "{what}");
            assert_eq!(ra.untrained, rb.untrained);
        }
    }
}

/// FedAvg with η = 1 puts the weighted average in place; untouched parameters stay bit-identical.
#[test]
fn fedavg_sets_the_average() {
    let mut g = registry();
    let p1_before = g.value(1).clone();
    let mut st = ServerState::new(ServerOptimizer::fedavg(), 3);
    let exp = expectation(0, &[(1, &[0, 2]), (2, &[0])]);
    let ups = vec![
        update(
            1,
            0,
            1,
            vec![
                (0, arr(&[2, 2], &[1.0, 2.0, 3.0, 4.0])),
                (2, arr(&[2], &[7.0, -7.0])),
            ],
        ),
        update(2, 0, 3, vec![(0, arr(&[2, 2], &[5.0, 6.0, -1.0, 0.0]))]),
    ];
    let rep = aggregate_round(&mut g, &mut st, &exp, ups, 2).unwrap();
    assert_eq!(rep.untrained, vec![1]);
    assert_eq!(rep.accepted, vec![1, 2]);
    assert_eq!(g.value(0), &arr(&[2, 2], &[4.0, 5.0, 0.0, 1.0]));
    assert_eq!(g.value(2), &arr(&[2], &[7.0, -7.0]));
    assert_eq!(g.value(1), &p1_before);
}

/// Finite updates whose average or server step leaves the float range fail the round as a
/// whole, with the global state and the server state bit-identical.
#[test]
fn a_step_that_would_leave_the_float_range_changes_nothing() {
    let big = f64::MAX / 2.0 * 1.5;
    for (what, optimizer, start) in [
        // the average is finite, but the step from a global at −big is not
        (
            "FedAvgM, step",
            ServerOptimizer::fedavgm(0.9).with_eta(1.0),
            -big,
        ),
        ("FedAvg, step", ServerOptimizer::FedAvg { eta: 1.0 }, -big),
    ] {
        let mut g = registry();
        g.set_value(0, arr(&[2, 2], &[start; 4])).unwrap();
        let mut st = ServerState::new(optimizer, 3);
        let (g0, st0) = (bits(&g), st.clone());
        let updates = vec![
            update(10, ROUND, 3, vec![(0, arr(&[2, 2], &[big; 4]))]),
            update(12, ROUND, 5, vec![(0, arr(&[2, 2], &[big; 4]))]),
        ];
        let err = aggregate_round(&mut g, &mut st, &round_expectation(), updates, 1).unwrap_err();
        assert!(
            matches!(&err, Error::Round { reason, .. } if reason.contains("not finite")),
            "{what}: {err:?}"
        );
        assert_eq!(bits(&g), g0, "{what}: global changed");
        assert_eq!(st, st0, "{what}: server state changed");
    }
    // the mean of huge updates is taken on normalised weights: it cannot overflow
    let mut g = registry();
    let mut st = ServerState::new(ServerOptimizer::fedavg(), 3);
    let updates = vec![
        update(10, ROUND, 3, vec![(0, arr(&[2, 2], &[big; 4]))]),
        update(12, ROUND, 5, vec![(0, arr(&[2, 2], &[big; 4]))]),
    ];
    aggregate_round(&mut g, &mut st, &round_expectation(), updates, 1).unwrap();
    assert!(g.value(0).iter().all(|&v| v == big), "{:?}", g.value(0));
}
