//! Planners: coverage, load balance, determinism, per-round reshuffling, contiguous deepest-first
//! blocks, the reference rule "unit j → slot j mod M", and argument errors.

use proptest::prelude::*;
use spry::federated::{
    AllUnitsPlanner, DepthAwarePlanner, Plan, Planner, ReferencePlanner, ReshufflePlanner,
};

fn planners(seed: u64) -> Vec<Box<dyn Planner>> {
    vec![
        Box::new(ReferencePlanner),
        Box::new(ReshufflePlanner { seed }),
        Box::new(DepthAwarePlanner),
        Box::new(AllUnitsPlanner),
    ]
}

/// Counts (units per client, clients per unit) from the plan, without the crate's helper.
fn loads(plan: &Plan, n_units: usize) -> (Vec<usize>, Vec<usize>) {
    let per_client = plan.units.iter().map(Vec::len).collect();
    let mut per_unit = vec![0; n_units];
    for us in &plan.units {
        for &u in us {
            per_unit[u] += 1;
        }
    }
    (per_client, per_unit)
}

fn spread(v: &[usize]) -> usize {
    v.iter().max().unwrap() - v.iter().min().unwrap()
}

/// Structural checks every planner must pass.
fn check_common(name: &str, plan: &Plan, m: usize, u: usize) -> Result<(), TestCaseError> {
    prop_assert_eq!(
        plan.units.len(),
        m,
        "{}: one entry per sampled client",
        name
    );
    for us in &plan.units {
        prop_assert!(
            us.iter().all(|&x| x < u),
            "{}: unit out of range {:?}",
            name,
            us
        );
        prop_assert!(
            us.windows(2).all(|w| w[0] < w[1]),
            "{}: units not ascending/unique {:?}",
            name,
            us
        );
        prop_assert!(!us.is_empty(), "{}: a client got nothing", name);
    }
    let (per_client, per_unit) = loads(plan, u);
    prop_assert!(
        per_unit.iter().all(|&c| c >= 1),
        "{}: some unit untrained: {:?}",
        name,
        per_unit
    );
    prop_assert_eq!(
        plan.clients_per_unit(u),
        per_unit.clone(),
        "{}: clients_per_unit",
        name
    );
    if name == "all" {
        prop_assert!(per_client.iter().all(|&c| c == u));
        prop_assert!(per_unit.iter().all(|&c| c == m));
        return Ok(());
    }
    if u >= m {
        // every unit exactly once, ⌊U/M⌋ or ⌈U/M⌉ per client
        prop_assert!(per_unit.iter().all(|&c| c == 1), "{}: {:?}", name, per_unit);
        prop_assert!(
            spread(&per_client) <= 1,
            "{}: units per client {:?}",
            name,
            per_client
        );
        prop_assert!(per_client.iter().all(|&c| c == u / m || c == u.div_ceil(m)));
    } else {
        // one unit per client, ⌊M/U⌋ or ⌈M/U⌉ clients per unit
        prop_assert!(
            per_client.iter().all(|&c| c == 1),
            "{}: {:?}",
            name,
            per_client
        );
        prop_assert!(
            spread(&per_unit) <= 1,
            "{}: clients per unit {:?}",
            name,
            per_unit
        );
        prop_assert!(per_unit.iter().all(|&c| c == m / u || c == m.div_ceil(u)));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_planner_covers_balances_and_is_deterministic(
        m in 1usize..40,
        u in 1usize..80,
        round in 0u64..1000,
        seed in any::<u64>(),
    ) {
        for p in planners(seed) {
            let plan = p.plan(round, m, u).unwrap();
            check_common(p.name(), &plan, m, u)?;
            // same seed and round: the same plan, also from a fresh planner value
            prop_assert_eq!(&plan, &p.plan(round, m, u).unwrap(), "{}", p.name());
            let fresh = planners(seed).into_iter().find(|q| q.name() == p.name()).unwrap();
            prop_assert_eq!(&plan, &fresh.plan(round, m, u).unwrap(), "{}", p.name());
        }
    }

    /// The reference rule, written out: unit j → slot j mod M when U ≥ M; slot i → unit i mod U
    /// when U < M. It ignores the round.
    #[test]
    fn reference_rule_exactly(m in 1usize..40, u in 1usize..80, round in 0u64..1000) {
        let plan = ReferencePlanner.plan(round, m, u).unwrap();
        let mut expect = vec![Vec::new(); m];
        if u >= m {
            for j in 0..u {
                expect[j % m].push(j);
            }
        } else {
            for (i, e) in expect.iter_mut().enumerate() {
                e.push(i % u);
            }
        }
        prop_assert_eq!(&plan.units, &expect);
        prop_assert_eq!(plan, ReferencePlanner.plan(round + 1, m, u).unwrap());
    }

    /// Contiguous blocks, deepest first: client 0's block ends at the last unit, and client i+1's
    /// block ends right where client i's begins. When U < M, client i gets unit U−1−(i mod U).
    #[test]
    fn depth_aware_blocks_are_contiguous_and_deepest_first(
        m in 1usize..40,
        u in 1usize..80,
        round in 0u64..1000,
    ) {
        let plan = DepthAwarePlanner.plan(round, m, u).unwrap();
        prop_assert!(plan.units[0].contains(&(u - 1)), "first client lacks the last unit");
        if u >= m {
            let mut end = u;
            for (i, block) in plan.units.iter().enumerate() {
                let lo = block[0];
                prop_assert_eq!(block, &(lo..lo + block.len()).collect::<Vec<_>>(),
                    "client {} block not contiguous", i);
                prop_assert_eq!(lo + block.len(), end, "client {} block not adjacent", i);
                end = lo;
            }
            prop_assert_eq!(end, 0);
            // larger blocks go to the first clients (top of the network)
            let sizes: Vec<usize> = plan.units.iter().map(Vec::len).collect();
            prop_assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{:?}", sizes);
        } else {
            for (i, us) in plan.units.iter().enumerate() {
                prop_assert_eq!(us, &vec![u - 1 - (i % u)]);
            }
        }
        prop_assert_eq!(plan, DepthAwarePlanner.plan(round + 7, m, u).unwrap());
    }

    /// Reshuffle draws a fresh permutation per round: over 32 rounds at least two plans differ
    /// whenever more than one plan is possible (M ≥ 2 and U ≥ 2). With only two possible plans
    /// (U = M = 2), 32 equal rounds would have probability 2⁻³¹. Different seeds give different
    /// sequences of plans.
    #[test]
    fn reshuffle_differs_across_rounds(
        m in 2usize..40,
        u in 2usize..80,
        seed in any::<u64>(),
    ) {
        let p = ReshufflePlanner { seed };
        let plans: Vec<Plan> = (0..32).map(|r| p.plan(r, m, u).unwrap()).collect();
        prop_assert!(plans.iter().any(|q| q != &plans[0]), "32 identical rounds");
        let other = ReshufflePlanner { seed: seed ^ 0x5eed };
        let plans2: Vec<Plan> = (0..32).map(|r| other.plan(r, m, u).unwrap()).collect();
        prop_assert_ne!(plans, plans2);
    }
}

#[test]
fn reshuffle_is_the_reference_rule_over_a_permutation() {
    // U ≥ M: the multiset of slot sizes equals the reference one, and every unit appears once.
    for (m, u) in [(3usize, 10usize), (5, 5), (4, 17)] {
        for r in 0..5 {
            let plan = ReshufflePlanner { seed: 9 }.plan(r, m, u).unwrap();
            let reference = ReferencePlanner.plan(r, m, u).unwrap();
            let sizes: Vec<usize> = plan.units.iter().map(Vec::len).collect();
            let ref_sizes: Vec<usize> = reference.units.iter().map(Vec::len).collect();
            assert_eq!(sizes, ref_sizes, "m {m} u {u} r {r}");
            let mut all: Vec<usize> = plan.units.concat();
            all.sort_unstable();
            assert_eq!(all, (0..u).collect::<Vec<_>>());
        }
    }
}

#[test]
fn zero_clients_or_units_are_errors() {
    for p in planners(1) {
        for (m, u) in [(0usize, 5usize), (5, 0), (0, 0)] {
            let err = p.plan(0, m, u).unwrap_err();
            assert!(
                matches!(err, spry::Error::InvalidArgument { .. }),
                "{} ({m}, {u}): {err:?}",
                p.name()
            );
        }
    }
}

#[test]
fn names_are_distinct() {
    let names: Vec<&str> = planners(0).iter().map(|p| p.name()).collect();
    assert_eq!(names, ["reference", "reshuffle", "depth", "all"]);
}
