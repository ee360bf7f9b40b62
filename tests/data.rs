//! Data: TSV loading and its errors, IID / Dirichlet / natural partitions, per-client train/test
//! splits, and the real Rotten Tomatoes file.

use std::collections::{BTreeMap, BTreeSet};
#[path = "common/assets.rs"]
mod assets;
#[path = "common/temp_file.rs"]
mod temp_file;

use std::path::Path;

use temp_file::TempFile;

use proptest::prelude::*;
use spry::Error;
use spry::data::{Partition, dirichlet, iid, load_labelled_tsv, natural, train_test_split};

// ---- TSV ---------------------------------------------------------------------------------------

#[test]
fn tsv_columns_by_name_in_any_order() {
    let f = TempFile::new(
        "tsv",
        "id\ttext\tmovie\tlabel\n\
         a\tgood film\tm1\t1\n\
         b\tbad film\tm2\t0\n\
         \n\
         c\tso-so, \"quoted\"\tm1\t 2 \n",
    );
    let ex = load_labelled_tsv(&f.0, "text", "label", Some("movie")).unwrap();
    assert_eq!(ex.len(), 3, "the blank line is skipped");
    assert_eq!(ex[0].text, "good film");
    assert_eq!(ex[0].label, 1);
    assert_eq!(ex[0].group.as_deref(), Some("m1"));
    assert_eq!(ex[1].text, "bad film");
    assert_eq!(ex[1].label, 0);
    assert_eq!(ex[1].group.as_deref(), Some("m2"));
    assert_eq!(ex[2].text, "so-so, \"quoted\"", "no quoting rules in TSV");
    assert_eq!(ex[2].label, 2, "label whitespace trimmed");
    // without a group column
    let ex = load_labelled_tsv(&f.0, "id", "label", None).unwrap();
    assert_eq!(
        ex.iter().map(|e| e.text.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c"]
    );
    assert!(ex.iter().all(|e| e.group.is_none()));
}

#[test]
fn tsv_crlf_and_extra_fields() {
    let f = TempFile::new("tsv", "label\ttext\r\n1\thello\r\n0\tworld\textra\r\n");
    let ex = load_labelled_tsv(&f.0, "text", "label", None).unwrap();
    assert_eq!(ex.len(), 2);
    assert_eq!(ex[0].text, "hello");
    assert_eq!(ex[1].text, "world");
    assert_eq!(ex[1].label, 0);
}

/// The `Format` error's message, after checking the path and format it names.
fn format_msg(err: Error, path: &Path) -> String {
    match err {
        Error::Format {
            path: p,
            format,
            msg,
        } => {
            assert_eq!(p, path);
            assert_eq!(format, "tsv");
            msg
        }
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

#[test]
fn tsv_missing_column_is_a_format_error_naming_it() {
    let f = TempFile::new("tsv", "label\ttext\n1\thi\n");
    for (text, label, group) in [
        ("sentence", "label", None),
        ("text", "polarity", None),
        ("text", "label", Some("movie")),
    ] {
        let msg = format_msg(
            load_labelled_tsv(&f.0, text, label, group).unwrap_err(),
            &f.0,
        );
        let missing = if text == "sentence" {
            "sentence"
        } else if label == "polarity" {
            "polarity"
        } else {
            "movie"
        };
        assert!(msg.contains(missing), "{msg}");
    }
}

#[test]
fn tsv_short_row_names_the_line() {
    // line 1 header, 2 fine, 3 blank, 4 short
    let f = TempFile::new(
        "tsv",
        "label\tmovie\ttext\n1\tm\tfine\n\n0\tm\n1\tm\tlater\n",
    );
    let msg = format_msg(
        load_labelled_tsv(&f.0, "text", "label", None).unwrap_err(),
        &f.0,
    );
    assert!(msg.contains("line 4"), "{msg}");
    // the group column counts too: here the group is the last column
    let f = TempFile::new("tsv", "label\ttext\tmovie\n1\tok\tm\n0\tno movie\n");
    let msg = format_msg(
        load_labelled_tsv(&f.0, "text", "label", Some("movie")).unwrap_err(),
        &f.0,
    );
    assert!(msg.contains("line 3"), "{msg}");
    // but without the group it loads
    assert_eq!(
        load_labelled_tsv(&f.0, "text", "label", None)
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn tsv_bad_label_names_the_line() {
    for bad in ["x", "-1", "1.5", "", "positive", "1e3"] {
        let f = TempFile::new("tsv", format!("label\ttext\n0\ta\n1\tb\n{bad}\tc\n"));
        let msg = format_msg(
            load_labelled_tsv(&f.0, "text", "label", None).unwrap_err(),
            &f.0,
        );
        assert!(msg.contains("line 4"), "{bad:?}: {msg}");
    }
}

#[test]
fn tsv_missing_or_empty_file() {
    let path = std::env::temp_dir().join("spry-data-test-does-not-exist.tsv");
    match load_labelled_tsv(&path, "text", "label", None).unwrap_err() {
        Error::Io { path: p, .. } => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
    let f = TempFile::new("tsv", "");
    format_msg(
        load_labelled_tsv(&f.0, "text", "label", None).unwrap_err(),
        &f.0,
    );
    // a header alone is an empty data set, not an error
    let f = TempFile::new("tsv", "label\ttext\n");
    assert!(
        load_labelled_tsv(&f.0, "text", "label", None)
            .unwrap()
            .is_empty()
    );
}

// ---- partitions: shared checks -----------------------------------------------------------------

/// Asserts the parts are pairwise disjoint with every index below `n`; returns their union.
fn disjoint_union(parts: &Partition, n: usize) -> BTreeSet<usize> {
    let mut seen = BTreeSet::new();
    for (c, p) in parts.iter().enumerate() {
        for &i in p {
            assert!(i < n, "client {c}: index {i} out of range {n}");
            assert!(seen.insert(i), "index {i} assigned twice (client {c})");
        }
    }
    seen
}

// ---- IID ---------------------------------------------------------------------------------------

proptest! {
    #[test]
    fn iid_is_an_even_disjoint_cover(n in 1usize..500, m_frac in 0.0f64..1.0, seed in any::<u64>()) {
        let m = 1 + ((n - 1) as f64 * m_frac) as usize;
        let parts = iid(n, m, seed).unwrap();
        prop_assert_eq!(parts.len(), m);
        prop_assert_eq!(disjoint_union(&parts, n), (0..n).collect::<BTreeSet<_>>());
        let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
        prop_assert!(sizes.iter().all(|&s| s == n / m || s == n.div_ceil(m)), "{:?}", sizes);
        prop_assert_eq!(&parts, &iid(n, m, seed).unwrap());
    }
}

#[test]
fn iid_shuffles_per_seed_and_rejects_bad_counts() {
    let a = iid(100, 4, 1).unwrap();
    assert_ne!(a, iid(100, 4, 2).unwrap());
    assert_ne!(a[0], (0..25).collect::<Vec<_>>(), "not shuffled");
    for (n, m) in [(10usize, 0usize), (10, 11), (0, 1)] {
        assert!(matches!(
            iid(n, m, 0).unwrap_err(),
            Error::InvalidArgument { .. }
        ));
    }
}

// ---- Dirichlet ---------------------------------------------------------------------------------

fn balanced_labels(n_classes: usize, per_class: usize) -> Vec<usize> {
    (0..n_classes * per_class).map(|i| i % n_classes).collect()
}

/// Label skew of a partition: the mean over clients of the total-variation distance between the
/// client's label distribution and the global one (0 = IID, → 1 − 1/C for one label per client
/// with balanced classes).
fn label_skew(parts: &Partition, labels: &[usize]) -> f64 {
    let n_classes = labels.iter().max().unwrap() + 1;
    let mut global = vec![0.0; n_classes];
    for &l in labels {
        global[l] += 1.0 / labels.len() as f64;
    }
    let tv: f64 = parts
        .iter()
        .map(|p| {
            let mut q = vec![0.0; n_classes];
            for &i in p {
                q[labels[i]] += 1.0 / p.len() as f64;
            }
            0.5 * q
                .iter()
                .zip(&global)
                .map(|(a, b)| (a - b).abs())
                .sum::<f64>()
        })
        .sum();
    tv / parts.len() as f64
}

#[test]
fn dirichlet_sizes_disjoint_deterministic() {
    let labels = balanced_labels(4, 250);
    for (m, alpha) in [(20usize, 0.1f64), (7, 1.0), (30, 10.0), (1, 0.5)] {
        let parts = dirichlet(&labels, m, alpha, 3).unwrap();
        assert_eq!(parts.len(), m);
        for p in &parts {
            assert_eq!(p.len(), labels.len() / m, "each client gets ⌊N/M⌋");
        }
        let used = disjoint_union(&parts, labels.len());
        assert_eq!(used.len(), m * (labels.len() / m));
        assert_eq!(parts, dirichlet(&labels, m, alpha, 3).unwrap());
        assert_ne!(parts, dirichlet(&labels, m, alpha, 4).unwrap());
    }
}

/// Smaller α, more skew. Measured as the mean total-variation distance of the clients' label
/// distributions from the global one, averaged over 5 seeds, 4 balanced classes, 20 clients of
/// 50 examples. Reference points: with α → ∞ only multinomial noise remains,
/// E TV ≈ ½·4·√(2/π)·√(p(1−p)/50) ≈ 0.10 (p = ¼); one label per client gives 0.75.
#[test]
fn dirichlet_smaller_alpha_more_skew() {
    let labels = balanced_labels(4, 250);
    let skew = |alpha: f64| {
        (0..5)
            .map(|s| label_skew(&dirichlet(&labels, 20, alpha, s).unwrap(), &labels))
            .sum::<f64>()
            / 5.0
    };
    let (s01, s1, s100) = (skew(0.1), skew(1.0), skew(100.0));
    assert!(s100 < 0.16, "α = 100 should be near IID, skew {s100}");
    assert!(s01 > 0.45, "α = 0.1 should be strongly skewed, skew {s01}");
    assert!(
        s01 > s1 + 0.1 && s1 > s100 + 0.1,
        "skew α=0.1 {s01}, α=1 {s1}, α=100 {s100}"
    );
    // and IID is the floor
    let s_iid = label_skew(&iid(1000, 20, 0).unwrap(), &labels);
    assert!(s_iid < 0.16, "iid skew {s_iid}");
}

/// Classes with no example at all (labels 0 and 2 only) must never be drawn.
#[test]
fn dirichlet_with_an_absent_class() {
    let labels: Vec<usize> = (0..200).map(|i| if i % 2 == 0 { 0 } else { 2 }).collect();
    for seed in 0..20 {
        for alpha in [0.1, 1.0, 10.0] {
            let parts = dirichlet(&labels, 10, alpha, seed).unwrap();
            assert!(parts.iter().all(|p| p.len() == 20));
            disjoint_union(&parts, labels.len());
        }
    }
}

/// A very small α makes every client's Gamma draws underflow to 0; the partition must still be
/// well-formed and (nearly) one label per client.
#[test]
fn dirichlet_with_a_tiny_alpha() {
    let labels = balanced_labels(4, 100);
    for seed in 0..10 {
        let parts = dirichlet(&labels, 8, 1e-3, seed).unwrap();
        assert!(parts.iter().all(|p| p.len() == 50));
        disjoint_union(&parts, labels.len());
        // one label per client until its class runs out: at most 2 labels each (a client can
        // straddle one exhaustion), and strongly skewed overall
        for p in &parts {
            let classes: BTreeSet<usize> = p.iter().map(|&i| labels[i]).collect();
            assert!(classes.len() <= 2, "seed {seed}: {classes:?}");
        }
        assert!(label_skew(&parts, &labels) > 0.5);
    }
}

#[test]
fn dirichlet_rejects_bad_arguments() {
    let labels = balanced_labels(2, 5);
    for (m, alpha) in [
        (2usize, 0.0f64),
        (2, -1.0),
        (2, f64::NAN),
        (0, 1.0),
        (11, 1.0),
    ] {
        assert!(
            matches!(
                dirichlet(&labels, m, alpha, 0).unwrap_err(),
                Error::InvalidArgument { .. }
            ),
            "m {m} α {alpha}"
        );
    }
    assert!(dirichlet(&[], 1, 1.0, 0).is_err());
}

proptest! {
    /// Any labels (gaps and imbalance included), any α, any client count: well-formed parts.
    #[test]
    fn dirichlet_is_always_well_formed(
        labels in prop::collection::vec(0usize..6, 1..200),
        m_frac in 0.0f64..1.0,
        log_alpha in -3.0f64..2.0,
        seed in any::<u64>(),
    ) {
        let n = labels.len();
        let m = 1 + ((n - 1) as f64 * m_frac) as usize;
        let parts = dirichlet(&labels, m, 10f64.powf(log_alpha), seed).unwrap();
        prop_assert_eq!(parts.len(), m);
        prop_assert!(parts.iter().all(|p| p.len() == n / m));
        disjoint_union(&parts, n);
    }
}

// ---- natural -------------------------------------------------------------------------------------

/// Groups g0..g(k−1) of sizes 1..=k+? interleaved, as a movie column would be after shuffling.
fn groups(sizes: &[usize]) -> Vec<String> {
    let mut out = Vec::new();
    let mut left = sizes.to_vec();
    while left.iter().any(|&l| l > 0) {
        for (g, l) in left.iter_mut().enumerate() {
            if *l > 0 {
                out.push(format!("g{g}"));
                *l -= 1;
            }
        }
    }
    out
}

fn check_natural(names: &[String], m: usize, seed: u64) -> Partition {
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let parts = natural(&refs, m, seed).unwrap();
    assert_eq!(parts.len(), m);
    assert_eq!(
        disjoint_union(&parts, names.len()),
        (0..names.len()).collect::<BTreeSet<_>>()
    );
    // every group lies within one client
    let mut owner: BTreeMap<&str, usize> = BTreeMap::new();
    for (c, p) in parts.iter().enumerate() {
        assert!(!p.is_empty(), "client {c} empty");
        for &i in p {
            let prev = owner.insert(refs[i], c);
            assert!(prev.is_none() || prev == Some(c), "group {} split", refs[i]);
        }
    }
    // greedy onto the smallest client: sizes differ by at most the largest group
    let mut gsize: BTreeMap<&str, usize> = BTreeMap::new();
    for g in &refs {
        *gsize.entry(g).or_default() += 1;
    }
    let largest = *gsize.values().max().unwrap();
    let sizes: Vec<usize> = parts.iter().map(Vec::len).collect();
    assert!(
        sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= largest,
        "{sizes:?} (largest group {largest})"
    );
    parts
}

#[test]
fn natural_keeps_groups_together() {
    let sizes = [5usize, 1, 7, 3, 3, 2, 9, 4, 1, 6];
    let names = groups(&sizes);
    for m in [1usize, 3, 4, 10] {
        let parts = check_natural(&names, m, 11);
        assert_eq!(parts, check_natural(&names, m, 11), "deterministic");
    }
    // one client per group: every client is exactly one group
    let parts = check_natural(&names, sizes.len(), 5);
    for p in &parts {
        let gs: BTreeSet<&str> = p.iter().map(|&i| names[i].as_str()).collect();
        assert_eq!(gs.len(), 1);
    }
    let mut got: Vec<usize> = parts.iter().map(Vec::len).collect();
    got.sort_unstable();
    let mut want = sizes.to_vec();
    want.sort_unstable();
    assert_eq!(got, want);
    // errors
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    for m in [0usize, sizes.len() + 1] {
        assert!(matches!(
            natural(&refs, m, 0).unwrap_err(),
            Error::InvalidArgument { .. }
        ));
    }
}

proptest! {
    #[test]
    fn natural_is_well_formed(
        sizes in prop::collection::vec(1usize..12, 1..30),
        m_frac in 0.0f64..1.0,
        seed in any::<u64>(),
    ) {
        let m = 1 + ((sizes.len() - 1) as f64 * m_frac) as usize;
        check_natural(&groups(&sizes), m, seed);
    }
}

// ---- train / test split ------------------------------------------------------------------------

#[test]
fn train_test_split_sizes_and_disjointness() {
    let parts: Partition = vec![
        (0..10).collect(),
        (10..11).collect(),
        (11..13).collect(),
        vec![],
        (13..50).collect(),
    ];
    for frac in [0.0, 0.1, 0.2, 0.5, 1.0] {
        let (train, test) = train_test_split(&parts, frac, 9);
        assert_eq!((train.len(), test.len()), (parts.len(), parts.len()));
        for (c, p) in parts.iter().enumerate() {
            let n = p.len();
            let mut n_test = (n as f64 * frac).floor() as usize;
            if n_test == 0 && n >= 2 && frac > 0.0 {
                n_test = 1;
            }
            assert_eq!(test[c].len(), n_test, "client {c} frac {frac}");
            assert_eq!(train[c].len(), n - n_test);
            let tr: BTreeSet<usize> = train[c].iter().copied().collect();
            let te: BTreeSet<usize> = test[c].iter().copied().collect();
            assert!(tr.is_disjoint(&te));
            let all: BTreeSet<usize> = tr.union(&te).copied().collect();
            assert_eq!(all, p.iter().copied().collect::<BTreeSet<_>>());
        }
        assert_eq!(
            (train.clone(), test.clone()),
            train_test_split(&parts, frac, 9)
        );
    }
    // a seeded shuffle: another seed picks other test examples
    let (_, t1) = train_test_split(&parts, 0.2, 1);
    let (_, t2) = train_test_split(&parts, 0.2, 2);
    assert_ne!(t1, t2);
    assert_ne!(t1[4], (13..20).collect::<Vec<_>>(), "not shuffled");
}

// ---- the real file -------------------------------------------------------------------------------

/// The Rotten Tomatoes training file: 11,348 rows (6,550 fresh, 4,798 rotten), labels 0/1, and
/// 453 distinct movies in the file (counted independently with
/// `cut -f2 | sort -u | wc -l`; the asset README says 454, which counts movie names before the
/// extractor's whitespace normalisation merged two of them).
#[test]
fn rotten_tomatoes_train_file() {
    let path = assets::asset("text/rt_polarity_train.tsv");
    let ex = load_labelled_tsv(&path, "text", "label", Some("movie")).unwrap();
    assert_eq!(ex.len(), 11_348);
    assert!(ex.iter().all(|e| e.label <= 1));
    assert_eq!(ex.iter().filter(|e| e.label == 1).count(), 6_550);
    assert_eq!(ex.iter().filter(|e| e.label == 0).count(), 4_798);
    assert!(ex.iter().all(|e| !e.text.is_empty()));
    let movies: Vec<&str> = ex.iter().map(|e| e.group.as_deref().unwrap()).collect();
    let distinct: BTreeSet<&str> = movies.iter().copied().collect();
    assert_eq!(distinct.len(), 453);
    // a natural partition over them, one client per movie and merged into 50
    let parts = natural(&movies, distinct.len(), 0).unwrap();
    assert!(parts.iter().all(|p| !p.is_empty()));
    let merged = natural(&movies, 50, 0).unwrap();
    assert_eq!(
        disjoint_union(&merged, ex.len()).len(),
        ex.len(),
        "natural covers every example"
    );
}

#[test]
fn holdout_is_a_seeded_disjoint_split() {
    use spry::data::holdout;
    let items: Vec<usize> = (0..103).collect();
    let (tr, va) = holdout(items.clone(), 0.1, 7).unwrap();
    assert_eq!((tr.len(), va.len()), (93, 10));
    let mut all: Vec<usize> = tr.iter().chain(&va).copied().collect();
    all.sort_unstable();
    assert_eq!(all, items);
    assert!(tr.windows(2).all(|w| w[0] < w[1]) && va.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(holdout(items.clone(), 0.1, 7).unwrap().1, va);
    assert_ne!(holdout(items.clone(), 0.1, 8).unwrap().1, va);
    assert_eq!(holdout(items.clone(), 0.0, 7).unwrap().1.len(), 0);
    for bad in [1.0, -0.1, f64::NAN] {
        assert!(holdout(items.clone(), bad, 7).is_err());
    }
}
