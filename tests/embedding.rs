//! Embedding lookup: finite differences over the table, linearity, K stacking, primal equality,
//! symbolic zeros for a frozen table, the reference twins, typed errors and f32.

mod common;

use common::*;
use ndarray::{Array2, Ix2};
use proptest::prelude::*;
use spry::kernels::{embedding, embedding_dual, embedding_dual_reference, embedding_reference};
use spry::{Dual, Error};

/// Random case: ids `[b, t]` below `vocab`, table `[vocab, h]`, K directions over the table.
#[derive(Debug, Clone)]
struct Case {
    b: usize,
    t: usize,
    vocab: usize,
    h: usize,
    k: usize,
    ids: Vec<u32>,
    table: Vec<f64>,
    dirs: Vec<f64>,
}

impl Case {
    fn ids(&self) -> Array2<u32> {
        Array2::from_shape_vec((self.b, self.t), self.ids.clone()).unwrap()
    }
    fn n_table(&self) -> usize {
        self.vocab * self.h
    }
    fn n_out(&self) -> usize {
        self.b * self.t * self.h
    }
    fn f(&self, table: &[f64]) -> Vec<f64> {
        let e: Array2<f64> = arr(&[self.vocab, self.h], table)
            .into_dimensionality()
            .unwrap();
        flat(embedding(self.ids().view(), e.view()).unwrap().primal())
    }
    fn table(&self, k: usize, dirs: &[f64]) -> Dual<f64, Ix2> {
        fixed(dual(&[self.vocab, self.h], &self.table, Some((k, dirs))))
    }
    fn run(&self, k: usize, dirs: &[f64]) -> Dual<f64, ndarray::Ix3> {
        embedding_dual(self.ids().view(), &self.table(k, dirs)).unwrap()
    }
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..4, 0usize..5, 1usize..7, 1usize..5, 1usize..4).prop_flat_map(|(b, t, vocab, h, k)| {
        (
            prop::collection::vec(0..vocab as u32, b * t),
            values(vocab * h),
            values(k * vocab * h),
        )
            .prop_map(move |(ids, table, dirs)| Case {
                b,
                t,
                vocab,
                h,
                k,
                ids,
                table,
                dirs,
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn embedding_dual_matches_finite_differences(c in case()) {
        let y = c.run(c.k, &c.dirs);
        for kk in 0..c.k {
            let fd = fd_jvp(|e| c.f(e), &c.table, direction(&c.dirs, c.n_table(), kk));
            assert_close(direction(&tangent_or_zeros(&y, c.k), c.n_out(), kk), &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    #[test]
    fn embedding_dual_is_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, bc in -2.0f64..2.0) {
        let n = c.n_table();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).copied().collect();
        let mix: Vec<f64> = v1.iter().zip(&v2).map(|(p, q)| a * p + bc * q).collect();
        let run = |d: &[f64]| tangent_or_zeros(&c.run(1, d), 1);
        let (t1, t2, tm) = (run(v1), run(&v2), run(&mix));
        let expect: Vec<f64> = t1.iter().zip(&t2).map(|(p, q)| a * p + bc * q).collect();
        assert_close(&tm, &expect, EXACT_TOL, "linearity")?;
    }

    #[test]
    fn embedding_dual_k_stacked_equals_k_single_runs(c in case()) {
        let stacked = tangent_or_zeros(&c.run(c.k, &c.dirs), c.k);
        for kk in 0..c.k {
            let single = tangent_or_zeros(&c.run(1, direction(&c.dirs, c.n_table(), kk)), 1);
            prop_assert_eq!(direction(&stacked, c.n_out(), kk), &single[..]);
        }
    }

    #[test]
    fn embedding_dual_primal_equals_frozen_lookup(c in case()) {
        let y = c.run(c.k, &c.dirs);
        prop_assert_eq!(flat(y.primal()), c.f(&c.table));
        prop_assert_eq!(y.shape(), &[c.b, c.t, c.h]);
    }

    #[test]
    fn embedding_matches_reference(c in case()) {
        let table = c.table(c.k, &c.dirs);
        let fast = c.run(c.k, &c.dirs);
        let slow = embedding_dual_reference(c.ids().view(), &table).unwrap();
        prop_assert_eq!(&fast, &slow);
        let frozen = embedding(c.ids().view(), table.primal().view()).unwrap();
        let frozen_slow = embedding_reference(c.ids().view(), table.primal().view()).unwrap();
        prop_assert_eq!(&frozen, &frozen_slow);
        prop_assert!(frozen.is_constant());
    }

    #[test]
    fn embedding_f32_matches_f64(c in case()) {
        let y64 = c.run(c.k, &c.dirs);
        let y32 = embedding_dual(c.ids().view(), &dual_to_f32(&c.table(c.k, &c.dirs))).unwrap();
        assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-6, "f32 primal")?;
        assert_close(&flat_f32(y32.tangent().unwrap()), &tangent_or_zeros(&y64, c.k), 1e-6, "f32 tangent")?;
    }
}

#[test]
fn frozen_table_gives_a_symbolic_zero() {
    let ids = ndarray::arr2(&[[0u32, 2], [1, 1]]);
    let e = ndarray::arr2(&[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]);
    let y = embedding(ids.view(), e.view()).unwrap();
    assert!(y.is_constant());
    assert_eq!(
        flat(y.primal()),
        vec![1.0, 2.0, 5.0, 6.0, 3.0, 4.0, 3.0, 4.0]
    );
    let yd = embedding_dual(ids.view(), &Dual::constant(e.clone())).unwrap();
    assert!(yd.is_constant());
    assert_eq!(yd.primal(), y.primal());
}

#[test]
fn k_one_and_k_thirty_two() {
    let ids = ndarray::arr2(&[[2u32, 0, 2]]);
    for k in [1usize, 32] {
        // Ė_k[v, j] = 100·k + 10·v + j
        let dirs: Vec<f64> = (0..k * 3 * 2)
            .map(|i| (100 * (i / 6) + 10 * ((i % 6) / 2) + i % 2) as f64)
            .collect();
        let table: Dual<f64, Ix2> = fixed(dual(&[3, 2], &[0.0; 6], Some((k, &dirs))));
        let y = embedding_dual(ids.view(), &table).unwrap();
        let t = y.tangent().unwrap();
        assert_eq!(t.shape(), &[k, 1, 3, 2]);
        for kk in 0..k {
            for (tt, id) in [2usize, 0, 2].into_iter().enumerate() {
                for j in 0..2 {
                    assert_eq!(t[[kk, 0, tt, j]], (100 * kk + 10 * id + j) as f64);
                }
            }
        }
    }
}

#[test]
fn out_of_range_id_is_a_typed_error_naming_id_and_vocab() {
    let ids = ndarray::arr2(&[[0u32, 1], [7, 2]]);
    let e = Array2::<f64>::zeros((5, 3));
    for r in [
        embedding(ids.view(), e.view()),
        embedding_dual(ids.view(), &Dual::constant(e.clone())),
        embedding_reference(ids.view(), e.view()),
    ] {
        match r {
            Err(Error::InvalidArgument { msg, .. }) => {
                assert!(msg.contains("token id 7"), "{msg}");
                assert!(msg.contains("vocabulary of 5"), "{msg}");
            }
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }
    // id == vocab is already out of range
    let ids = ndarray::arr2(&[[5u32]]);
    assert!(matches!(
        embedding(ids.view(), e.view()),
        Err(Error::InvalidArgument {
            op: "embedding",
            ..
        })
    ));
}
