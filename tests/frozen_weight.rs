//! Packed frozen weights (F16, BF16, Q8_0, Q4_0, Q4_1) against their widened dense twins, on
//! random data and odd shapes (output counts that are not a multiple of the tile):
//! - `frozen_linear` equals `linear` on the widened matrix **bit for bit** (tiles split the output
//!   columns, never the inner dimension), primal and K tangents, in f32 and f64;
//! - `embedding_frozen` equals `embedding` on the widened table bit for bit;
//! - `lm_head_cross_entropy` equals `cross_entropy` of the full logits (f64: 1e-12 relative;
//!   f32: 1e-5), for every chunk size, with ignored rows and a vocabulary that is not a multiple of
//!   the tile;
//! - a `FrozenLinear` with a packed weight and a LoRA adapter (with dropout) equals the dense
//!   layer up to rounding, and merging its adapter widens it to the dense merged weight;
//! - `lora_frozen_linear` over a packed weight equals `lora_linear` over the widened one bit for
//!   bit (one LoRA path for both storages).

#[path = "common/packed_bytes.rs"]
mod packed_bytes;

use ndarray::{Array, Array1, Array2, Array3, ArrayD, Ix2, IxDyn};
use packed_bytes::random_packed_bytes;
use spry::io::{PackedFormat, PackedMatrix};
use spry::kernels::panel_gemm::PanelWeight;
use spry::kernels::{
    FrozenWeight, PanelCache, TILE_ROWS, VOCAB_TILE, cross_entropy, embedding, embedding_frozen,
    frozen_linear, frozen_linear_panels, frozen_linear_reference, linear, lm_head_cross_entropy,
    lora_frozen_linear, lora_frozen_linear_panels, lora_linear,
};
use spry::modules::{Directions, DropoutKey, FrozenLinear, LoraConfig, Pass, Trainable};
use spry::rng::{Domain, KeyedRng};
use spry::{Dual, Error, Float};

const FORMATS: [PackedFormat; 5] = [
    PackedFormat::F16,
    PackedFormat::BF16,
    PackedFormat::Q8_0,
    PackedFormat::Q4_0,
    PackedFormat::Q4_1,
];

fn rng(seed: u64) -> KeyedRng {
    KeyedRng::new(seed, Domain::Data, &[0xF0])
}

/// A random `[rows, cols]` matrix in `format` (`packed_bytes::random_packed_bytes`).
fn random_packed(format: PackedFormat, rows: usize, cols: usize, seed: u64) -> PackedMatrix {
    let bytes = random_packed_bytes(format, rows, cols, &mut rng(seed));
    PackedMatrix::new(format, rows, cols, bytes).unwrap()
}

fn random_array<F: Float>(shape: &[usize], seed: u64) -> ArrayD<F> {
    let mut r = rng(seed);
    let mut a = ArrayD::<F>::zeros(IxDyn(shape));
    r.fill_normal(a.as_slice_mut().unwrap());
    a
}

/// A dual f32 matrix of `shape` with K tangents (a LoRA factor).
fn random_dual2(k: usize, shape: [usize; 2], seed: u64) -> Dual<f32, Ix2> {
    let p = random_array::<f32>(&shape, seed)
        .into_dimensionality()
        .unwrap();
    let t = random_array::<f32>(&[k, shape[0], shape[1]], seed + 1)
        .into_dimensionality()
        .unwrap();
    Dual::with_tangent(p, Some(t)).unwrap()
}

/// A dual `[2, 5, cols]` input with K tangents (or none).
fn random_x<F: Float>(cols: usize, k: Option<usize>, seed: u64) -> Dual<F, ndarray::Ix3> {
    let p = random_array::<F>(&[2, 5, cols], seed)
        .into_dimensionality()
        .unwrap();
    let t = k.map(|k| {
        random_array::<F>(&[k, 2, 5, cols], seed + 1)
            .into_dimensionality()
            .unwrap()
    });
    Dual::with_tangent(p, t).unwrap()
}

/// Bit-for-bit equality under the default `matrixmultiply` backend, which sums every element of
/// a product in the same order however the output is tiled and adds a bias after the sum. A BLAS
/// backend (feature `openblas`) may accumulate a bias between its blocks along the inner
/// dimension, so there the two paths must agree to within a few f32 roundings of the value.
fn assert_bitwise<F: Float, D: ndarray::Dimension>(a: &Array<F, D>, b: &Array<F, D>, what: &str) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        let (x, y) = (x.as_f64(), y.as_f64());
        if cfg!(feature = "openblas") {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs().max(y.abs())),
                "{what}[{i}]: {x} vs {y}"
            );
        } else {
            assert!(x.to_bits() == y.to_bits(), "{what}[{i}]: {x} vs {y}");
        }
    }
}

/// The panels of `p` widened, when `F` is f32 and this CPU has a panel kernel (the path
/// `frozen_linear` takes for a packed f32 weight).
fn panels_of<F: Float>(p: &PackedMatrix) -> Option<PanelWeight> {
    if std::any::TypeId::of::<F>() != std::any::TypeId::of::<f32>() {
        return None;
    }
    PanelWeight::new(p.to_dense::<f32>().view())
}

fn check_linear_bitwise<F: Float>(format: PackedFormat) {
    // 300 rows: two full tiles and a partial one; 5 rows: one partial tile
    for (rows, cols) in [(2 * TILE_ROWS + 44, 96), (5, 64), (TILE_ROWS, 32)] {
        let p = random_packed(format, rows, cols, rows as u64);
        let w = FrozenWeight::<F>::Packed(p.clone());
        assert_eq!(w.dim(), (rows, cols));
        let dense = p.to_dense::<F>();
        let bias: Array1<F> = random_array::<F>(&[rows], 7).into_dimensionality().unwrap();
        for k in [None, Some(1), Some(3)] {
            let x = random_x::<F>(cols, k, 11);
            for b in [None, Some(bias.view())] {
                let got = frozen_linear(&x, &w, b).unwrap();
                // the widened matrix through the path the packed one takes for F: the panel GEMM
                // for f32 on a CPU with a panel kernel, else `linear` (matrixmultiply)
                let want = match panels_of::<F>(&p) {
                    Some(pw) => {
                        frozen_linear_panels(&x, &FrozenWeight::Dense(dense.clone()), Some(&pw), b)
                            .unwrap()
                    }
                    None => linear(&x, dense.view(), b).unwrap(),
                };
                let what = format!("{format} [{rows}, {cols}] K={k:?} bias={}", b.is_some());
                assert_bitwise(got.primal(), want.primal(), &what);
                assert_eq!(got.k(), want.k());
                if let (Some(g), Some(w)) = (got.tangent(), want.tangent()) {
                    assert_bitwise(g, w, &format!("{what} tangent"));
                }
                let reference = frozen_linear_reference(&x, &w, b).unwrap();
                assert_eq!(reference, linear(&x, dense.view(), b).unwrap());
            }
        }
    }
}

#[test]
fn packed_linear_equals_dense_linear_bitwise_f32() {
    for format in FORMATS {
        check_linear_bitwise::<f32>(format);
    }
}

#[test]
fn packed_linear_equals_dense_linear_bitwise_f64() {
    for format in FORMATS {
        check_linear_bitwise::<f64>(format);
    }
}

#[test]
fn packed_linear_checks_shapes() {
    let w = FrozenWeight::<f32>::Packed(random_packed(PackedFormat::Q8_0, 10, 64, 1));
    let x = random_x::<f32>(32, Some(1), 2);
    assert!(matches!(
        frozen_linear(&x, &w, None),
        Err(Error::ShapeMismatch { .. })
    ));
    let x = random_x::<f32>(64, None, 2);
    let b = Array1::<f32>::zeros(9);
    assert!(matches!(
        frozen_linear(&x, &w, Some(b.view())),
        Err(Error::ShapeMismatch { .. })
    ));
}

#[test]
fn packed_matrix_rejects_bad_sizes_and_selects_rows() {
    assert!(matches!(
        PackedMatrix::new(PackedFormat::Q4_0, 2, 48, vec![0; 36]),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(matches!(
        PackedMatrix::new(PackedFormat::Q4_0, 2, 32, vec![0; 35]),
        Err(Error::InvalidArgument { .. })
    ));
    for format in FORMATS {
        let p = random_packed(format, 6, 64, 3);
        assert_eq!(p.as_bytes().len(), 6 * p.row_bytes());
        let order = [5, 0, 3, 3];
        let sel = p.select_rows(&order).to_dense::<f32>();
        let dense = p.to_dense::<f32>();
        for (i, &r) in order.iter().enumerate() {
            assert_eq!(sel.row(i), dense.row(r));
        }
        assert_eq!(p.first_non_finite(), None);
    }
    // an f16 infinity at [1, 2]
    let mut bytes = vec![0u8; 2 * 4 * 2];
    bytes[(4 + 2) * 2..(4 + 2) * 2 + 2]
        .copy_from_slice(&half::f16::INFINITY.to_bits().to_le_bytes());
    let p = PackedMatrix::new(PackedFormat::F16, 2, 4, bytes).unwrap();
    assert_eq!(p.first_non_finite(), Some(6));
}

#[test]
fn packed_embedding_equals_dense_embedding_bitwise() {
    for format in FORMATS {
        let p = random_packed(format, 37, 64, 5);
        let dense = p.to_dense::<f32>();
        let ids = Array2::from_shape_fn((3, 4), |(b, t)| ((b * 13 + t * 7) % 37) as u32);
        let got = embedding_frozen(ids.view(), &FrozenWeight::Packed(p.clone())).unwrap();
        let want = embedding(ids.view(), dense.view()).unwrap();
        assert_bitwise(got.primal(), want.primal(), &format!("{format} embedding"));
        assert!(got.is_constant());
        let bad = Array2::from_elem((1, 1), 37u32);
        assert!(matches!(
            embedding_frozen(bad.view(), &FrozenWeight::<f32>::Packed(p)),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

/// `cross_entropy(h·Eᵀ)` on the full logits.
fn full_ce<F: Float>(
    h: &Dual<F, Ix2>,
    e: &Array2<F>,
    targets: &[i64],
) -> spry::kernels::CrossEntropy<F> {
    let logits = linear(h, e.view(), None).unwrap();
    cross_entropy(&logits, targets, -100).unwrap()
}

fn check_lm_head<F: Float>(tol: f64) {
    let (n, hdim, vocab) = (23, 64, VOCAB_TILE * 2 + 77);
    let mut targets: Vec<i64> = (0..n).map(|i| ((i * 977) % vocab) as i64).collect();
    for i in [0, 5, 6, 22] {
        targets[i] = -100;
    }
    let hp: Array2<F> = random_array::<F>(&[n, hdim], 21)
        .into_dimensionality()
        .unwrap();
    let ht: Array3<F> = random_array::<F>(&[3, n, hdim], 22)
        .into_dimensionality()
        .unwrap();
    let p = random_packed(PackedFormat::Q4_1, vocab, hdim, 23);
    let dense = p.to_dense::<F>();
    for tangent in [false, true] {
        let h = Dual::with_tangent(hp.clone(), tangent.then(|| ht.clone())).unwrap();
        let want = full_ce(&h, &dense, &targets);
        for head in [
            FrozenWeight::Packed(p.clone()),
            FrozenWeight::Dense(dense.clone()),
        ] {
            for chunk in [1, 3, 64] {
                let got = lm_head_cross_entropy(&h, &head, &targets, -100, chunk).unwrap();
                let what = format!("{} chunk {chunk} tangent {tangent}", head.format_name());
                assert_eq!(got.n_valid, n - 4, "{what}");
                let close =
                    |a: F, b: F| (a.as_f64() - b.as_f64()).abs() <= tol * b.as_f64().abs().max(1.0);
                assert!(
                    close(got.loss, want.loss),
                    "{what}: {} vs {}",
                    got.loss,
                    want.loss
                );
                match (&got.jvp, &want.jvp) {
                    (Some(g), Some(w)) => {
                        for (a, b) in g.iter().zip(w) {
                            assert!(close(*a, *b), "{what}: jvp {a} vs {b}");
                        }
                    }
                    (None, None) => {}
                    _ => panic!("{what}: jvp presence differs"),
                }
            }
        }
    }
}

#[test]
fn lm_head_loss_equals_full_logits_cross_entropy_f64() {
    check_lm_head::<f64>(1e-12);
}

#[test]
fn lm_head_loss_equals_full_logits_cross_entropy_f32() {
    check_lm_head::<f32>(1e-5);
}

#[test]
fn lm_head_loss_errors() {
    let h = Dual::constant(Array2::<f32>::zeros((2, 32)));
    let head = FrozenWeight::<f32>::Packed(random_packed(PackedFormat::Q8_0, 10, 32, 1));
    let e = |r: spry::Result<_>| r.map(|_: spry::kernels::CrossEntropy<f32>| ()).unwrap_err();
    assert!(matches!(
        e(lm_head_cross_entropy(&h, &head, &[1, 2], -100, 0)),
        Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        e(lm_head_cross_entropy(&h, &head, &[-100, -100], -100, 4)),
        Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        e(lm_head_cross_entropy(&h, &head, &[10, 1], -100, 4)),
        Error::InvalidArgument { .. }
    ));
    assert!(matches!(
        e(lm_head_cross_entropy(&h, &head, &[1], -100, 4)),
        Error::ShapeMismatch { .. }
    ));
    let wide = Dual::constant(Array2::<f32>::zeros((2, 64)));
    assert!(matches!(
        e(lm_head_cross_entropy(&wide, &head, &[1, 2], -100, 4)),
        Error::ShapeMismatch { .. }
    ));
}

/// A packed-weight layer with a LoRA adapter (non-zero B, dropout) against the same layer with
/// the widened weight: equal up to f32 rounding; merging widens the packed weight.
#[test]
fn packed_lora_layer_equals_dense_lora_layer_and_merges() {
    let (out, inp) = (TILE_ROWS + 3, 64);
    let p = random_packed(PackedFormat::Q4_0, out, inp, 31);
    let lora = LoraConfig::new(2, 4.0, 0.25, &["proj"]);
    let mut trainable = Trainable::<f32>::new();
    let mut packed = FrozenLinear {
        path: "layer.proj".into(),
        weight: FrozenWeight::Packed(p.clone()),
        bias: Some(Array1::from_shape_fn(out, |i| i as f32 * 0.01)),
        adapter: None,
        panels: PanelCache::default(),
    };
    packed.attach_lora(&lora, "", 3, &mut trainable).unwrap();
    let slot = packed.adapter.unwrap();
    // B = 0 at init: give it values so every term of the branch is live
    let b = random_array::<f32>(&[out, 2], 41);
    trainable.set_value(slot.b, b).unwrap();
    let mut dense = packed.clone();
    dense.weight = FrozenWeight::Dense(p.to_dense());
    let all: Vec<usize> = (0..trainable.len()).collect();
    let dirs = Directions::new(
        &trainable,
        2,
        all.iter()
            .map(|&i| {
                let mut s = vec![2];
                s.extend_from_slice(trainable.value(i).shape());
                Some(random_array::<f32>(&s, 50 + i as u64))
            })
            .collect(),
    )
    .unwrap();
    let key = DropoutKey {
        seed: 9,
        parts: vec![1, 2],
    };
    for x in [
        random_x::<f32>(inp, None, 61),
        random_x::<f32>(inp, Some(2), 62),
    ] {
        for dropout in [None, Some(&key)] {
            let pass = Pass::new(&trainable, &dirs, &lora, dropout);
            let got = packed.forward(&x, &pass).unwrap();
            let want = dense.forward(&x, &pass).unwrap();
            let close = |a: &ArrayD<f32>, b: &ArrayD<f32>| {
                a.iter()
                    .zip(b)
                    .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0))
            };
            assert!(close(
                &got.primal().clone().into_dyn(),
                &want.primal().clone().into_dyn()
            ));
            let (gt, wt) = (got.tangent().unwrap(), want.tangent().unwrap());
            assert!(close(&gt.clone().into_dyn(), &wt.clone().into_dyn()));
        }
    }
    let merged = dense.merged_weight(&trainable, &lora);
    packed.merge_adapter(&trainable, &lora).unwrap();
    assert!(packed.adapter.is_none());
    match &packed.weight {
        FrozenWeight::Dense(w) => assert_eq!(w, &merged),
        FrozenWeight::Packed(_) => panic!("merging must widen the packed weight"),
    }
}

/// `lora_frozen_linear` is one LoRA path for both storages: over a packed weight it equals
/// `lora_linear` over the widened matrix bit for bit (primal and K tangents, with dropout), for
/// every format and an output count that is not a multiple of the tile.
#[test]
fn lora_frozen_linear_equals_lora_linear_on_the_widened_weight_bit_for_bit() {
    let (out, inp, r, k) = (TILE_ROWS + 5, 64, 3, 2);
    for (f, format) in FORMATS.into_iter().enumerate() {
        let seed = 100 + 10 * f as u64;
        let p = random_packed(format, out, inp, seed);
        let dense = p.to_dense::<f32>();
        let bias = Array1::from_shape_fn(out, |i| i as f32 * 0.01);
        let (a, b) = (
            random_dual2(k, [r, inp], seed + 2),
            random_dual2(k, [out, r], seed + 4),
        );
        let x = random_x::<f32>(inp, Some(k), seed + 6);
        let mask = Array3::from_shape_fn(x.primal().raw_dim(), |(i, j, c)| {
            if (i + 3 * j + 7 * c) % 5 == 0 {
                0.0
            } else {
                1.25
            }
        });
        for m in [None, Some(mask.view())] {
            let packed = FrozenWeight::Packed(p.clone());
            let got = lora_frozen_linear(&x, &packed, Some(bias.view()), &a, &b, 0.5, m).unwrap();
            let want = match panels_of::<f32>(&p) {
                Some(pw) => lora_frozen_linear_panels(
                    &x,
                    &FrozenWeight::Dense(dense.clone()),
                    Some(&pw),
                    Some(bias.view()),
                    &a,
                    &b,
                    0.5,
                    m,
                )
                .unwrap(),
                None => lora_linear(&x, dense.view(), Some(bias.view()), &a, &b, 0.5, m).unwrap(),
            };
            assert_bitwise(got.primal(), want.primal(), &format!("{format:?}"));
            assert_bitwise(
                got.tangent().unwrap(),
                want.tangent().unwrap(),
                &format!("{format:?} tangent"),
            );
        }
    }
}

/// `|a − b| ≤ tol·(1 + |b|)` element by element.
fn assert_close_f32<D: ndarray::Dimension>(
    a: &Array<f32, D>,
    b: &Array<f32, D>,
    tol: f32,
    what: &str,
) {
    assert_eq!(a.shape(), b.shape(), "{what}: shapes");
    for (i, (x, y)) in a.iter().zip(b.iter()).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}

/// A dense f32 weight through its pre-packed panels (`frozen_linear_panels`, and the LoRA path)
/// against the `matrixmultiply` path: equal to f32 rounding, for edge-tile shapes and K = 0, 1, 3.
#[test]
fn panel_linear_equals_the_matrixmultiply_path() {
    for &(out, inp) in &[(1, 1), (17, 33), (70, 300), (385, 257)] {
        for k in [None, Some(1), Some(3)] {
            let seed = (out * 31 + inp) as u64;
            let w = FrozenWeight::Dense(
                random_array::<f32>(&[out, inp], seed)
                    .into_dimensionality()
                    .unwrap(),
            );
            let cache = PanelCache::default();
            let Some(panels) = cache.get(&w) else {
                return; // no panel kernel on this CPU: nothing to compare
            };
            let bias = Array1::from_shape_fn(out, |i| i as f32 * 0.01);
            let x = random_x::<f32>(inp, k, seed + 2);
            // |error| grows like √in · ε · Σ|x·w|; normal values: Σ|x·w| ~ in
            let tol = 1e-6 * inp as f32;
            for b in [None, Some(bias.view())] {
                let got = frozen_linear_panels(&x, &w, Some(panels), b).unwrap();
                let want = frozen_linear(&x, &w, b).unwrap();
                assert_close_f32(got.primal(), want.primal(), tol, "primal");
                match (got.tangent(), want.tangent()) {
                    (Some(g), Some(e)) => assert_close_f32(g, e, tol, "tangent"),
                    (g, e) => assert_eq!(g.is_some(), e.is_some()),
                }
                // without panels it is the old path exactly
                let same = frozen_linear_panels(&x, &w, None, b).unwrap();
                assert_bitwise(same.primal(), want.primal(), "no panels");
            }
            if let Some(k) = k {
                let r = 2;
                let (a, b) = (
                    random_dual2(k, [r, inp], seed + 4),
                    random_dual2(k, [out, r], seed + 6),
                );
                let got = lora_frozen_linear_panels(
                    &x,
                    &w,
                    Some(panels),
                    Some(bias.view()),
                    &a,
                    &b,
                    0.5,
                    None,
                )
                .unwrap();
                let want =
                    lora_frozen_linear(&x, &w, Some(bias.view()), &a, &b, 0.5, None).unwrap();
                assert_close_f32(got.primal(), want.primal(), tol, "lora primal");
                assert_close_f32(
                    got.tangent().unwrap(),
                    want.tangent().unwrap(),
                    tol,
                    "lora tangent",
                );
            }
        }
    }
}

/// The cache packs a dense f32 weight once, gives nothing for f64, packed or replaced weights,
/// and its panels read back the weight's rows.
#[test]
fn panel_cache_is_tied_to_its_weight() {
    let dense: Array2<f32> = random_array::<f32>(&[40, 24], 5)
        .into_dimensionality()
        .unwrap();
    let w = FrozenWeight::Dense(dense.clone());
    let mut cache = PanelCache::default();
    if let Some(p) = cache.get(&w) {
        assert_eq!(p.to_dense(), dense);
        let mut row = vec![0.0; 24];
        p.row_into(39, &mut row);
        assert_eq!(row, dense.row(39).to_vec());
        // another buffer with the same values: not these panels
        let other = FrozenWeight::Dense(dense.clone());
        assert!(cache.get(&other).is_none());
        cache.clear();
        assert!(cache.get(&other).is_some());
        assert!(cache.clone().get(&w).is_some(), "a clone packs its own");
    }
    let w64 = FrozenWeight::Dense(dense.mapv(f64::from));
    assert!(PanelCache::default().get(&w64).is_none());
    let packed = FrozenWeight::<f32>::Packed(random_packed(PackedFormat::Q8_0, 40, 32, 7));
    assert!(PanelCache::default().get(&packed).is_none());
}
