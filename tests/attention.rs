//! Multi-head attention: finite differences with all three operands dual, linearity, K stacking,
//! primal equality, symbolic zeros (every subset of dual operands), the reference twin, GQA
//! against repeated kv heads, padding and causal masks against attention over the allowed keys
//! only, the KV-cache case S > T, fully masked rows, K = 1 and 32, f32, typed errors; and for the
//! streaming kernel: shapes spanning several query and key blocks (T and S not multiples of the
//! block size, T = 1, whole padded key blocks), a long sequence (T = 300), and bitwise equality
//! across thread counts.

mod common;

use common::*;
use ndarray::{Array2, Array3, Ix3, s};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use spry::kernels::{AttentionShape, attention, attention_reference, attention_with_threads};
use spry::{Dual, Error};

/// Random case: q `[b, t, h·d]`, k and v `[b, s, hkv·d]`, an optional key mask `[b, s]`, and K
/// directions over the concatenated (q, k, v) parameters.
#[derive(Debug, Clone)]
struct Case {
    b: usize,
    t: usize,
    s: usize,
    shape: AttentionShape,
    mask: Option<Vec<bool>>,
    k: usize,
    theta: Vec<f64>,
    dirs: Vec<f64>,
}

impl Case {
    fn d(&self) -> usize {
        self.shape.head_dim
    }
    fn q_shape(&self) -> [usize; 3] {
        [self.b, self.t, self.shape.n_heads * self.d()]
    }
    fn kv_shape(&self) -> [usize; 3] {
        [self.b, self.s, self.shape.n_kv_heads * self.d()]
    }
    fn sizes(&self) -> (usize, usize) {
        (
            self.q_shape().iter().product(),
            self.kv_shape().iter().product(),
        )
    }
    fn n_params(&self) -> usize {
        let (nq, nkv) = self.sizes();
        nq + 2 * nkv
    }
    fn n_out(&self) -> usize {
        self.sizes().0
    }
    fn split<'a>(&self, v: &'a [f64]) -> [&'a [f64]; 3] {
        let (nq, nkv) = self.sizes();
        [&v[..nq], &v[nq..nq + nkv], &v[nq + nkv..]]
    }
    fn mask(&self) -> Option<Array2<bool>> {
        self.mask
            .as_ref()
            .map(|m| Array2::from_shape_vec((self.b, self.s), m.clone()).unwrap())
    }
    /// Dual (q, k, v) at `theta` with K = `k` directions `dirs`; operand `i` is a symbolic zero
    /// unless `dual[i]`.
    fn duals(
        &self,
        theta: &[f64],
        k: usize,
        dirs: &[f64],
        dual_ops: [bool; 3],
    ) -> [Dual<f64, Ix3>; 3] {
        let n = self.n_params();
        let parts = self.split(theta);
        let shapes = [self.q_shape(), self.kv_shape(), self.kv_shape()];
        std::array::from_fn(|i| {
            let t: Vec<f64> = (0..k)
                .flat_map(|kk| self.split(&dirs[kk * n..(kk + 1) * n])[i].to_vec())
                .collect();
            let tangent = dual_ops[i].then_some((k, &t[..]));
            fixed(dual(&shapes[i], parts[i], tangent))
        })
    }
    fn run(&self, k: usize, dirs: &[f64], dual_ops: [bool; 3]) -> Dual<f64, Ix3> {
        let [q, kk, v] = self.duals(&self.theta, k, dirs, dual_ops);
        let mask = self.mask();
        attention(&q, &kk, &v, mask.as_ref().map(|m| m.view()), &self.shape).unwrap()
    }
    fn f(&self, theta: &[f64]) -> Vec<f64> {
        let [q, kk, v] = self.duals(theta, 0, &[], [false; 3]);
        let mask = self.mask();
        flat(
            attention(&q, &kk, &v, mask.as_ref().map(|m| m.view()), &self.shape)
                .unwrap()
                .primal(),
        )
    }
}

/// (n_heads, n_kv_heads): plain MHA and grouped-query layouts.
const HEADS: [(usize, usize); 6] = [(1, 1), (2, 2), (2, 1), (4, 2), (3, 1), (4, 4)];

fn case_with(masked: bool, causal: Option<bool>) -> impl Strategy<Value = Case> {
    (
        1usize..3,
        1usize..5,
        1usize..6,
        0..HEADS.len(),
        1usize..4,
        any::<bool>(),
        1usize..4,
    )
        .prop_flat_map(move |(b, t, s, hi, d, cz, k)| {
            let (h, hkv) = HEADS[hi];
            let shape = AttentionShape {
                n_heads: h,
                n_kv_heads: hkv,
                head_dim: d,
                causal: causal.unwrap_or(cz),
            };
            let n = b * t * h * d + 2 * b * s * hkv * d;
            let mask = if masked {
                prop::option::of(prop::collection::vec(prop::bool::weighted(0.7), b * s)).boxed()
            } else {
                Just(None).boxed()
            };
            (values(n), values(k * n), mask).prop_map(move |(theta, dirs, mask)| Case {
                b,
                t,
                s,
                shape,
                mask,
                k,
                theta,
                dirs,
            })
        })
}

fn case() -> impl Strategy<Value = Case> {
    case_with(true, None)
}

/// Which of q, k, v are dual: every subset.
fn subset() -> impl Strategy<Value = [bool; 3]> {
    (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(|(a, b, c)| [a, b, c])
}

/// A key mask `[b, s]` of one of four kinds: none; random (80% allowed); right padding with a
/// random length per batch element (0 included); whole 128-key blocks (the kernel's key block)
/// padded in turn.
fn mask_of_kind(kind: u8, b: usize, s: usize, seed: u64) -> Option<Vec<bool>> {
    let r = seeded(b * s + b, seed);
    match kind {
        0 => None,
        1 => Some(r[..b * s].iter().map(|&x| x < 0.8).collect()),
        2 => Some(
            (0..b * s)
                .map(|i| {
                    let len = ((r[b * s + i / s] + 2.0) / 4.0 * (s + 1) as f64) as usize;
                    i % s < len
                })
                .collect(),
        ),
        _ => Some(
            (0..b * s)
                .map(|i| (i % s / 128 + i / s).is_multiple_of(2))
                .collect(),
        ),
    }
}

/// Random case spanning several query and key blocks (of 64 queries and 128 keys): T and S up to
/// 300 and 400, not multiples of the block sizes, T = 1 often; any mask kind, causal or not,
/// K = 1, 2 or 32 (with K = 32, T ≤ 40 and S ≤ 260 to keep the reference affordable).
fn long_case() -> impl Strategy<Value = Case> {
    (
        1usize..3,
        prop_oneof![Just(1usize), 1usize..300],
        1usize..400,
        0..HEADS.len(),
        1usize..9,
        any::<bool>(),
        prop_oneof![Just(1usize), Just(2), Just(32)],
        0u8..4,
        any::<u64>(),
    )
        .prop_map(|(b, t, s, hi, d, causal, k, mask_kind, seed)| {
            let (t, s) = if k == 32 {
                (t.min(40), s.min(260))
            } else {
                (t, s)
            };
            let (h, hkv) = HEADS[hi];
            let n = b * t * h * d + 2 * b * s * hkv * d;
            Case {
                b,
                t,
                s,
                shape: AttentionShape {
                    n_heads: h,
                    n_kv_heads: hkv,
                    head_dim: d,
                    causal,
                },
                mask: mask_of_kind(mask_kind, b, s, seed ^ 1),
                k,
                theta: seeded(n, seed),
                dirs: seeded(k * n, seed ^ 2),
            }
        })
}

/// Fast against reference for one case and one subset of dual operands, within `tol`.
fn check_against_reference(c: &Case, ops: [bool; 3], tol: f64) -> Result<(), TestCaseError> {
    let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, ops);
    let mask = c.mask();
    let mask = mask.as_ref().map(|m| m.view());
    let fast = attention(&q, &kk, &v, mask, &c.shape).unwrap();
    let slow = attention_reference(&q, &kk, &v, mask, &c.shape).unwrap();
    assert_close(&flat(fast.primal()), &flat(slow.primal()), tol, "primal")?;
    prop_assert_eq!(fast.is_constant(), ops == [false; 3]);
    assert_close(
        &tangent_or_zeros(&fast, c.k),
        &tangent_or_zeros(&slow, c.k),
        tol,
        "tangent",
    )
}

/// Attention of one batch element's query rows `rows` against the keys `keys` only (no mask,
/// not causal), as `[rows.len(), H·D]` flat rows with `k` tangent directions.
fn sub_attention(
    c: &Case,
    bi: usize,
    rows: std::ops::Range<usize>,
    keys: &[usize],
) -> (Vec<f64>, Vec<f64>) {
    let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, [true; 3]);
    let pick_q = |a: &ndarray::Array3<f64>| a.slice(s![bi..bi + 1, rows.clone(), ..]).to_owned();
    let pick_kv = |a: &ndarray::Array3<f64>| {
        let a = a.slice(s![bi..bi + 1, .., ..]);
        a.select(ndarray::Axis(1), keys)
    };
    let tangent = |d: &Dual<f64, Ix3>, f: &dyn Fn(&Array3<f64>) -> Array3<f64>| {
        let t = d.tangent().unwrap();
        let dirs: Vec<Array3<f64>> = t.outer_iter().map(|x| f(&x.to_owned())).collect();
        let views: Vec<_> = dirs.iter().map(|a| a.view()).collect();
        ndarray::stack(ndarray::Axis(0), &views).unwrap()
    };
    let q1 = Dual::new(pick_q(q.primal()), tangent(&q, &pick_q)).unwrap();
    let k1 = Dual::new(pick_kv(kk.primal()), tangent(&kk, &pick_kv)).unwrap();
    let v1 = Dual::new(pick_kv(v.primal()), tangent(&v, &pick_kv)).unwrap();
    let shape = AttentionShape {
        causal: false,
        ..c.shape
    };
    let y = attention(&q1, &k1, &v1, None, &shape).unwrap();
    (flat(y.primal()), tangent_or_zeros(&y, c.k))
}

/// The rows `rows` of batch element `bi` of a full output (primal, tangent of K directions).
fn rows_of(y: &Dual<f64, Ix3>, bi: usize, rows: std::ops::Range<usize>) -> (Vec<f64>, Vec<f64>) {
    let p = y.primal().slice(s![bi, rows.clone(), ..]);
    let t = y.tangent().unwrap().slice(s![.., bi, rows, ..]);
    (p.iter().copied().collect(), t.iter().copied().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn matches_finite_differences_all_three_dual(c in case()) {
        let y = c.run(c.k, &c.dirs, [true; 3]);
        let t = tangent_or_zeros(&y, c.k);
        let n = c.n_params();
        for kk in 0..c.k {
            let fd = fd_jvp(|x| c.f(x), &c.theta, direction(&c.dirs, n, kk));
            assert_close(direction(&t, c.n_out(), kk), &fd, FD_TOL, "jvp vs fd")?;
        }
    }

    #[test]
    fn is_linear_in_the_tangent(c in case(), a in -2.0f64..2.0, b in -2.0f64..2.0) {
        let n = c.n_params();
        let v1 = &c.dirs[..n];
        let v2: Vec<f64> = c.dirs.iter().rev().take(n).map(|v| 0.5 * v - 0.2).collect();
        let mix = lincomb(a, v1, b, &v2);
        let tan = |d: &[f64]| tangent_or_zeros(&c.run(1, d, [true; 3]), 1);
        let expect = lincomb(a, &tan(v1), b, &tan(&v2));
        assert_close(&tan(&mix), &expect, EXACT_TOL, "linearity")?;
    }

    #[test]
    fn k_stacked_equals_k_single_runs(c in case(), ops in subset()) {
        let n = c.n_params();
        let stacked = tangent_or_zeros(&c.run(c.k, &c.dirs, ops), c.k);
        for kk in 0..c.k {
            let single = tangent_or_zeros(&c.run(1, direction(&c.dirs, n, kk), ops), 1);
            assert_close(direction(&stacked, c.n_out(), kk), &single, EXACT_TOL, "stacked vs single")?;
        }
    }

    #[test]
    fn primal_equals_plain_forward_bitwise(c in case(), ops in subset()) {
        let y = c.run(c.k, &c.dirs, ops);
        prop_assert_eq!(flat(y.primal()), c.f(&c.theta));
    }

    #[test]
    fn matches_reference_for_every_subset_of_dual_operands(c in case(), ops in subset()) {
        let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, ops);
        let mask = c.mask();
        let mask = mask.as_ref().map(|m| m.view());
        let fast = attention(&q, &kk, &v, mask, &c.shape).unwrap();
        let slow = attention_reference(&q, &kk, &v, mask, &c.shape).unwrap();
        assert_close(&flat(fast.primal()), &flat(slow.primal()), EXACT_TOL, "primal")?;
        prop_assert_eq!(fast.is_constant(), ops == [false; 3]);
        prop_assert_eq!(slow.is_constant(), ops == [false; 3]);
        assert_close(&tangent_or_zeros(&fast, c.k), &tangent_or_zeros(&slow, c.k), EXACT_TOL, "tangent")?;
        // Skipping a symbolic-zero operand equals feeding it an explicit zero tangent.
        if ops != [false; 3] {
            let n = c.n_params();
            let zeroed: Vec<f64> = (0..c.k * n)
                .map(|i| {
                    let (nq, nkv) = c.sizes();
                    let j = i % n;
                    let op = if j < nq { 0 } else if j < nq + nkv { 1 } else { 2 };
                    if ops[op] { c.dirs[i] } else { 0.0 }
                })
                .collect();
            let full = tangent_or_zeros(&c.run(c.k, &zeroed, [true; 3]), c.k);
            assert_close(&tangent_or_zeros(&fast, c.k), &full, EXACT_TOL, "skip vs explicit zero")?;
        }
    }

    #[test]
    fn gqa_equals_mha_with_repeated_kv_heads(c in case()) {
        let (h, hkv, d) = (c.shape.n_heads, c.shape.n_kv_heads, c.d());
        let group = h / hkv;
        let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, [true; 3]);
        // kv head j of the repeated layout is original kv head j / group (HF repeat_kv)
        let cols: Vec<usize> = (0..h * d).map(|j| (j / d / group) * d + j % d).collect();
        let repeat = |x: &Dual<f64, Ix3>| {
            let p = x.primal().select(ndarray::Axis(2), &cols);
            let t = x.tangent().unwrap().select(ndarray::Axis(3), &cols);
            Dual::new(p, t).unwrap()
        };
        let mha = AttentionShape { n_kv_heads: h, ..c.shape };
        let mask = c.mask();
        let mask = mask.as_ref().map(|m| m.view());
        let gqa = attention(&q, &kk, &v, mask, &c.shape).unwrap();
        let rep = attention(&q, &repeat(&kk), &repeat(&v), mask, &mha).unwrap();
        assert_close(&flat(gqa.primal()), &flat(rep.primal()), EXACT_TOL, "primal")?;
        assert_close(&tangent_or_zeros(&gqa, c.k), &tangent_or_zeros(&rep, c.k), EXACT_TOL, "tangent")?;
    }

    #[test]
    fn padding_mask_equals_dropping_the_masked_keys(c in case_with(true, Some(false))) {
        let y = c.run(c.k, &c.dirs, [true; 3]);
        for bi in 0..c.b {
            let keys: Vec<usize> = (0..c.s)
                .filter(|&j| c.mask.as_ref().is_none_or(|m| m[bi * c.s + j]))
                .collect();
            let (p, t) = rows_of(&y, bi, 0..c.t);
            if keys.is_empty() {
                prop_assert!(p.iter().chain(&t).all(|&v| v == 0.0), "fully masked batch element");
            } else {
                let (ep, et) = sub_attention(&c, bi, 0..c.t, &keys);
                assert_close(&p, &ep, EXACT_TOL, "masked primal")?;
                assert_close(&t, &et, EXACT_TOL, "masked tangent")?;
            }
        }
    }

    #[test]
    fn causal_equals_attention_over_the_allowed_prefix(c in case_with(false, Some(true))) {
        // query t sees keys 0..=t + (S − T): S > T (KV cache), S = T and S < T all covered
        let y = c.run(c.k, &c.dirs, [true; 3]);
        for bi in 0..c.b {
            for ti in 0..c.t {
                let hi = (ti + 1 + c.s).saturating_sub(c.t).min(c.s);
                let keys: Vec<usize> = (0..hi).collect();
                let (p, t) = rows_of(&y, bi, ti..ti + 1);
                if keys.is_empty() {
                    prop_assert!(p.iter().chain(&t).all(|&v| v == 0.0), "row {} has no key", ti);
                } else {
                    let (ep, et) = sub_attention(&c, bi, ti..ti + 1, &keys);
                    assert_close(&p, &ep, EXACT_TOL, "causal primal")?;
                    assert_close(&t, &et, EXACT_TOL, "causal tangent")?;
                }
            }
        }
    }

    #[test]
    fn causal_chunk_equals_the_tail_of_full_self_attention(c in case_with(false, Some(true)), extra in 0usize..4) {
        // Generation with a KV cache: S = T + extra keys; the T new queries are the last T rows
        // of causal self-attention over all S tokens.
        let s_n = c.t + extra;
        let (h, hkv, d, b) = (c.shape.n_heads, c.shape.n_kv_heads, c.d(), c.b);
        let n = |w: usize| b * s_n * w * d;
        let vals = |off: usize, len: usize| -> Vec<f64> {
            (0..len).map(|i| c.theta[(off + i) % c.theta.len()] * (1.0 + 0.01 * i as f64)).collect()
        };
        let tans = |off: usize, len: usize| -> Vec<f64> {
            (0..c.k * len).map(|i| c.dirs[(off + i) % c.dirs.len()] - 0.001 * i as f64).collect()
        };
        let q_full: Dual<f64, Ix3> = fixed(dual(&[b, s_n, h * d], &vals(0, n(h)), Some((c.k, &tans(0, n(h))))));
        let k_full: Dual<f64, Ix3> = fixed(dual(&[b, s_n, hkv * d], &vals(3, n(hkv)), Some((c.k, &tans(5, n(hkv))))));
        let v_full: Dual<f64, Ix3> = fixed(dual(&[b, s_n, hkv * d], &vals(7, n(hkv)), Some((c.k, &tans(11, n(hkv))))));
        let full = attention(&q_full, &k_full, &v_full, None, &c.shape).unwrap();
        let q_tail = Dual::new(
            q_full.primal().slice(s![.., extra.., ..]).to_owned(),
            q_full.tangent().unwrap().slice(s![.., .., extra.., ..]).to_owned(),
        ).unwrap();
        let chunk = attention(&q_tail, &k_full, &v_full, None, &c.shape).unwrap();
        let want_p: Vec<f64> = full.primal().slice(s![.., extra.., ..]).iter().copied().collect();
        let want_t: Vec<f64> = full.tangent().unwrap().slice(s![.., .., extra.., ..]).iter().copied().collect();
        assert_close(&flat(chunk.primal()), &want_p, EXACT_TOL, "chunk primal")?;
        assert_close(&tangent_or_zeros(&chunk, c.k), &want_t, EXACT_TOL, "chunk tangent")?;
    }

    #[test]
    fn f32_agrees_with_f64(c in case()) {
        let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, [true; 3]);
        let (q32, k32, v32) = (dual_to_f32(&q), dual_to_f32(&kk), dual_to_f32(&v));
        let back = |x: &Dual<f32, Ix3>| -> Dual<f64, Ix3> {
            Dual::new(x.primal().mapv(f64::from), x.tangent().unwrap().mapv(f64::from)).unwrap()
        };
        let mask = c.mask();
        let mask = mask.as_ref().map(|m| m.view());
        let y32 = attention(&q32, &k32, &v32, mask, &c.shape).unwrap();
        let y64 = attention(&back(&q32), &back(&k32), &back(&v32), mask, &c.shape).unwrap();
        assert_close(&flat_f32(y32.primal()), &flat(y64.primal()), 1e-5, "f32 primal")?;
        assert_close(&flat_f32(y32.tangent().unwrap()), &flat(y64.tangent().unwrap()), 1e-5, "f32 tangent")?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    #[test]
    fn multi_block_matches_reference_for_every_subset_of_dual_operands(c in long_case(), ops in subset()) {
        check_against_reference(&c, ops, EXACT_TOL)?;
    }

    #[test]
    fn multi_block_matches_finite_differences(c in long_case()) {
        let y = c.run(c.k, &c.dirs, [true; 3]);
        let t = tangent_or_zeros(&y, c.k);
        let n = c.n_params();
        let kk = c.k - 1;
        let fd = fd_jvp(|x| c.f(x), &c.theta, direction(&c.dirs, n, kk));
        assert_close(direction(&t, c.n_out(), kk), &fd, FD_TOL, "jvp vs fd")?;
    }

    #[test]
    fn multi_block_k_stacked_equals_k_single_runs(c in long_case(), ops in subset()) {
        let n = c.n_params();
        let stacked = tangent_or_zeros(&c.run(c.k, &c.dirs, ops), c.k);
        for kk in [0, c.k / 2, c.k - 1] {
            let single = tangent_or_zeros(&c.run(1, direction(&c.dirs, n, kk), ops), 1);
            assert_close(direction(&stacked, c.n_out(), kk), &single, EXACT_TOL, "stacked vs single")?;
        }
    }

    #[test]
    fn multi_block_primal_equals_plain_forward_bitwise(c in long_case(), ops in subset()) {
        let y = c.run(c.k, &c.dirs, ops);
        prop_assert_eq!(flat(y.primal()), c.f(&c.theta));
    }
}

/// A deterministic case for the fixed tests.
#[allow(clippy::too_many_arguments)]
fn fixed_case(
    b: usize,
    t: usize,
    s: usize,
    h: usize,
    hkv: usize,
    d: usize,
    causal: bool,
    k: usize,
) -> Case {
    let n = b * t * h * d + 2 * b * s * hkv * d;
    Case {
        b,
        t,
        s,
        shape: AttentionShape {
            n_heads: h,
            n_kv_heads: hkv,
            head_dim: d,
            causal,
        },
        mask: None,
        k,
        theta: (0..n)
            .map(|i| ((i * 37) % 23) as f64 * 0.15 - 1.6)
            .collect(),
        dirs: (0..k * n)
            .map(|i| ((i * 11) % 19) as f64 * 0.1 - 0.9)
            .collect(),
    }
}

#[test]
fn fully_masked_rows_give_zero_rows_and_finite_values() {
    // batch 0: all keys padded; batch 1: keys 0 and 2 allowed; causal with S < T masks the first
    // query rows of batch 1 entirely. Large q magnitudes make the scores ~1e3: still finite.
    let mut c = fixed_case(2, 4, 3, 4, 2, 3, true, 3);
    c.mask = Some(vec![false, false, false, true, false, true]);
    let (nq, _) = c.sizes();
    c.theta[..nq].iter_mut().for_each(|v| *v *= 500.0);
    for ops in [
        [true; 3],
        [true, false, true],
        [false, false, true],
        [true, false, false],
    ] {
        let y = c.run(c.k, &c.dirs, ops);
        let t = y.tangent().unwrap();
        assert!(y.primal().iter().chain(t).all(|v| v.is_finite()), "{ops:?}");
        // batch 0, every row
        assert!(y.primal().slice(s![0, .., ..]).iter().all(|&v| v == 0.0));
        assert!(t.slice(s![.., 0, .., ..]).iter().all(|&v| v == 0.0));
        // batch 1: query t sees keys ≤ t − 1, so row 0 sees nothing, rows 1.. see key 0
        assert!(y.primal().slice(s![1, 0, ..]).iter().all(|&v| v == 0.0));
        assert!(t.slice(s![.., 1, 0, ..]).iter().all(|&v| v == 0.0));
        assert!(y.primal().slice(s![1, 1, ..]).iter().any(|&v| v != 0.0));
        let mask = c.mask();
        let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, ops);
        let slow =
            attention_reference(&q, &kk, &v, mask.as_ref().map(|m| m.view()), &c.shape).unwrap();
        assert_close(&flat(y.primal()), &flat(slow.primal()), 1e-12, "primal").unwrap();
        assert_close(&flat(t), &flat(slow.tangent().unwrap()), 1e-12, "tangent").unwrap();
    }
    // f32, and no keys at all (S = 0)
    let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, [true; 3]);
    let mask = c.mask();
    let y = attention(
        &dual_to_f32(&q),
        &dual_to_f32(&kk),
        &dual_to_f32(&v),
        mask.as_ref().map(|m| m.view()),
        &c.shape,
    )
    .unwrap();
    assert!(
        y.primal()
            .iter()
            .chain(y.tangent().unwrap())
            .all(|v| v.is_finite())
    );
    let empty = fixed_case(2, 3, 0, 2, 1, 2, false, 2);
    let y = empty.run(2, &empty.dirs, [true; 3]);
    assert_eq!(y.shape(), &[2, 3, 4]);
    assert!(
        y.primal()
            .iter()
            .chain(y.tangent().unwrap())
            .all(|&v| v == 0.0)
    );
}

#[test]
fn zero_tangent_in_gives_zero_tangent_out() {
    let c = fixed_case(2, 3, 4, 2, 1, 2, true, 1);
    let y = c.run(1, &c.dirs, [false; 3]);
    assert!(y.is_constant());
    assert_eq!(flat(y.primal()), c.f(&c.theta));
}

#[test]
fn k_one_and_k_thirty_two() {
    for k in [1usize, 32] {
        let c = fixed_case(2, 3, 5, 4, 2, 3, true, k);
        let [q, kk, v] = c.duals(&c.theta, k, &c.dirs, [true; 3]);
        let mask = Array2::from_shape_fn((2, 5), |(b, s)| (b + s) % 3 != 0);
        let fast = attention(&q, &kk, &v, Some(mask.view()), &c.shape).unwrap();
        let slow = attention_reference(&q, &kk, &v, Some(mask.view()), &c.shape).unwrap();
        assert_eq!(fast.tangent().unwrap().shape(), &[k, 2, 3, 12]);
        assert_close(
            &flat(fast.primal()),
            &flat(slow.primal()),
            EXACT_TOL,
            "primal",
        )
        .unwrap();
        assert_close(
            &tangent_or_zeros(&fast, k),
            &tangent_or_zeros(&slow, k),
            EXACT_TOL,
            "tangent",
        )
        .unwrap();
        // the last direction against finite differences
        let n = c.n_params();
        let f = |x: &[f64]| {
            let [q, kk, v] = c.duals(x, 0, &[], [false; 3]);
            flat(
                attention(&q, &kk, &v, Some(mask.view()), &c.shape)
                    .unwrap()
                    .primal(),
            )
        };
        let fd = fd_jvp(f, &c.theta, direction(&c.dirs, n, k - 1));
        let t = tangent_or_zeros(&fast, k);
        assert_close(direction(&t, c.n_out(), k - 1), &fd, FD_TOL, "fd").unwrap();
    }
}

#[test]
fn shape_errors_are_typed() {
    let c = fixed_case(2, 3, 4, 4, 2, 2, false, 2);
    let [q, kk, v] = c.duals(&c.theta, 2, &c.dirs, [true; 3]);
    let sh = c.shape;
    let call = |q: &Dual<f64, Ix3>,
                k: &Dual<f64, Ix3>,
                v: &Dual<f64, Ix3>,
                m: Option<&Array2<bool>>,
                sh: &AttentionShape| { attention(q, k, v, m.map(|m| m.view()), sh) };
    assert!(call(&q, &kk, &v, None, &sh).is_ok());
    // heads · head_dim ≠ last dim (of q, then of k)
    let bad = AttentionShape { head_dim: 3, ..sh };
    assert!(matches!(
        call(&q, &kk, &v, None, &bad),
        Err(Error::ShapeMismatch {
            op: "attention",
            ..
        })
    ));
    let bad = AttentionShape { n_heads: 2, ..sh };
    assert!(matches!(
        call(&q, &kk, &v, None, &bad),
        Err(Error::ShapeMismatch { .. })
    ));
    let bad = AttentionShape {
        n_kv_heads: 4,
        ..sh
    };
    assert!(matches!(
        call(&q, &kk, &v, None, &bad),
        Err(Error::ShapeMismatch { .. })
    ));
    // n_heads % n_kv_heads ≠ 0, zero heads, zero head_dim
    let bad = AttentionShape {
        n_heads: 3,
        n_kv_heads: 2,
        head_dim: 2,
        causal: false,
    };
    let q3: Dual<f64, Ix3> = Dual::constant(Array3::zeros((2, 3, 6)));
    assert!(matches!(
        call(&q3, &kk, &v, None, &bad),
        Err(Error::InvalidArgument {
            op: "attention",
            ..
        })
    ));
    for bad in [
        AttentionShape {
            n_kv_heads: 0,
            ..sh
        },
        AttentionShape { n_heads: 0, ..sh },
        AttentionShape { head_dim: 0, ..sh },
    ] {
        assert!(matches!(
            call(&q, &kk, &v, None, &bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
    // batch mismatch
    let k1: Dual<f64, Ix3> = Dual::constant(Array3::zeros((1, 4, 4)));
    assert!(matches!(
        call(&q, &k1, &k1, None, &sh),
        Err(Error::ShapeMismatch { .. })
    ));
    // v shape ≠ k shape
    let v5: Dual<f64, Ix3> = Dual::constant(Array3::zeros((2, 5, 4)));
    assert!(matches!(
        call(&q, &kk, &v5, None, &sh),
        Err(Error::ShapeMismatch { .. })
    ));
    // mask shape
    for m in [
        Array2::from_elem((2, 3), true),
        Array2::from_elem((1, 4), true),
        Array2::from_elem((4, 2), true),
    ] {
        assert!(matches!(
            call(&q, &kk, &v, Some(&m), &sh),
            Err(Error::ShapeMismatch { .. })
        ));
        assert!(matches!(
            attention_reference(&q, &kk, &v, Some(m.view()), &sh),
            Err(Error::ShapeMismatch {
                op: "attention_reference",
                ..
            })
        ));
    }
    // tangent count mismatch
    let c3 = fixed_case(2, 3, 4, 4, 2, 2, false, 3);
    let [_, k3, _] = c3.duals(&c3.theta, 3, &c3.dirs, [true; 3]);
    assert!(matches!(
        call(&q, &k3, &v, None, &sh),
        Err(Error::TangentCountMismatch {
            op: "attention",
            lhs: 2,
            rhs: 3
        })
    ));
}

/// A long causal GQA case (T = 300 new queries against S = 320 keys, i.e. a 20-key cache) with
/// right padding in batch element 1 and a fully padded 128-key block in batch element 0.
fn long_fixed_case(k: usize) -> Case {
    let (b, t, s) = (2, 300, 320);
    let mut c = fixed_case(b, t, s, 4, 2, 8, true, k);
    let n = c.n_params();
    c.theta = seeded(n, 7);
    c.dirs = seeded(k * n, 8);
    c.mask = Some(
        (0..b * s)
            .map(|i| {
                let (bi, j) = (i / s, i % s);
                if bi == 0 {
                    !(128..256).contains(&j)
                } else {
                    j < 250
                }
            })
            .collect(),
    );
    c
}

#[test]
fn long_sequence_matches_reference() {
    let c = long_fixed_case(3);
    for ops in [
        [true; 3],
        [true, false, true],
        [false, true, false],
        [false, false, true],
    ] {
        check_against_reference(&c, ops, EXACT_TOL).unwrap();
    }
    // padded query rows of batch 1 still see keys (the mask is on keys); the first rows of
    // batch 0 see keys 0..=20, so every row has an allowed key: nothing is zero by accident
    let y = c.run(c.k, &c.dirs, [true; 3]);
    assert!(
        y.primal()
            .outer_iter()
            .flat_map(|b| b
                .outer_iter()
                .map(|r| r.iter().any(|&v| v != 0.0))
                .collect::<Vec<_>>())
            .all(|nonzero| nonzero)
    );
}

#[test]
fn long_sequence_f32_is_within_f32_rounding_of_f64() {
    // The f64 kernel on the f32-rounded inputs is the truth. An f32 row is a softmax over ≤ 320
    // keys of scores that are dot products of length D = 8: each output is a convex combination,
    // so its error is a few units of f32 rounding times the accumulation lengths (D for the
    // scores, the pairwise/blocked sums over S), relative to the output's scale.
    let c = long_fixed_case(2);
    let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, [true; 3]);
    let (q32, k32, v32) = (dual_to_f32(&q), dual_to_f32(&kk), dual_to_f32(&v));
    let back = |x: &Dual<f32, Ix3>| -> Dual<f64, Ix3> {
        Dual::new(
            x.primal().mapv(f64::from),
            x.tangent().unwrap().mapv(f64::from),
        )
        .unwrap()
    };
    let mask = c.mask();
    let mask = mask.as_ref().map(|m| m.view());
    let y32 = attention(&q32, &k32, &v32, mask, &c.shape).unwrap();
    let y64 = attention_reference(&back(&q32), &back(&k32), &back(&v32), mask, &c.shape).unwrap();
    let u = f64::from(f32::EPSILON) / 2.0;
    let tol = 4.0 * u * (c.d() as f64 + (c.s as f64).log2() + c.s.div_ceil(128) as f64);
    assert_close(
        &flat_f32(y32.primal()),
        &flat(y64.primal()),
        tol,
        "f32 primal",
    )
    .unwrap();
    assert_close(
        &flat_f32(y32.tangent().unwrap()),
        &flat(y64.tangent().unwrap()),
        tol,
        "f32 tangent",
    )
    .unwrap();
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    // large enough to be split across threads; every subset of dual operands
    let c = long_fixed_case(4);
    let mask = c.mask();
    let mask = mask.as_ref().map(|m| m.view());
    for ops in [[true; 3], [true, false, true], [false, false, false]] {
        let [q, kk, v] = c.duals(&c.theta, c.k, &c.dirs, ops);
        let one = attention_with_threads(&q, &kk, &v, mask, &c.shape, 1).unwrap();
        for threads in [2, 3, 8] {
            let many = attention_with_threads(&q, &kk, &v, mask, &c.shape, threads).unwrap();
            assert_eq!(one, many, "{threads} threads, {ops:?}");
        }
        // and run to run
        assert_eq!(one, attention(&q, &kk, &v, mask, &c.shape).unwrap());
    }
}
