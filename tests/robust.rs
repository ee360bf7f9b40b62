//! Robust combination rules against naive twins, the bound each puts on hostile contributors,
//! and the simulated attacks' formulas.

use ndarray::{ArrayD, IxDyn};
use proptest::prelude::*;
use spry::federated::{AttackKind, ClientUpdate, CombineRule};
use spry::modules::Trainable;

fn arr(v: &[f64]) -> ArrayD<f64> {
    ArrayD::from_shape_vec(IxDyn(&[v.len()]), v.to_vec()).unwrap()
}

fn combine(rule: CombineRule, global: &[f64], values: &[(f64, Vec<f64>)]) -> Vec<f64> {
    let values: Vec<(f64, ArrayD<f64>)> = values.iter().map(|(w, v)| (*w, arr(v))).collect();
    let refs: Vec<(f64, &ArrayD<f64>)> = values.iter().map(|(w, v)| (*w, v)).collect();
    rule.combine(&arr(global), &refs)
        .unwrap()
        .into_raw_vec_and_offset()
        .0
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Naive twins, one coordinate at a time.
fn naive(rule: CombineRule, global: &[f64], values: &[(f64, Vec<f64>)]) -> Vec<f64> {
    let n = values.len();
    let total: f64 = values.iter().map(|(w, _)| w).sum();
    let column = |i: usize| sorted(values.iter().map(|(_, v)| v[i]).collect());
    (0..global.len())
        .map(|i| match rule {
            CombineRule::Mean => values.iter().map(|(w, v)| w * v[i]).sum::<f64>() / total,
            CombineRule::Median => {
                let c = column(i);
                if n % 2 == 1 {
                    c[n / 2]
                } else {
                    (c[n / 2 - 1] + c[n / 2]) / 2.0
                }
            }
            CombineRule::TrimmedMean { fraction } => {
                let k = (fraction * n as f64).floor() as usize;
                let c = column(i);
                c[k..n - k].iter().sum::<f64>() / (n - 2 * k) as f64
            }
            CombineRule::ClipToMedian { factor } => {
                let norm = |v: &[f64]| {
                    v.iter()
                        .zip(global)
                        .map(|(a, g)| (a - g).powi(2))
                        .sum::<f64>()
                        .sqrt()
                };
                let norms = sorted(values.iter().map(|(_, v)| norm(v)).collect());
                let bound = factor * norms[(n - 1) / 2];
                global[i]
                    + values
                        .iter()
                        .map(|(w, v)| {
                            let nv = norm(v);
                            let s = if nv > bound { bound / nv } else { 1.0 };
                            w * s * (v[i] - global[i])
                        })
                        .sum::<f64>()
                        / total
            }
        })
        .collect()
}

fn rules() -> Vec<CombineRule> {
    vec![
        CombineRule::Mean,
        CombineRule::Median,
        CombineRule::TrimmedMean { fraction: 0.2 },
        CombineRule::TrimmedMean { fraction: 0.45 },
        CombineRule::ClipToMedian { factor: 1.0 },
        CombineRule::ClipToMedian { factor: 3.0 },
    ]
}

fn contributions(dim: usize) -> impl Strategy<Value = (Vec<f64>, Vec<(f64, Vec<f64>)>)> {
    (
        prop::collection::vec(-2.0..2.0f64, dim),
        prop::collection::vec(
            (1.0..50.0f64, prop::collection::vec(-3.0..3.0f64, dim)),
            1..9,
        ),
    )
}

fn close(a: &[f64], b: &[f64]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + x.abs().max(y.abs())))
}

proptest! {
    #[test]
    fn every_rule_matches_its_naive_twin((global, values) in contributions(5)) {
        for rule in rules() {
            let got = combine(rule, &global, &values);
            let want = naive(rule, &global, &values);
            prop_assert!(close(&got, &want), "{rule}: {got:?} vs {want:?}");
        }
    }

    /// k hostile contributors sending anything finite: the median and a trimmed mean that drops
    /// at least k values at each end stay within the honest values' range; a clipped change is
    /// no longer than the largest honest change (for c = 1).
    #[test]
    fn hostile_values_are_bounded(
        (global, honest) in contributions(4),
        hostile in prop::collection::vec(
            prop_oneof![Just(1e300), Just(-1e300), Just(f64::MAX), -1e30..1e30f64],
            1..3,
        ),
    ) {
        let k = hostile.len();
        let n = honest.len() + k;
        prop_assume!(honest.len() > 2 * k);
        let mut values = honest.clone();
        for (j, h) in hostile.iter().enumerate() {
            values.insert(j % values.len(), (1e9, vec![*h; global.len()]));
        }
        let lo: Vec<f64> = (0..global.len())
            .map(|i| honest.iter().map(|(_, v)| v[i]).fold(f64::INFINITY, f64::min))
            .collect();
        let hi: Vec<f64> = (0..global.len())
            .map(|i| honest.iter().map(|(_, v)| v[i]).fold(f64::NEG_INFINITY, f64::max))
            .collect();
        let fraction = (k as f64 + 0.5) / n as f64;
        for rule in [CombineRule::Median, CombineRule::TrimmedMean { fraction }] {
            let got = combine(rule, &global, &values);
            for i in 0..got.len() {
                prop_assert!(lo[i] <= got[i] && got[i] <= hi[i], "{rule}: {got:?} outside {lo:?}..{hi:?}");
            }
        }
        let got = combine(CombineRule::ClipToMedian { factor: 1.0 }, &global, &values);
        let change = |v: &[f64]| v.iter().zip(&global).map(|(a, g)| (a - g).powi(2)).sum::<f64>().sqrt();
        let largest = honest.iter().map(|(_, v)| change(v)).fold(0.0, f64::max);
        prop_assert!(got.iter().all(|x| x.is_finite()));
        prop_assert!(change(&got) <= largest * (1.0 + 1e-9), "{} > {largest}", change(&got));
    }
}

#[test]
fn the_mean_of_values_near_the_float_limit_does_not_overflow() {
    let big = f64::MAX * 0.9;
    for rule in rules() {
        let got = combine(rule, &[big], &[(3.0, vec![big]), (5.0, vec![big])]);
        assert!(got[0].is_finite(), "{rule}: {got:?}");
    }
}

#[test]
fn rules_read_and_print_their_command_line_names() {
    for rule in rules() {
        assert_eq!(rule.to_string().parse::<CombineRule>().unwrap(), rule);
    }
    assert_eq!(
        "clip".parse::<CombineRule>().unwrap(),
        CombineRule::ClipToMedian { factor: 1.0 }
    );
    assert_eq!(
        "trimmed-mean".parse::<CombineRule>().unwrap(),
        CombineRule::TrimmedMean { fraction: 0.2 }
    );
    for bad in [
        "",
        "avg",
        "clip:0",
        "clip:-1",
        "clip:nan",
        "clip:inf",
        "trimmed-mean:0.5",
        "median:2",
        "mean:1",
    ] {
        assert!(bad.parse::<CombineRule>().is_err(), "{bad:?} accepted");
    }
    let no_weight = CombineRule::Mean.combine(&arr(&[0.0]), &[(0.0, &arr(&[1.0]))]);
    assert!(no_weight.is_err());
    assert!(CombineRule::Mean.combine::<f64>(&arr(&[0.0]), &[]).is_err());
}

#[test]
fn attacks_scale_or_reverse_the_change() {
    let mut global = Trainable::new();
    global
        .push_unit("u".to_string(), vec![("p".to_string(), arr(&[1.0, -1.0]))])
        .unwrap();
    let sent = |kind: AttackKind| {
        let mut u = ClientUpdate {
            client: 0,
            round: 0,
            n_examples: 1,
            params: vec![(0, arr(&[1.5, -0.5]))],
        };
        kind.corrupt(&global, &mut u);
        u.params[0].1.clone().into_raw_vec_and_offset().0
    };
    assert_eq!(sent(AttackKind::Scale { factor: 10.0 }), vec![6.0, 4.0]);
    assert_eq!(sent(AttackKind::SignFlip { factor: 4.0 }), vec![-1.0, -3.0]);
    for kind in [
        AttackKind::Scale { factor: 100.0 },
        AttackKind::SignFlip { factor: 4.0 },
    ] {
        assert_eq!(kind.to_string().parse::<AttackKind>().unwrap(), kind);
    }
    assert_eq!(
        "sign-flip".parse::<AttackKind>().unwrap(),
        AttackKind::SignFlip { factor: 4.0 }
    );
    for bad in ["flip", "scale:0", "scale:-2", "sign-flip:x"] {
        assert!(bad.parse::<AttackKind>().is_err(), "{bad:?} accepted");
    }
}
