//! Whole-model JVP correctness: the K JVP scalars of a full forward pass (BERT classifier, Llama
//! causal LM, real MiniLM) against central finite differences of the loss along the same
//! directions (the finite-difference protocol of the forward-mode-AD reference, §1.4: f64,
//! ε = 1e-6, tolerance 1e-6 relative to the largest JVP), plus the structural properties every
//! pass must have:
//!
//! - the dual pass's primal outputs (logits, loss) equal the plain pass's bit for bit;
//! - K stacked directions give the same scalars as K single-direction passes;
//! - directions on a Spry client's units only (symbolic-zero tangents elsewhere) are as exact as
//!   directions on every trainable tensor;
//! - padding: masked keys and padded tokens do not leak into real tokens, and the chunked Llama
//!   loss equals the per-prefix reference;
//! - greedy generation with the KV cache equals recomputing the full prefix every step.
//!
//! LoRA B matrices start at zero (PEFT init), which would hide every A-direction term and the
//! adapter's effect on downstream tangents, so every test first gives B (and the head's bias)
//! random values.

#[path = "common/assets.rs"]
mod assets;
mod common;

use ndarray::{Array1, Array2, ArrayD, Axis, IxDyn};
use spry::federated::planner::{Planner, ReferencePlanner};
use spry::federated::{StepKey, directions};
use spry::io::{BertConfig, LlamaConfig, load_safetensors};
use spry::models::WeightSource;
use spry::models::bert::{BertBatch, BertClassifier};
use spry::models::llama::{LOSS_CHUNK_ROWS, Llama};
use spry::models::pretrained::load_bert_classifier_dir;
use spry::models::source::RandomWeights;
use spry::modules::{Directions, DropoutKey, LoraConfig, Trainable};
use spry::rng::{Domain, KeyedRng};
use spry::{Float, TokenizerOptions};

use common::{EXACT_TOL, FD_TOL, fd_jvp, randomise_b};

// ---------------------------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------------------------

fn rng(seed: u64, tag: u64) -> KeyedRng {
    KeyedRng::new(seed, Domain::Init, &[0x7e57, tag])
}

/// All trainable values, flattened in registry order.
fn flat_params(tr: &Trainable<f64>) -> Vec<f64> {
    tr.values().iter().flat_map(|v| v.iter().copied()).collect()
}

/// A copy of `tr` whose values are `x` (flattened in registry order).
fn with_params(tr: &Trainable<f64>, x: &[f64]) -> Trainable<f64> {
    let mut out = tr.clone();
    let mut off = 0;
    for i in 0..tr.len() {
        let shape = tr.value(i).shape().to_vec();
        let n = tr.value(i).len();
        out.set_value(
            i,
            ArrayD::from_shape_vec(IxDyn(&shape), x[off..off + n].to_vec()).unwrap(),
        )
        .unwrap();
        off += n;
    }
    assert_eq!(off, x.len());
    out
}

/// Direction k of `dirs`, flattened like [`flat_params`] (zeros on parameters without one).
fn flat_direction<F: Float>(tr: &Trainable<F>, dirs: &Directions<F>, k: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(tr.n_scalars());
    for i in 0..tr.len() {
        match dirs.get(i) {
            Some(t) => out.extend(t.index_axis(Axis(0), k).iter().map(|v| v.as_f64())),
            None => out.extend(std::iter::repeat_n(0.0, tr.value(i).len())),
        }
    }
    out
}

/// Direction k of `dirs` alone, as a K = 1 set of directions.
fn single<F: Float>(tr: &Trainable<F>, dirs: &Directions<F>, k: usize) -> Directions<F> {
    let per = dirs
        .per_param()
        .iter()
        .map(|t| {
            t.as_ref()
                .map(|t| t.index_axis(Axis(0), k).to_owned().insert_axis(Axis(0)))
        })
        .collect();
    Directions::new(tr, 1, per).unwrap()
}

/// The parameter indices of the given units.
fn unit_params<F: Float>(tr: &Trainable<F>, units: &[usize]) -> Vec<usize> {
    units
        .iter()
        .flat_map(|&u| tr.units()[u].params.clone())
        .collect()
}

/// `max_k |a_k − e_k| / max_k |e_k|`: the error relative to the largest expected scalar.
fn rel_err(actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len());
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(
        scale > 1e-6,
        "expected values {expected:?} are too small for a meaningful check"
    );
    let diff = actual
        .iter()
        .zip(expected)
        .fold(0.0f64, |m, (a, e)| m.max((a - e).abs()));
    diff / scale
}

/// Which parameters a case perturbs.
#[derive(Clone, Copy, Debug)]
enum Subset {
    /// Every trainable tensor.
    All,
    /// The units the reference planner gives one client.
    Client { n_clients: usize, client: usize },
}

/// K directions from the Spry perturbation stream over the chosen parameters.
fn make_dirs(tr: &Trainable<f64>, subset: Subset, k: usize, seed: u64) -> Directions<f64> {
    let params: Vec<usize> = match subset {
        Subset::All => (0..tr.len()).collect(),
        Subset::Client { n_clients, client } => {
            let plan = ReferencePlanner
                .plan(seed, n_clients, tr.units().len())
                .unwrap();
            unit_params(tr, &plan.units[client])
        }
    };
    assert!(!params.is_empty());
    let key = StepKey {
        seed,
        round: 3,
        client: 1,
        step: 2,
    };
    directions(tr, &params, k, key).unwrap()
}

/// Checks the JVP scalars of `loss` against central differences (f64, ε = 1e-6) and that K
/// stacked directions equal K single passes; returns (max FD error, max stacked-vs-single error).
fn check_jvp(
    what: &str,
    tr: &Trainable<f64>,
    dirs: &Directions<f64>,
    loss: impl Fn(&Trainable<f64>, &Directions<f64>) -> (f64, Option<Array1<f64>>),
) -> (f64, f64) {
    let k = dirs.k();
    let (l0, _) = loss(tr, &Directions::none(tr.len()));
    let (l1, jvp) = loss(tr, dirs);
    assert_eq!(
        l0.to_bits(),
        l1.to_bits(),
        "{what}: dual-pass loss differs from the plain pass"
    );
    let jvp = jvp.expect("directions give JVP scalars").to_vec();
    assert_eq!(jvp.len(), k);
    let x0 = flat_params(tr);
    let fd: Vec<f64> = (0..k)
        .map(|kk| {
            let v = flat_direction(tr, dirs, kk);
            fd_jvp(
                |x| vec![loss(&with_params(tr, x), &Directions::none(tr.len())).0],
                &x0,
                &v,
            )[0]
        })
        .collect();
    let fd_err = rel_err(&jvp, &fd);
    let singles: Vec<f64> = (0..k)
        .map(|kk| loss(tr, &single(tr, dirs, kk)).1.unwrap()[0])
        .collect();
    let k_err = rel_err(&jvp, &singles);
    let bitwise = jvp.iter().zip(&singles).all(|(a, b)| a == b);
    eprintln!(
        "{what}: K={k} loss={l0:.6} jvp={jvp:?} fd={fd:?} rel.err={fd_err:.2e} \
         stacked-vs-single={k_err:.2e} (bitwise: {bitwise})"
    );
    assert!(
        fd_err <= FD_TOL,
        "{what}: JVP {jvp:?} vs finite differences {fd:?}: relative error {fd_err:e}"
    );
    assert!(
        k_err <= EXACT_TOL,
        "{what}: stacked {jvp:?} vs single {singles:?}: relative error {k_err:e}"
    );
    (fd_err, k_err)
}

// ---------------------------------------------------------------------------------------------
// BERT classifier
// ---------------------------------------------------------------------------------------------

const BERT_QV: &[&str] = &["query", "value"];
const BERT_ALL: &[&str] = &[
    "query",
    "key",
    "value",
    "attention.output.dense",
    "intermediate.dense",
    "output.dense",
];

fn bert_config(hidden_act: &str) -> BertConfig {
    BertConfig::from_json(&format!(
        r#"{{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 32,
            "max_position_embeddings": 8, "type_vocab_size": 2,
            "hidden_act": "{hidden_act}"}}"#
    ))
    .unwrap()
}

fn tiny_bert_act(
    hidden_act: &str,
    targets: &[&str],
    dropout: f64,
    seed: u64,
) -> (BertClassifier<f64>, Trainable<f64>) {
    let lora = LoraConfig::new(2, 4.0, dropout, targets);
    let mut src = RandomWeights { seed, scale: 0.2 };
    let (model, mut tr) =
        BertClassifier::<f64>::load(&bert_config(hidden_act), &mut src, &lora, 3, seed).unwrap();
    randomise_b(&mut tr, seed, 0.5);
    (model, tr)
}

fn tiny_bert(targets: &[&str], dropout: f64, seed: u64) -> (BertClassifier<f64>, Trainable<f64>) {
    tiny_bert_act("gelu", targets, dropout, seed)
}

/// Three sentences of 8, 5 and 3 real tokens (padding with id 0 and mask false at the end),
/// the first with a second segment.
fn bert_batch(seed: u64) -> (BertBatch, Vec<i64>) {
    let mut r = rng(seed, 2);
    let lens = [8usize, 5, 3];
    let mut ids = Array2::<u32>::zeros((3, 8));
    let mut mask = Array2::from_elem((3, 8), false);
    for (b, &len) in lens.iter().enumerate() {
        ids[[b, 0]] = 2; // a [CLS]-like first token
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
    (batch, vec![0, 2, 1])
}

fn bert_case(targets: &[&str], subset: Subset, k: usize, dropout: f64, seed: u64) -> (f64, f64) {
    bert_case_act("gelu", targets, subset, k, dropout, seed)
}

fn bert_case_act(
    hidden_act: &str,
    targets: &[&str],
    subset: Subset,
    k: usize,
    dropout: f64,
    seed: u64,
) -> (f64, f64) {
    let (model, tr) = tiny_bert_act(hidden_act, targets, dropout, seed);
    let (batch, labels) = bert_batch(seed);
    let key = DropoutKey {
        seed,
        parts: vec![1, 2, 3],
    };
    let key = (dropout > 0.0).then_some(&key);
    let dirs = make_dirs(&tr, subset, k, seed);
    // the dual pass's logits equal the plain pass's, bit for bit
    let plain = model
        .forward(&batch, Some(&labels), &tr, &Directions::none(tr.len()), key)
        .unwrap();
    let dual = model
        .forward(&batch, Some(&labels), &tr, &dirs, key)
        .unwrap();
    assert_eq!(plain.logits, dual.logits, "dual-pass logits differ");
    assert_eq!(plain.features, dual.features, "dual-pass features differ");
    let what = format!("bert {hidden_act} {targets:?} {subset:?} dropout={dropout}");
    check_jvp(&what, &tr, &dirs, |tr, dirs| {
        let ce = model
            .forward(&batch, Some(&labels), tr, dirs, key)
            .unwrap()
            .loss
            .unwrap();
        (ce.loss, ce.jvp)
    })
}

#[test]
fn bert_lora_qv_jvp_matches_finite_differences() {
    let mut worst = (0.0f64, 0.0f64);
    for (subset, k, seed) in [
        (Subset::All, 3, 11),
        (Subset::All, 1, 12),
        // 5 units (4 adapters + head) over 3 clients: client 2 holds layer 1's query only, so
        // every layer-0 tangent is a symbolic zero
        (
            Subset::Client {
                n_clients: 3,
                client: 2,
            },
            2,
            13,
        ),
        (
            Subset::Client {
                n_clients: 2,
                client: 0,
            },
            4,
            14,
        ),
        // client 4 of 5 holds the classifier only: the encoder carries no tangent at all
        (
            Subset::Client {
                n_clients: 5,
                client: 4,
            },
            2,
            15,
        ),
    ] {
        let (e, s) = bert_case(BERT_QV, subset, k, 0.0, seed);
        worst = (worst.0.max(e), worst.1.max(s));
    }
    eprintln!(
        "bert qv: worst FD error {:.2e}, stacked {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn bert_lora_all_linear_jvp_matches_finite_differences() {
    let mut worst = (0.0f64, 0.0f64);
    for (subset, k, seed) in [
        (Subset::All, 4, 21),
        (
            Subset::Client {
                n_clients: 4,
                client: 1,
            },
            2,
            22,
        ),
        (
            Subset::Client {
                n_clients: 5,
                client: 3,
            },
            1,
            23,
        ),
    ] {
        let (e, s) = bert_case(BERT_ALL, subset, k, 0.0, seed);
        worst = (worst.0.max(e), worst.1.max(s));
    }
    eprintln!(
        "bert all: worst FD error {:.2e}, stacked {:.2e}",
        worst.0, worst.1
    );
}

/// LoRA dropout keyed by a fixed [`DropoutKey`]: the same mask for the primal and the tangent,
/// so the JVP is the derivative of the (fixed-mask) loss.
#[test]
fn bert_lora_dropout_jvp_matches_finite_differences() {
    bert_case(BERT_ALL, Subset::All, 2, 0.25, 31);
}

/// `hidden_act` selects the FFN activation: `gelu_new` (= `gelu_pytorch_tanh`) is the tanh
/// approximation, which changes the logits (the model used to apply exact GELU whatever the
/// config said), and its JVP is exact too; activations the model cannot compute are refused.
#[test]
fn bert_hidden_act_is_honoured() {
    let (batch, labels) = bert_batch(35);
    let logits = |act: &str| {
        let (model, tr) = tiny_bert_act(act, BERT_QV, 0.0, 35);
        model
            .forward(
                &batch,
                Some(&labels),
                &tr,
                &Directions::none(tr.len()),
                None,
            )
            .unwrap()
            .logits
    };
    let (erf, tanh, tanh2) = (
        logits("gelu"),
        logits("gelu_new"),
        logits("gelu_pytorch_tanh"),
    );
    assert_eq!(tanh, tanh2);
    let diff = (&erf - &tanh).iter().fold(0.0f64, |m, v| m.max(v.abs()));
    eprintln!("bert gelu vs gelu_new logits differ by {diff:.2e}");
    assert!(diff > 1e-6, "hidden_act gelu_new is ignored");
    bert_case_act("gelu_new", BERT_ALL, Subset::All, 2, 0.0, 36);
    for act in ["relu", "silu"] {
        let lora = LoraConfig::new(2, 4.0, 0.0, BERT_QV);
        let mut src = RandomWeights {
            seed: 1,
            scale: 0.2,
        };
        assert!(
            BertClassifier::<f64>::load(&bert_config(act), &mut src, &lora, 2, 1).is_err(),
            "hidden_act {act} must be refused, not computed as GELU"
        );
    }
}

/// Padded positions (mask false) do not influence the logits: changing their ids and segments
/// leaves every logit unchanged (bitwise) and so does the JVP.
#[test]
fn bert_padding_does_not_leak() {
    let (model, tr) = tiny_bert(BERT_ALL, 0.0, 41);
    let (batch, labels) = bert_batch(41);
    let dirs = make_dirs(&tr, Subset::All, 2, 41);
    let mut other = batch.clone();
    for ((id, ty), &m) in other
        .ids
        .iter_mut()
        .zip(other.type_ids.iter_mut())
        .zip(batch.mask.iter())
    {
        if !m {
            *id = 37;
            *ty = 1;
        }
    }
    let a = model
        .forward(&batch, Some(&labels), &tr, &dirs, None)
        .unwrap();
    let b = model
        .forward(&other, Some(&labels), &tr, &dirs, None)
        .unwrap();
    assert_eq!(a.logits, b.logits);
    assert_eq!(a.loss, b.loss);
    // and a sentence's logits do not depend on the rest of the batch
    let one = BertBatch {
        ids: batch.ids.slice(ndarray::s![2..3, ..3]).to_owned(),
        type_ids: batch.type_ids.slice(ndarray::s![2..3, ..3]).to_owned(),
        mask: batch.mask.slice(ndarray::s![2..3, ..3]).to_owned(),
    };
    let c = model
        .forward(&one, None, &tr, &Directions::none(tr.len()), None)
        .unwrap();
    for (x, y) in c.logits.row(0).iter().zip(a.logits.row(2)) {
        assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{x} vs {y}");
    }
}

/// Micro-batching (`with_max_rows`) changes only which sequences share a pass: logits, features,
/// loss and JVP equal the whole-batch pass bit for bit, for budgets giving one sequence per chunk
/// (1, 8: T = 8), two (16, 23) or the whole batch (24). With dropout every chunk draws its own
/// masks, and the JVP is still the derivative of that fixed-mask loss.
#[test]
fn bert_micro_batches_equal_the_whole_batch() {
    let (model, tr) = tiny_bert(BERT_ALL, 0.0, 43);
    let (batch, labels) = bert_batch(43);
    let dirs = make_dirs(&tr, Subset::All, 3, 43);
    let whole = model
        .forward(&batch, Some(&labels), &tr, &dirs, None)
        .unwrap();
    for rows in [1, 8, 16, 23, 24] {
        let (chunked, _) = tiny_bert(BERT_ALL, 0.0, 43);
        let part = chunked
            .with_max_rows(rows)
            .forward(&batch, Some(&labels), &tr, &dirs, None)
            .unwrap();
        assert_eq!(part.logits, whole.logits, "max_rows {rows}: logits");
        assert_eq!(part.features, whole.features, "max_rows {rows}: features");
        assert_eq!(part.loss, whole.loss, "max_rows {rows}: loss and JVP");
    }
    let (model, tr) = tiny_bert(BERT_ALL, 0.25, 44);
    let model = model.with_max_rows(8);
    let (batch, labels) = bert_batch(44);
    let key = DropoutKey {
        seed: 44,
        parts: vec![1, 2, 3],
    };
    let dirs = make_dirs(&tr, Subset::All, 2, 44);
    check_jvp("bert micro-batched with dropout", &tr, &dirs, |tr, dirs| {
        let ce = model
            .forward(&batch, Some(&labels), tr, dirs, Some(&key))
            .unwrap()
            .loss
            .unwrap();
        (ce.loss, ce.jvp)
    });
}

// ---------------------------------------------------------------------------------------------
// Llama
// ---------------------------------------------------------------------------------------------

const LLAMA_QV: &[&str] = &["q_proj", "v_proj"];
const LLAMA_ALL: &[&str] = &[
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The tiny Llama's config; `extra` adds JSON fields (e.g. `"attention_bias": true`).
fn llama_config(extra: &str) -> LlamaConfig {
    LlamaConfig::from_json(&format!(
        r#"{{"vocab_size": 40, "hidden_size": 16, "intermediate_size": 24,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "max_position_embeddings": 64, "rope_theta": 10000.0,
            "tie_word_embeddings": true{extra}}}"#
    ))
    .unwrap()
}

/// A [`WeightSource`] that records the names it hands out.
struct Recording {
    inner: RandomWeights,
    taken: Vec<String>,
}

impl WeightSource for Recording {
    fn take(&mut self, name: &str, shape: &[usize]) -> spry::Result<ArrayD<f32>> {
        self.taken.push(name.to_string());
        self.inner.take(name, shape)
    }

    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }
}

/// The tiny Llama and the names of the tensors it loaded.
fn tiny_llama_with(
    extra: &str,
    targets: &[&str],
    scale: f64,
    seed: u64,
) -> (Llama<f64>, Trainable<f64>, Vec<String>) {
    let lora = LoraConfig::new(2, 4.0, 0.0, targets);
    let mut src = Recording {
        inner: RandomWeights { seed, scale },
        taken: Vec::new(),
    };
    let mut tr = Trainable::new();
    let model = Llama::<f64>::load(&llama_config(extra), &mut src, &lora, seed, &mut tr).unwrap();
    randomise_b(&mut tr, seed, 0.5);
    (model, tr, src.taken)
}

fn tiny_llama(targets: &[&str], scale: f64, seed: u64) -> (Llama<f64>, Trainable<f64>) {
    let (model, tr, _) = tiny_llama_with("", targets, scale, seed);
    (model, tr)
}

/// A batch of `lens.len()` rows of length `t`: row b has `pads[b]` padding tokens on the left
/// and real tokens up to `lens[b]` (exclusive), padding after. Labels are the ids on real
/// positions except the first real one of each row (predicted from padding or nothing) and
/// every third position of row 0 (a "prompt" token), -100 elsewhere.
struct LlamaBatch {
    ids: Array2<u32>,
    labels: Array2<i64>,
    mask: Array2<bool>,
}

fn llama_batch(t: usize, pads: &[usize], lens: &[usize], seed: u64) -> LlamaBatch {
    let b = pads.len();
    let mut r = rng(seed, 3);
    let mut ids = Array2::<u32>::zeros((b, t));
    let mut labels = Array2::<i64>::from_elem((b, t), -100);
    let mut mask = Array2::from_elem((b, t), false);
    for bi in 0..b {
        for ti in pads[bi]..lens[bi] {
            ids[[bi, ti]] = 1 + r.below(39) as u32;
            mask[[bi, ti]] = true;
            if ti > pads[bi] && !(bi == 0 && ti % 3 == 0) {
                labels[[bi, ti]] = ids[[bi, ti]] as i64;
            }
        }
    }
    LlamaBatch { ids, labels, mask }
}

/// The batches of the Llama cases, each with more than [`LOSS_CHUNK_ROWS`] rows (the loss runs
/// them in one row chunk at the K used here; the fused loss's chunk boundaries are tested in
/// `tests/frozen_weight.rs` for chunks of 1, 3 and 64 rows):
/// - 2 × 40: row 1 is right-padded from 20, so rows 64..80 have no valid label;
/// - 3 × 30: row 2 is left-padded by 3 (rows 60..63 are padding).
fn llama_batches(seed: u64) -> Vec<LlamaBatch> {
    let out = vec![
        llama_batch(40, &[0, 0], &[40, 20], seed),
        llama_batch(30, &[0, 0, 3], &[30, 26, 30], seed + 1),
    ];
    for b in &out {
        assert!(b.ids.len() > LOSS_CHUNK_ROWS);
    }
    out
}

fn llama_loss(
    model: &Llama<f64>,
    b: &LlamaBatch,
    tr: &Trainable<f64>,
    dirs: &Directions<f64>,
) -> (f64, Option<Array1<f64>>) {
    let ce = model
        .loss(
            b.ids.view(),
            b.labels.view(),
            Some(b.mask.view()),
            tr,
            dirs,
            None,
        )
        .unwrap();
    (ce.loss, ce.jvp)
}

/// Micro-batching (`with_max_rows`) changes only which sequences share a pass: the loss, its JVP
/// and the last-position logits equal the whole-batch pass bit for bit, for budgets of one
/// sequence per chunk (1, 12: T = 12), two (24) or all three (36); padded rows included.
#[test]
fn llama_micro_batches_equal_the_whole_batch() {
    let (model, tr) = tiny_llama(LLAMA_ALL, 0.2, 47);
    let b = llama_batch(12, &[0, 2, 0], &[12, 12, 7], 47);
    let dirs = make_dirs(&tr, Subset::All, 3, 47);
    let loss = |m: &Llama<f64>| {
        m.loss(
            b.ids.view(),
            b.labels.view(),
            Some(b.mask.view()),
            &tr,
            &dirs,
            None,
        )
        .unwrap()
    };
    let (whole, whole_logits) = (loss(&model), model.last_logits(b.ids.view(), &tr).unwrap());
    assert!(whole.jvp.is_some());
    for rows in [1, 12, 24, 36] {
        let chunked = tiny_llama(LLAMA_ALL, 0.2, 47).0.with_max_rows(rows);
        assert_eq!(loss(&chunked), whole, "max_rows {rows}: loss and JVP");
        assert_eq!(
            chunked.last_logits(b.ids.view(), &tr).unwrap(),
            whole_logits,
            "max_rows {rows}: last logits"
        );
    }
}

fn llama_cases(targets: &[&str], cases: &[(Subset, usize)], seed: u64) -> (f64, f64) {
    let (model, tr) = tiny_llama(targets, 0.2, seed);
    llama_cases_on(&model, &tr, targets, cases, seed)
}

fn llama_cases_on(
    model: &Llama<f64>,
    tr: &Trainable<f64>,
    targets: &[&str],
    cases: &[(Subset, usize)],
    seed: u64,
) -> (f64, f64) {
    let mut worst = (0.0f64, 0.0f64);
    for (i, b) in llama_batches(seed).iter().enumerate() {
        for (j, &(subset, k)) in cases.iter().enumerate() {
            let dirs = make_dirs(tr, subset, k, seed + 10 * i as u64 + j as u64);
            let what = format!("llama {targets:?} batch {:?} {subset:?}", b.ids.dim());
            let (e, s) = check_jvp(&what, tr, &dirs, |tr, dirs| llama_loss(model, b, tr, dirs));
            worst = (worst.0.max(e), worst.1.max(s));
        }
    }
    worst
}

#[test]
fn llama_lora_qv_jvp_matches_finite_differences() {
    let worst = llama_cases(
        LLAMA_QV,
        &[
            (Subset::All, 3),
            // 4 adapter units over 3 clients (reference planner: unit j → client j mod 3):
            // client 2 holds layer 1's q_proj only, so layer 0 carries no tangent
            (
                Subset::Client {
                    n_clients: 3,
                    client: 2,
                },
                2,
            ),
        ],
        51,
    );
    eprintln!(
        "llama qv: worst FD error {:.2e}, stacked {:.2e}",
        worst.0, worst.1
    );
}

#[test]
fn llama_lora_all_projections_jvp_matches_finite_differences() {
    let worst = llama_cases(
        LLAMA_ALL,
        &[
            (Subset::All, 4),
            (
                Subset::Client {
                    n_clients: 4,
                    client: 3,
                },
                1,
            ),
        ],
        61,
    );
    eprintln!(
        "llama all: worst FD error {:.2e}, stacked {:.2e}",
        worst.0, worst.1
    );
}

fn log_softmax_at(z: &[f64], c: usize) -> f64 {
    let m = z.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v));
    let lse = m + z.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
    z[c] - lse
}

/// The chunked loss equals an independent reference: the mean over valid labels of the NLL of
/// `last_logits` on each row's real prefix (left padding removed: with the key mask, RoPE's
/// relative positions make a left-padded row equal to the unpadded one).
#[test]
fn llama_chunked_loss_equals_prefix_reference() {
    let (model, tr) = tiny_llama(LLAMA_ALL, 0.2, 71);
    for b in llama_batches(71) {
        let (loss, _) = llama_loss(&model, &b, &tr, &Directions::none(tr.len()));
        let (mut sum, mut n) = (0.0, 0usize);
        for bi in 0..b.ids.nrows() {
            let pad = b.mask.row(bi).iter().position(|&m| m).unwrap();
            for t in 1..b.ids.ncols() {
                let y = b.labels[[bi, t]];
                if y == -100 {
                    continue;
                }
                assert!(t > pad, "a label predicted from padding");
                let prefix = b.ids.slice(ndarray::s![bi..bi + 1, pad..t]);
                let z = model.last_logits(prefix, &tr).unwrap();
                sum -= log_softmax_at(z.row(0).as_slice().unwrap(), y as usize);
                n += 1;
            }
        }
        let want = sum / n as f64;
        eprintln!("llama chunked loss {loss:.15} vs prefix reference {want:.15}");
        assert!(
            (loss - want).abs() <= 1e-12 * want.abs(),
            "chunked loss {loss} vs reference {want}"
        );
    }
}

/// Greedy generation with the KV cache produces the tokens of the naive loop that recomputes
/// `last_logits` over the whole prefix at every step; a stop token ends it (and is included).
/// Returns the number of distinct tokens generated over all prompts.
fn check_greedy(model: &Llama<f64>, tr: &Trainable<f64>) -> usize {
    let mut distinct_total = 0;
    for prompt in [
        vec![5u32, 17, 3, 29, 8],
        vec![11u32],
        vec![1, 2, 3, 4, 5, 6, 7],
    ] {
        let max_new = 24;
        let got = model.generate_greedy(&prompt, max_new, &[], tr).unwrap();
        let mut seq = prompt.clone();
        let mut want = Vec::new();
        for _ in 0..max_new {
            let ids = Array2::from_shape_vec((1, seq.len()), seq.clone()).unwrap();
            let z = model.last_logits(ids.view(), tr).unwrap();
            let next = spry::models::bert::argmax_rows(z.view())[0] as u32;
            want.push(next);
            seq.push(next);
        }
        eprintln!("prompt {prompt:?}: greedy {got:?}");
        assert_eq!(got, want, "prompt {prompt:?}");
        let mut d = want.clone();
        d.sort_unstable();
        d.dedup();
        distinct_total += d.len();
        // stopping at the first occurrence of a produced token
        let stop = want[want.len() / 2];
        let first = want.iter().position(|&x| x == stop).unwrap();
        let stopped = model
            .generate_greedy(&prompt, max_new, &[stop], tr)
            .unwrap();
        assert_eq!(stopped, want[..=first]);
    }
    distinct_total
}

#[test]
fn llama_greedy_kv_cache_equals_full_recompute() {
    let (model, tr) = tiny_llama(LLAMA_ALL, 0.5, 81);
    // the check is only meaningful if the continuations depend on the context
    assert!(check_greedy(&model, &tr) > 6, "degenerate generations");
}

/// `attention_bias` / `mlp_bias` load the projection biases (the model used to ignore both
/// flags and silently drop the biases); with them, the JVP, the chunked loss and the KV cache
/// stay exact.
#[test]
fn llama_projection_biases_are_loaded() {
    let bias_names = |taken: &[String], kind: &str| -> usize {
        taken
            .iter()
            .filter(|n| n.ends_with("_proj.bias") && n.contains(kind))
            .count()
    };
    let (_, _, taken) = tiny_llama_with(r#", "attention_bias": true"#, LLAMA_QV, 0.2, 85);
    assert_eq!(bias_names(&taken, ".self_attn."), 2 * 4);
    assert_eq!(bias_names(&taken, ".mlp."), 0);
    let extra = r#", "attention_bias": true, "mlp_bias": true"#;
    let (model, tr, taken) = tiny_llama_with(extra, LLAMA_ALL, 0.5, 85);
    assert_eq!(bias_names(&taken, ".self_attn."), 2 * 4);
    assert_eq!(bias_names(&taken, ".mlp."), 2 * 3);
    // the biases change the function (same weights otherwise: random tensors are keyed by name)
    let (plain, _) = tiny_llama(LLAMA_ALL, 0.5, 85);
    let ids = Array2::from_shape_vec((1, 4), vec![3u32, 1, 4, 1]).unwrap();
    let diff = (&model.last_logits(ids.view(), &tr).unwrap()
        - &plain.last_logits(ids.view(), &tr).unwrap())
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(diff > 1e-3, "biases have no effect");
    check_greedy(&model, &tr);
    let (model, tr, _) = tiny_llama_with(extra, LLAMA_ALL, 0.2, 86);
    llama_cases_on(&model, &tr, LLAMA_ALL, &[(Subset::All, 2)], 86);
}

// ---------------------------------------------------------------------------------------------
// Real MiniLM
// ---------------------------------------------------------------------------------------------

/// all-MiniLM-L6-v2 with LoRA r = 1, α = 1 on query and value (B random) and a 2-class head, on
/// two real sentences of different lengths (so one is padded).
///
/// - f64 (the f32 weights, adapters and directions cast exactly, so it is the same function):
///   JVP vs central differences with ε = 1e-6, to 1e-6 relative (the crate's FD protocol).
/// - f32: JVP vs the f64 JVP (f32 rounding only; measured ~2e-7, asserted ≤ 1e-4), and vs f32
///   central differences with a step h = 1e-2 along the unit direction. Tolerance 2e-2
///   relative, because the f32 difference quotient is itself inexact: each f32 loss carries
///   rounding noise of up to ~1e-6 absolute (ulps of a ~0.7 loss accumulated over 6 layers),
///   which 1/(2h) amplifies to ~5e-5; rounding θ + h·v/‖v‖ to f32 (perturbations ~1e-4 per entry
///   on weights ~0.05) bends the direction by ~1e-5 relative; the truncation error is
///   h²·L'''/6 ~ 1e-5·L'''. Against JVPs of ~0.3–0.6 that is ≲ 1e-3 relative: 2e-2 leaves a
///   ≥ 10× margin (measured: 2e-4, and the f32 FD is checked against the exact f64 JVP too).
#[test]
fn minilm_jvp_matches_finite_differences_f32_and_f64() {
    let dir = assets::asset("all-MiniLM-L6-v2/model.safetensors")
        .parent()
        .unwrap()
        .to_path_buf();
    let lora = LoraConfig::new(1, 1.0, 0.0, &["query", "value"]);
    let seed = 91;
    let (m32, mut tr32, tok) = load_bert_classifier_dir(
        &dir,
        &lora,
        2,
        seed,
        TokenizerOptions::default().with_max_len(64),
    )
    .unwrap();
    randomise_b(&mut tr32, seed, 0.05);
    let enc = tok
        .encode_batch(
            &[
                "A man is playing a guitar on the stage.",
                "What a lovely day!",
            ],
            true,
        )
        .unwrap();
    assert!(enc.mask.iter().any(|&m| !m), "the batch has padding");
    let batch = BertBatch {
        ids: enc.ids.clone(),
        type_ids: enc.type_ids.clone(),
        mask: enc.mask.clone(),
    };
    let labels = [1i64, 0];
    let k = 2;
    let all: Vec<usize> = (0..tr32.len()).collect();
    let key = StepKey {
        seed,
        round: 0,
        client: 0,
        step: 0,
    };
    let dirs32 = directions(&tr32, &all, k, key).unwrap();

    // f32: dual pass vs plain pass, then the JVP
    let plain32 = m32
        .forward(
            &batch,
            Some(&labels),
            &tr32,
            &Directions::none(tr32.len()),
            None,
        )
        .unwrap();
    let out32 = m32
        .forward(&batch, Some(&labels), &tr32, &dirs32, None)
        .unwrap();
    assert_eq!(plain32.logits, out32.logits);
    let ce32 = out32.loss.unwrap();
    assert_eq!(plain32.loss.unwrap().loss.to_bits(), ce32.loss.to_bits());
    let jvp32: Vec<f64> = ce32.jvp.unwrap().iter().map(|&v| v as f64).collect();

    // f32 central differences along the unit direction, step 1e-2
    let loss32 = |tr: &Trainable<f32>| {
        m32.forward(&batch, Some(&labels), tr, &Directions::none(tr.len()), None)
            .unwrap()
            .loss
            .unwrap()
            .loss as f64
    };
    let h = 1e-2;
    let fd32: Vec<f64> = (0..k)
        .map(|kk| {
            let v = flat_direction(&tr32, &dirs32, kk);
            let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
            let step = h / norm;
            let shifted = |sign: f64| {
                let mut t = tr32.clone();
                let mut off = 0;
                for i in 0..t.len() {
                    for x in t.value_mut(i).iter_mut() {
                        *x = (*x as f64 + sign * step * v[off]) as f32;
                        off += 1;
                    }
                }
                loss32(&t)
            };
            (shifted(1.0) - shifted(-1.0)) / (2.0 * step)
        })
        .collect();

    // f64: the same function (weights, adapters, head and directions cast exactly)
    let cfg = BertConfig::from_file(dir.join("config.json")).unwrap();
    let mut weights = load_safetensors(dir.join("model.safetensors")).unwrap();
    let (m64, _) = BertClassifier::<f64>::load(&cfg, &mut weights, &lora, 2, seed).unwrap();
    drop(weights);
    let tr64: Trainable<f64> = tr32.cast();
    let dirs64 = Directions::new(
        &tr64,
        k,
        dirs32
            .per_param()
            .iter()
            .map(|t| t.as_ref().map(|t| t.mapv(f64::from)))
            .collect(),
    )
    .unwrap();
    let (f64_err, _) = check_jvp("minilm f64", &tr64, &dirs64, |tr, dirs| {
        let ce = m64
            .forward(&batch, Some(&labels), tr, dirs, None)
            .unwrap()
            .loss
            .unwrap();
        (ce.loss, ce.jvp)
    });
    let ce64 = m64
        .forward(&batch, Some(&labels), &tr64, &dirs64, None)
        .unwrap()
        .loss
        .unwrap();
    let jvp64 = ce64.jvp.unwrap().to_vec();

    let loss_err = (ce32.loss as f64 - ce64.loss).abs() / ce64.loss.abs();
    let e32_vs_64 = rel_err(&jvp32, &jvp64);
    let e32_vs_fd = rel_err(&jvp32, &fd32);
    let fd32_vs_64 = rel_err(&fd32, &jvp64);
    eprintln!(
        "minilm: loss f32 {} vs f64 {} (rel {loss_err:.2e}); jvp f32 {jvp32:?}, f64 {jvp64:?}, \
         f32 FD {fd32:?}; f64 JVP vs f64 FD {f64_err:.2e}; f32 JVP vs f64 JVP {e32_vs_64:.2e}; \
         f32 JVP vs f32 FD {e32_vs_fd:.2e}; f32 FD vs f64 JVP {fd32_vs_64:.2e}",
        ce32.loss, ce64.loss
    );
    assert!(loss_err <= 1e-5, "f32 loss vs f64 loss: {loss_err:e}");
    assert!(e32_vs_64 <= 1e-4, "f32 JVP vs f64 JVP: {e32_vs_64:e}");
    assert!(e32_vs_fd <= 2e-2, "f32 JVP vs f32 FD: {e32_vs_fd:e}");
    assert!(fd32_vs_64 <= 2e-2, "f32 FD vs f64 JVP: {fd32_vs_64:e}");
}
