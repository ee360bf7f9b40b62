//! Exact gradients of the top encoder layers' adapters (`BertClassifier::with_exact_top_layers`)
//! against the forward-mode gradient: one JVP per basis direction `e_i` (`∂L/∂θ_i = ∇L·e_i`,
//! `federated::diagnostics::exact_gradient`), on a tiny random BERT in f64 with adapters on all
//! six linears:
//!
//! - one and two reversed layers, mean pooling and BERT's pooler (and a checkpoint without a
//!   pooler: the first token), erf and tanh GELU, padded rows, micro-batches of one and two
//!   sequences, weights kept packed (f16);
//! - the dual pass is unchanged (logits, loss and JVPs bitwise those of `forward`);
//! - typed errors: more layers than the model has, a tensor outside the top layers, no labels,
//!   LoRA dropout in the pass;
//! - the real all-MiniLM-L6-v2 (`SPRY_ASSETS`) on a few coordinates, in f64 and f32.

#[path = "common/assets.rs"]
mod assets;
mod common;

use common::randomise_b;
use half::f16;
use ndarray::{Array2, ArrayD, Ix2, IxDyn};
use spry::federated::diagnostics::exact_gradient;
use spry::federated::{LossJvp, Objective, StepKey, directions};
use spry::io::{BertConfig, PackedFormat, PackedMatrix, load_safetensors};
use spry::kernels::FrozenWeight;
use spry::models::WeightSource;
use spry::models::bert::{BertBatch, BertClassifier, Pooling};
use spry::models::pretrained::load_bert_classifier_dir;
use spry::models::source::RandomWeights;
use spry::modules::{Directions, DropoutKey, LoraConfig, Trainable};
use spry::rng::{Domain, KeyedRng};
use spry::{Error, Float, Result, TokenizerOptions};

const BERT_ALL: &[&str] = &[
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

fn bert_config(hidden_act: &str, layers: usize) -> BertConfig {
    BertConfig::from_json(&format!(
        r#"{{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": {layers},
            "num_attention_heads": 4, "intermediate_size": 32,
            "max_position_embeddings": 8, "type_vocab_size": 2,
            "hidden_act": "{hidden_act}"}}"#
    ))
    .unwrap()
}

/// Random weights, with the pooler left out or every matrix kept packed in f16.
struct Source {
    inner: RandomWeights,
    pooler: bool,
    packed: bool,
}

impl WeightSource for Source {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        self.inner.take(name, shape)
    }
    fn has(&self, name: &str) -> bool {
        self.pooler || !name.contains("pooler")
    }
    fn take_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<FrozenWeight<f32>> {
        let a = self.take(name, &[rows, cols])?;
        if !self.packed {
            return Ok(FrozenWeight::Dense(a.into_dimensionality::<Ix2>().unwrap()));
        }
        let bytes = a
            .iter()
            .flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes())
            .collect();
        Ok(FrozenWeight::Packed(PackedMatrix::new(
            PackedFormat::F16,
            rows,
            cols,
            bytes,
        )?))
    }
}

#[derive(Clone, Copy, Debug)]
struct Tiny {
    act: &'static str,
    layers: usize,
    pooler: bool,
    packed: bool,
    dropout: f64,
}

const TINY: Tiny = Tiny {
    act: "gelu",
    layers: 3,
    pooler: true,
    packed: false,
    dropout: 0.0,
};

fn tiny(cfg: Tiny, seed: u64) -> (BertClassifier<f64>, Trainable<f64>) {
    let lora = LoraConfig::new(2, 4.0, cfg.dropout, BERT_ALL);
    let mut src = Source {
        inner: RandomWeights { seed, scale: 0.3 },
        pooler: cfg.pooler,
        packed: cfg.packed,
    };
    let (model, mut tr) =
        BertClassifier::<f64>::load(&bert_config(cfg.act, cfg.layers), &mut src, &lora, 3, seed)
            .unwrap();
    randomise_b(&mut tr, seed, 0.5);
    (model, tr)
}

/// Four sentences of 8, 5, 3 and 6 real tokens, right-padded, the first with a second segment.
fn batch(seed: u64) -> (BertBatch, Vec<i64>) {
    let mut r = KeyedRng::new(seed, Domain::Data, &[0xBA7C]);
    let lens = [8usize, 5, 3, 6];
    let mut ids = Array2::<u32>::zeros((4, 8));
    let mut mask = Array2::from_elem((4, 8), false);
    for (b, &len) in lens.iter().enumerate() {
        ids[[b, 0]] = 2;
        mask[[b, 0]] = true;
        for t in 1..len {
            ids[[b, t]] = 1 + r.below(49) as u32;
            mask[[b, t]] = true;
        }
    }
    let mut batch = BertBatch::new(ids, mask).unwrap();
    for t in 4..8 {
        batch.type_ids[[0, t]] = 1;
    }
    (batch, vec![0, 2, 1, 1])
}

/// The classifier's loss on one batch as an objective, for the forward-mode gradient.
struct Probe<'a, F: Float> {
    model: &'a BertClassifier<F>,
    batch: &'a BertBatch,
    labels: &'a [i64],
}

impl<F: Float> Objective<F> for Probe<'_, F> {
    type Batch = ();
    fn loss_jvp(
        &self,
        _: &(),
        params: &Trainable<F>,
        dirs: &Directions<F>,
        dropout: Option<&DropoutKey>,
        _: &[usize],
    ) -> Result<LossJvp<F>> {
        let ce = self
            .model
            .forward(self.batch, Some(self.labels), params, dirs, dropout)?
            .loss
            .unwrap();
        Ok(LossJvp {
            loss: ce.loss,
            jvp: ce.jvp,
            exact: Vec::new(),
        })
    }
    fn batch_len(&self, _: &()) -> usize {
        self.labels.len()
    }
}

/// `max |a − e| / max |e|` over all entries of the lists.
fn rel_err<F: Float>(actual: &[ArrayD<F>], expected: &[ArrayD<F>]) -> f64 {
    let (mut diff, mut scale) = (0.0f64, 0.0f64);
    for (a, e) in actual.iter().zip(expected) {
        assert_eq!(a.shape(), e.shape());
        for (x, y) in a.iter().zip(e.iter()) {
            diff = diff.max((x.as_f64() - y.as_f64()).abs());
            scale = scale.max(y.as_f64().abs());
        }
    }
    assert!(scale > 1e-8, "gradients too small to compare: {scale}");
    diff / scale
}

/// The reverse pass's gradients of `backprop_params()` against the forward-mode gradient;
/// returns the relative error.
fn check_exact(
    model: &BertClassifier<f64>,
    tr: &Trainable<f64>,
    batch: &BertBatch,
    labels: &[i64],
) -> f64 {
    let want = model.backprop_params();
    assert!(!want.is_empty());
    let none = Directions::none(tr.len());
    let out = model
        .forward_with_exact(batch, Some(labels), tr, &none, None, &want)
        .unwrap();
    let got: Vec<usize> = out.exact.iter().map(|(p, _)| *p).collect();
    assert_eq!(got, want, "the gradients come in the order asked");
    let exact: Vec<ArrayD<f64>> = out.exact.into_iter().map(|(_, g)| g).collect();
    let probe = Probe {
        model,
        batch,
        labels,
    };
    let fwd = exact_gradient(&probe, &(), tr, &want, 64).unwrap();
    rel_err(&exact, &fwd)
}

#[test]
fn exact_top_layers_equal_the_forward_mode_gradient() {
    let (batch, labels) = batch(3);
    for (n, pooling, cfg) in [
        (1, Pooling::Mean, TINY),
        (2, Pooling::Mean, TINY),
        (2, Pooling::Cls, TINY),
        (1, Pooling::Pooler, TINY),
        (2, Pooling::Pooler, TINY),
        (3, Pooling::Pooler, TINY),
        (
            2,
            Pooling::Pooler,
            Tiny {
                pooler: false,
                ..TINY
            },
        ),
        (
            2,
            Pooling::Mean,
            Tiny {
                act: "gelu_new",
                ..TINY
            },
        ),
        (
            2,
            Pooling::Pooler,
            Tiny {
                packed: true,
                ..TINY
            },
        ),
    ] {
        let (model, tr) = tiny(cfg, 7);
        let model = model.with_pooling(pooling).with_exact_top_layers(n);
        let n_params = model.backprop_params().len();
        assert_eq!(
            n_params,
            12 * n,
            "two tensors per adapted linear, six per layer"
        );
        let err = check_exact(&model, &tr, &batch, &labels);
        eprintln!("n = {n}, {pooling:?}, {cfg:?}: relative error {err:.2e}");
        assert!(
            err < 1e-9,
            "n = {n}, {pooling:?}, {cfg:?}: relative error {err:e}"
        );
    }
}

/// Micro-batches (one sequence each, two, or the whole batch) give the same gradients up to
/// the order of the sums, and the same as the forward-mode gradient.
#[test]
fn exact_top_layers_with_micro_batches() {
    let (batch, labels) = batch(5);
    let (model, tr) = tiny(TINY, 9);
    let model = model.with_pooling(Pooling::Mean).with_exact_top_layers(2);
    let want = model.backprop_params();
    let none = Directions::none(tr.len());
    let whole = model
        .forward_with_exact(&batch, Some(&labels), &tr, &none, None, &want)
        .unwrap();
    for rows in [1, 8, 16, 24] {
        let (chunked, _) = tiny(TINY, 9);
        let chunked = chunked
            .with_pooling(Pooling::Mean)
            .with_exact_top_layers(2)
            .with_max_rows(rows);
        let part = chunked
            .forward_with_exact(&batch, Some(&labels), &tr, &none, None, &want)
            .unwrap();
        assert_eq!(part.logits, whole.logits);
        let a: Vec<_> = part.exact.into_iter().map(|(_, g)| g).collect();
        let b: Vec<_> = whole.exact.iter().map(|(_, g)| g.clone()).collect();
        let err = rel_err(&a, &b);
        assert!(err < 1e-12, "max_rows {rows}: {err:e}");
        if rows == 8 {
            let err = check_exact(&chunked, &tr, &batch, &labels);
            assert!(err < 1e-9, "max_rows {rows} vs forward mode: {err:e}");
        }
    }
}

/// Asking for gradients changes nothing in the dual pass: logits, features, loss and JVPs are
/// bitwise those of `forward`; a subset of the tensors comes back in the order asked, equal to
/// the full request's; with nothing asked, nothing is reversed.
#[test]
fn exact_top_layers_leave_the_dual_pass_unchanged() {
    let (batch, labels) = batch(11);
    let (model, tr) = tiny(TINY, 13);
    let model = model.with_exact_top_layers(2);
    let lower: Vec<usize> = (0..tr.len())
        .filter(|p| !model.backprop_params().contains(p))
        .collect();
    let key = StepKey {
        seed: 1,
        round: 0,
        client: 0,
        step: 0,
    };
    let dirs = directions(&tr, &lower, 3, key).unwrap();
    let want = model.backprop_params();
    let plain = model
        .forward(&batch, Some(&labels), &tr, &dirs, None)
        .unwrap();
    let with = model
        .forward_with_exact(&batch, Some(&labels), &tr, &dirs, None, &want)
        .unwrap();
    assert_eq!(plain.logits, with.logits);
    assert_eq!(plain.features, with.features);
    assert_eq!(plain.loss, with.loss);
    assert!(plain.exact.is_empty() && with.exact.len() == want.len());
    // a few tensors of the top layer only, in another order
    let some = vec![
        want[want.len() - 1],
        want[want.len() - 4],
        want[want.len() - 2],
    ];
    let sub = model
        .forward_with_exact(&batch, Some(&labels), &tr, &dirs, None, &some)
        .unwrap();
    for (p, g) in &sub.exact {
        let full = &with.exact.iter().find(|(q, _)| q == p).unwrap().1;
        assert!(rel_err(std::slice::from_ref(g), std::slice::from_ref(full)) < 1e-12);
    }
    assert_eq!(sub.exact.iter().map(|(p, _)| *p).collect::<Vec<_>>(), some);
}

#[test]
fn exact_top_layers_refuse_what_they_cannot_do() {
    let (batch, labels) = batch(17);
    let invalid = |r: Result<_>| matches!(r, Err(Error::InvalidArgument { .. }));
    let (model, tr) = tiny(TINY, 19);
    let none = Directions::none(tr.len());
    // more layers than the encoder has: every pass refuses
    let model = model.with_exact_top_layers(4);
    assert!(invalid(
        model
            .forward(&batch, Some(&labels), &tr, &none, None)
            .map(drop)
    ));
    let model = model.with_exact_top_layers(1);
    assert_eq!(model.exact_top_layers(), 1);
    let lower = model.bert().layer_params(0)[0];
    assert!(invalid(
        model
            .forward_with_exact(&batch, Some(&labels), &tr, &none, None, &[lower])
            .map(drop)
    ));
    let head = model.head_params().0;
    assert!(invalid(
        model
            .forward_with_exact(&batch, Some(&labels), &tr, &none, None, &[head])
            .map(drop)
    ));
    let top = model.backprop_params();
    assert!(invalid(
        model
            .forward_with_exact(&batch, None, &tr, &none, None, &top)
            .map(drop)
    ));
    // LoRA dropout in the pass: refused; the same model without a dropout key is fine
    let (model, tr) = tiny(
        Tiny {
            dropout: 0.2,
            ..TINY
        },
        19,
    );
    let model = model.with_exact_top_layers(1);
    let key = DropoutKey {
        seed: 1,
        parts: vec![0],
    };
    assert!(invalid(
        model
            .forward_with_exact(&batch, Some(&labels), &tr, &none, Some(&key), &top)
            .map(drop)
    ));
    assert!(
        model
            .forward_with_exact(&batch, Some(&labels), &tr, &none, None, &top)
            .is_ok()
    );
    // off by default, and for layers without adapters
    let (model, _) = tiny(TINY, 19);
    assert!(model.backprop_params().is_empty());
}

/// all-MiniLM-L6-v2 with rank-4 adapters on query and value of layers 4 and 5 and the top
/// layer reversed: a few coordinates of each of its four tensors against basis-direction JVPs
/// in f64 (tight), and the f32 model's gradients against the f64 ones.
#[test]
fn minilm_exact_top_layer_equals_forward_mode_on_a_few_coordinates() {
    let dir = assets::asset("all-MiniLM-L6-v2/model.safetensors")
        .parent()
        .unwrap()
        .to_path_buf();
    let lora = LoraConfig {
        layers_to_transform: Some(vec![4, 5]),
        ..LoraConfig::new(4, 4.0, 0.0, &["query", "value"])
    };
    let seed = 23;
    let (m32, mut tr32, tok) = load_bert_classifier_dir(
        &dir,
        &lora,
        2,
        seed,
        TokenizerOptions::default().with_max_len(32),
    )
    .unwrap();
    randomise_b(&mut tr32, seed, 0.05);
    let batch: BertBatch = tok
        .encode_batch(
            &["A man is playing a guitar on the stage.", "What a day!"],
            true,
        )
        .unwrap()
        .into();
    assert!(batch.mask.iter().any(|&m| !m), "the batch has padding");
    let labels = [1i64, 0];
    let cfg = BertConfig::from_file(dir.join("config.json")).unwrap();
    let mut weights = load_safetensors(dir.join("model.safetensors")).unwrap();
    let (m64, _) = BertClassifier::<f64>::load(&cfg, &mut weights, &lora, 2, seed).unwrap();
    drop(weights);
    let m64 = m64.with_pooling(Pooling::Mean).with_exact_top_layers(1);
    let m32 = m32.with_pooling(Pooling::Mean).with_exact_top_layers(1);
    let tr64: Trainable<f64> = tr32.cast();
    let want = m64.backprop_params();
    assert_eq!(want, m32.backprop_params());
    assert_eq!(want.len(), 4, "query and value of layer 5");
    let none = Directions::none(tr64.len());
    let exact64 = m64
        .forward_with_exact(&batch, Some(&labels), &tr64, &none, None, &want)
        .unwrap()
        .exact;
    let exact32 = m32
        .forward_with_exact(
            &batch,
            Some(&labels),
            &tr32,
            &Directions::none(tr32.len()),
            None,
            &want,
        )
        .unwrap()
        .exact;
    // 8 coordinates of each tensor, spread over it, as basis directions in one dual pass each
    let mut per_param: Vec<Option<ArrayD<f64>>> = vec![None; tr64.len()];
    let mut picks = Vec::new();
    let k = 8 * want.len();
    for (e, &p) in want.iter().enumerate() {
        let n = tr64.value(p).len();
        let mut shape = vec![k];
        shape.extend_from_slice(tr64.value(p).shape());
        let mut t = ArrayD::<f64>::zeros(IxDyn(&shape));
        let data = t.as_slice_mut().unwrap();
        for j in 0..8 {
            let i = (j * 7919 + 13) % n;
            data[(e * 8 + j) * n + i] = 1.0;
            picks.push((e, i));
        }
        per_param[p] = Some(t);
    }
    let dirs = Directions::new(&tr64, k, per_param).unwrap();
    let jvp = m64
        .forward(&batch, Some(&labels), &tr64, &dirs, None)
        .unwrap()
        .loss
        .unwrap()
        .jvp
        .unwrap();
    let (mut diff, mut scale, mut diff32) = (0.0f64, 0.0f64, 0.0f64);
    for (c, &(e, i)) in picks.iter().enumerate() {
        let g = exact64[e].1.as_slice().unwrap()[i];
        let g32 = f64::from(exact32[e].1.as_slice().unwrap()[i]);
        diff = diff.max((g - jvp[c]).abs());
        diff32 = diff32.max((g32 - g).abs());
        scale = scale.max(jvp[c].abs());
    }
    eprintln!(
        "minilm top layer: max |g| {scale:.3e}, f64 reverse vs forward {:.2e}, f32 vs f64 {:.2e}",
        diff / scale,
        diff32 / scale
    );
    assert!(scale > 1e-6, "gradients too small to compare");
    assert!(
        diff <= 1e-8 * scale,
        "f64 reverse vs forward mode: {}",
        diff / scale
    );
    assert!(diff32 <= 1e-3 * scale, "f32 vs f64: {}", diff32 / scale);
}
