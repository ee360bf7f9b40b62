//! Federated partitions of a labelled data set, all deterministic for a seed.

use serde::{Deserialize, Serialize};

use crate::rng::{Domain, KeyedRng};
use crate::{Error, Result};

/// Example indices per client.
pub type Partition = Vec<Vec<usize>>;

/// How to split the examples among clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum PartitionScheme {
    /// Shuffle and deal evenly.
    Iid,
    /// Label skew: per-client class proportions from Dirichlet(α) (the reference's procedure).
    Dirichlet {
        /// Concentration α (1.0 ≈ mild skew, 0.1 = strong skew).
        alpha: f64,
    },
    /// One group per distinct value of a column (e.g. the movie), merged into the requested
    /// number of clients.
    Natural,
}

impl PartitionScheme {
    /// Splits `examples` among `n_clients` clients by this scheme: [`iid`], [`dirichlet`] over
    /// the labels, or [`natural`] over the group values (an example without one is in the group
    /// `""`).
    ///
    /// # Errors
    /// The chosen function's errors (no clients, more clients than examples or groups, a bad α).
    pub fn split(
        &self,
        examples: &[super::Example],
        n_clients: usize,
        seed: u64,
    ) -> Result<Partition> {
        match self {
            PartitionScheme::Iid => iid(examples.len(), n_clients, seed),
            PartitionScheme::Dirichlet { alpha } => {
                let labels: Vec<usize> = examples.iter().map(|e| e.label).collect();
                dirichlet(&labels, n_clients, *alpha, seed)
            }
            PartitionScheme::Natural => {
                let groups: Vec<&str> = examples
                    .iter()
                    .map(|e| e.group.as_deref().unwrap_or(""))
                    .collect();
                natural(&groups, n_clients, seed)
            }
        }
    }
}

/// Shuffles `0..n` and deals it evenly into `n_clients` parts.
///
/// # Errors
/// [`Error::InvalidArgument`] if `n_clients` is 0 or exceeds `n`.
pub fn iid(n: usize, n_clients: usize, seed: u64) -> Result<Partition> {
    if n_clients == 0 || n_clients > n {
        return Err(Error::invalid(
            "partition::iid",
            format!("{n_clients} clients for {n} examples"),
        ));
    }
    let mut idx: Vec<usize> = (0..n).collect();
    KeyedRng::new(seed, Domain::Data, &[1]).shuffle(&mut idx);
    let mut parts = vec![Vec::new(); n_clients];
    for (i, e) in idx.into_iter().enumerate() {
        parts[i % n_clients].push(e);
    }
    Ok(parts)
}

/// The logarithm of a Gamma(shape, 1) draw (Marsaglia–Tsang; shape < 1 through
/// `Gamma(shape+1)·U^{1/shape}`). Kept in log space because for a small shape the draw itself
/// underflows: with shape 1e-3, `U^{1000}` is 0 in f64 for most U.
fn ln_gamma_draw(rng: &mut KeyedRng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u = 1.0 - rng.uniform();
        return ln_gamma_draw(rng, shape + 1.0) + u.ln() / shape;
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    loop {
        let x = rng.normal();
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u = 1.0 - rng.uniform();
        if u.ln() < 0.5 * x * x + d - d * v + d * v.ln() {
            return (d * v).ln();
        }
    }
}

/// Label-skewed partition, the reference's procedure: every client draws class proportions
/// `p_k ~ Dir(α·1_C)` and receives `⌊N / n_clients⌋` examples, drawn one at a time by sampling a
/// class from `p_k` and taking the next unused (shuffled) example of that class; when a class runs
/// out its column is zeroed for every client and the rows renormalised.
///
/// # Errors
/// [`Error::InvalidArgument`] if α ≤ 0, `n_clients` is 0 or exceeds the number of examples.
pub fn dirichlet(labels: &[usize], n_clients: usize, alpha: f64, seed: u64) -> Result<Partition> {
    const OP: &str = "partition::dirichlet";
    let n = labels.len();
    if alpha.is_nan() || alpha <= 0.0 || n_clients == 0 || n_clients > n {
        return Err(Error::invalid(
            OP,
            format!("alpha {alpha}, {n_clients} clients, {n} examples"),
        ));
    }
    let n_classes = labels.iter().max().map_or(0, |m| m + 1);
    let mut rng = KeyedRng::new(seed, Domain::Data, &[2]);
    let mut pools: Vec<Vec<usize>> = vec![Vec::new(); n_classes];
    for (i, &l) in labels.iter().enumerate() {
        pools[l].push(i);
    }
    for p in &mut pools {
        rng.shuffle(p);
        p.reverse(); // pop() then takes them in shuffled order
    }
    let mut props: Vec<Vec<f64>> = (0..n_clients)
        .map(|_| {
            // Gamma draws normalised in log space (the largest becomes 1, so s ≥ 1)
            let lg: Vec<f64> = (0..n_classes)
                .map(|_| ln_gamma_draw(&mut rng, alpha))
                .collect();
            let top = lg.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
            let g: Vec<f64> = lg.iter().map(|l| (l - top).exp()).collect();
            let s: f64 = g.iter().sum();
            g.into_iter().map(|v| v / s).collect()
        })
        .collect();
    // a class index with no example at all (labels with gaps) must never be drawn
    for (c, pool) in pools.iter().enumerate() {
        if pool.is_empty() {
            for row in &mut props {
                row[c] = 0.0;
            }
        }
    }
    let per_client = n / n_clients;
    let mut parts = vec![Vec::with_capacity(per_client); n_clients];
    for (k, part) in parts.iter_mut().enumerate() {
        for _ in 0..per_client {
            // renormalise the client's row over the classes that still have examples
            let total: f64 = props[k].iter().sum();
            if total <= 0.0 {
                // this client's classes are exhausted: fall back to the remaining classes uniformly
                for (c, pool) in pools.iter().enumerate() {
                    props[k][c] = if pool.is_empty() { 0.0 } else { 1.0 };
                }
            }
            let total: f64 = props[k].iter().sum();
            let mut r = rng.uniform() * total;
            // (the last class with weight, should rounding carry r past the end)
            let mut class = props[k]
                .iter()
                .rposition(|&p| p > 0.0)
                .expect("some class has examples left");
            for (c, &p) in props[k].iter().enumerate() {
                if r < p {
                    class = c;
                    break;
                }
                r -= p;
            }
            let e = pools[class]
                .pop()
                .expect("classes with weight have examples");
            part.push(e);
            if pools[class].is_empty() {
                for row in &mut props {
                    row[class] = 0.0;
                }
            }
        }
    }
    Ok(parts)
}

/// Natural partition: examples with the same group value go to the same client. Groups are
/// shuffled and dealt to `n_clients` clients largest-first onto the currently smallest client,
/// so sizes stay balanced; with `n_clients` = number of groups every group is its own client.
///
/// # Errors
/// [`Error::InvalidArgument`] if `n_clients` is 0 or exceeds the number of groups.
pub fn natural(groups: &[&str], n_clients: usize, seed: u64) -> Result<Partition> {
    let mut names: Vec<&str> = groups.to_vec();
    names.sort_unstable();
    names.dedup();
    if n_clients == 0 || n_clients > names.len() {
        return Err(Error::invalid(
            "partition::natural",
            format!("{n_clients} clients for {} groups", names.len()),
        ));
    }
    let mut members: Vec<Vec<usize>> = vec![Vec::new(); names.len()];
    for (i, g) in groups.iter().enumerate() {
        let gi = names.binary_search(g).expect("name listed");
        members[gi].push(i);
    }
    KeyedRng::new(seed, Domain::Data, &[3]).shuffle(&mut members);
    members.sort_by_key(|m| std::cmp::Reverse(m.len())); // stable: ties keep the shuffled order
    let mut parts: Partition = vec![Vec::new(); n_clients];
    for m in members {
        let smallest = (0..n_clients)
            .min_by_key(|&c| (parts[c].len(), c))
            .expect("n_clients > 0");
        parts[smallest].extend(m);
    }
    Ok(parts)
}

/// Splits every client's examples into (train, test) after a seeded shuffle, `test_fraction` of
/// them (rounded down, at least one when the client has two or more) going to test.
pub fn train_test_split(
    parts: &Partition,
    test_fraction: f64,
    seed: u64,
) -> (Partition, Partition) {
    let test_fraction = if test_fraction.is_nan() {
        0.0
    } else {
        test_fraction.clamp(0.0, 1.0)
    };
    let mut train = Vec::with_capacity(parts.len());
    let mut test = Vec::with_capacity(parts.len());
    for (c, p) in parts.iter().enumerate() {
        let mut p = p.clone();
        KeyedRng::new(seed, Domain::Data, &[4, c as u64]).shuffle(&mut p);
        let mut n_test = (p.len() as f64 * test_fraction).floor() as usize;
        if n_test == 0 && p.len() >= 2 && test_fraction > 0.0 {
            n_test = 1;
        }
        let tr = p.split_off(n_test);
        test.push(p);
        train.push(tr);
    }
    (train, test)
}

/// Holds out a seeded `fraction` of `examples` (rounded down) as a validation split, before any
/// federated partitioning: `(train, validation)`, each in the original order. Hyper-parameters
/// are chosen on the validation split so the test set is never used for a choice.
///
/// # Errors
/// [`crate::Error::InvalidArgument`] if `fraction` is outside `[0, 1)`.
pub fn holdout<T>(examples: Vec<T>, fraction: f64, seed: u64) -> crate::Result<(Vec<T>, Vec<T>)> {
    if !(0.0..1.0).contains(&fraction) {
        return Err(crate::Error::invalid(
            "holdout",
            format!("validation fraction {fraction} is outside [0, 1)"),
        ));
    }
    let n_val = (examples.len() as f64 * fraction).floor() as usize;
    let mut order: Vec<usize> = (0..examples.len()).collect();
    KeyedRng::new(seed, Domain::Data, &[7]).shuffle(&mut order);
    let mut is_val = vec![false; examples.len()];
    for &i in &order[..n_val] {
        is_val[i] = true;
    }
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (e, v) in examples.into_iter().zip(is_val) {
        if v { val.push(e) } else { train.push(e) }
    }
    Ok((train, val))
}
