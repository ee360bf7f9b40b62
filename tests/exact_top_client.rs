//! Federated training with exact top layers: a `ClassificationTask` over a tiny random BERT
//! (f32, an in-memory word-level tokenizer) whose top layer's adapters are reversed locally
//! (`BertClassifier::with_exact_top_layers`).
//!
//! - one local step: the top layer's tensors are not perturbed and step on their exact
//!   gradient with the adapters' optimizer, the lower adapters on the forward-gradient estimate
//!   of directions on them alone, the head on its exact gradient with the head's optimizer —
//!   whatever `head_grad` says about the head, the top layer stays exact;
//! - with one client per round, per-iteration mode (the server replays the directions and
//!   averages the uploaded exact gradients) ends where per-epoch mode does, and its uploads and
//!   broadcasts carry the top layer's gradients;
//! - FedMeZO ignores the option (it perturbs everything it is assigned).

use std::str::FromStr;

use ndarray::ArrayD;
use spry::data::{Example, PartitionScheme};
use spry::federated::comm;
use spry::federated::{
    ClientConfig, CommMode, Estimate, EstimatorConfig, FederatedTask, HeadGrad, LocalOptimizer,
    Method, Objective, OptimizerState, Perturbation, PlannerKind, ServerOptimizer, SimConfig,
    Simulation, StepKey, directions_with, forward_gradient, train_local, train_local_mezo,
};
use spry::io::BertConfig;
use spry::models::bert::{BertBatch, BertClassifier, ClassifierOutput, Pooling};
use spry::models::source::RandomWeights;
use spry::modules::{Directions, DropoutKey, LoraConfig, Trainable};
use spry::rng::{Domain, KeyedRng};
use spry::tasks::{ClassificationTask, TextClassifier};
use spry::{TextTokenizer, TokenizerOptions};

const WORDS: [&str; 12] = [
    "good", "bad", "fine", "awful", "great", "poor", "movie", "plot", "actor", "scene", "very",
    "not",
];

fn tokenizer() -> TextTokenizer {
    let mut vocab = vec![r#""[PAD]": 0"#.to_string(), r#""[UNK]": 1"#.to_string()];
    vocab.extend(
        WORDS
            .iter()
            .enumerate()
            .map(|(i, w)| format!(r#""{w}": {}"#, i + 2)),
    );
    let json = format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": {{"type": "Whitespace"}},
            "post_processor": null, "decoder": null,
            "model": {{"type": "WordLevel", "vocab": {{{}}}, "unk_token": "[UNK]"}}}}"#,
        vocab.join(", ")
    );
    let inner = tokenizers::Tokenizer::from_str(&json).unwrap();
    TextTokenizer::from_tokenizer(inner, TokenizerOptions::default().with_max_len(8)).unwrap()
}

/// Sentences of 2 to 8 random words; the label is which of the first six words comes first.
fn examples(n: usize, seed: u64) -> Vec<Example> {
    let mut r = KeyedRng::new(seed, Domain::Data, &[0xE]);
    (0..n)
        .map(|_| {
            let len = 2 + r.below(7) as usize;
            let words: Vec<&str> = (0..len).map(|_| WORDS[r.below(12) as usize]).collect();
            let label = words
                .iter()
                .find_map(|w| WORDS[..6].iter().position(|x| x == w))
                .map_or(2, |i| i % 2);
            Example::new(words.join(" "), label)
        })
        .collect()
}

/// A 3-layer BERT (hidden 16) with rank-2 adapters on query and value of every layer, B random,
/// mean pooling, the top layer reversed.
fn model() -> (BertClassifier<f32>, Trainable<f32>) {
    let cfg = BertConfig::from_json(
        r#"{"vocab_size": 16, "hidden_size": 16, "num_hidden_layers": 3,
            "num_attention_heads": 4, "intermediate_size": 32,
            "max_position_embeddings": 8, "type_vocab_size": 2}"#,
    )
    .unwrap();
    let lora = LoraConfig::new(2, 4.0, 0.0, &["query", "value"]);
    let mut src = RandomWeights {
        seed: 3,
        scale: 0.3,
    };
    let (model, mut tr) = BertClassifier::<f32>::load(&cfg, &mut src, &lora, 3, 3).unwrap();
    let mut r = KeyedRng::new(3, Domain::Init, &[0xB]);
    for i in 0..tr.len() {
        if tr.names()[i].ends_with("lora_B.weight") {
            let v = tr.value(i).mapv(|_| (0.3 * r.normal()) as f32);
            tr.set_value(i, v).unwrap();
        }
    }
    (
        model.with_pooling(Pooling::Mean).with_exact_top_layers(1),
        tr,
    )
}

fn client_config(head_grad: HeadGrad) -> ClientConfig {
    ClientConfig {
        k: 3,
        optimizer: LocalOptimizer::sgd(0.1),
        head_optimizer: Some(LocalOptimizer::sgd(0.5)),
        head_grad,
        dropout: false,
        perturbation: Perturbation::All,
        ..ClientConfig::default()
    }
}

fn max_diff(a: &ArrayD<f32>, b: &ArrayD<f32>) -> f32 {
    a.iter()
        .zip(b.iter())
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

#[test]
fn a_client_trains_the_top_layer_on_its_exact_gradient() {
    let (model, initial) = model();
    let tok = tokenizer();
    let task = ClassificationTask::new(
        &model,
        &tok,
        examples(40, 1),
        examples(10, 2),
        &PartitionScheme::Iid,
        2,
        5,
    )
    .unwrap();
    let top = Objective::backprop_params(&task);
    assert_eq!(top, model.backprop_params());
    assert_eq!(top.len(), 4, "A and B of query and value of the top layer");
    let (hw, hb) = model.head_params();
    let batch = task.train_batches(0, 0, 8).unwrap().remove(0);
    let all: Vec<usize> = (0..initial.len()).collect();
    let key = StepKey {
        seed: 9,
        round: 0,
        client: 0,
        step: 0,
    };
    for head_grad in [HeadGrad::Exact, HeadGrad::Forward] {
        let cfg = client_config(head_grad);
        let mut params = initial.clone();
        let mut state = OptimizerState::new(params.len());
        let rep = train_local(
            &task,
            &mut params,
            &all,
            std::slice::from_ref(&batch),
            &cfg,
            &mut state,
            key,
        )
        .unwrap();
        assert_eq!((rep.steps, rep.skipped), (1, 0));

        // what the step must have been: directions on every tensor but the exact ones
        let head = if head_grad == HeadGrad::Exact {
            vec![hw, hb]
        } else {
            vec![]
        };
        let perturbed: Vec<usize> = all
            .iter()
            .copied()
            .filter(|p| !top.contains(p) && !head.contains(p))
            .collect();
        let dirs = directions_with(&initial, &perturbed, cfg.k, key, cfg.directions).unwrap();
        let exact_for: Vec<usize> = top.iter().chain(&head).copied().collect();
        let out = task
            .loss_jvp(&batch, &initial, &dirs, None, &exact_for)
            .unwrap();
        let Estimate::Gradient(mut grads) = forward_gradient(
            out.jvp.unwrap().as_slice().unwrap(),
            &dirs,
            &EstimatorConfig::default(),
        )
        .unwrap() else {
            panic!("non-finite JVP");
        };
        assert_eq!(out.exact.len(), exact_for.len());
        for (p, g) in out.exact {
            assert!(grads[p].is_none(), "tensor {p} both perturbed and exact");
            grads[p] = Some(g);
        }
        // the top layer's gradient is the model's reverse pass (BertClassifier::forward_with_exact)
        let direct = model
            .forward_with_exact(
                &batch.input,
                Some(&batch.labels),
                &initial,
                &Directions::none(initial.len()),
                None,
                &top,
            )
            .unwrap()
            .exact;
        for (p, g) in &direct {
            assert_eq!(grads[*p].as_ref().unwrap(), g, "tensor {p}");
        }
        for (p, g) in grads.iter().enumerate() {
            // the head's optimizer group is the head's whichever way its gradient is obtained;
            // the reversed top layer steps with the adapters'
            let lr = if p == hw || p == hb { 0.5 } else { 0.1 };
            let g = g.as_ref().unwrap();
            let want = initial.value(p) - &g.mapv(|v| v * lr);
            let d = max_diff(params.value(p), &want);
            assert!(
                d <= 1e-6,
                "{head_grad:?}: tensor {p} ({}) stepped {d} away from its expected update",
                initial.names()[p]
            );
            assert!(
                params.value(p) != initial.value(p),
                "tensor {p} did not move"
            );
        }
    }
    // under `b-only` the top layer's lora_A stays at its initialisation like every other A,
    // and its lora_B still steps on the exact gradient
    let cfg = ClientConfig {
        perturbation: Perturbation::LoraBOnly,
        ..client_config(HeadGrad::Exact)
    };
    // (B non-zero, so that A has a non-zero gradient to ignore)
    let mut start = initial.clone();
    for p in &top {
        if start.names()[*p].contains("lora_B") {
            let b = start.value(*p).mapv(|_| 0.1f32);
            start.set_value(*p, b).unwrap();
        }
    }
    let mut params = start.clone();
    let mut state = OptimizerState::new(params.len());
    train_local(
        &task,
        &mut params,
        &all,
        std::slice::from_ref(&batch),
        &cfg,
        &mut state,
        key,
    )
    .unwrap();
    for p in &top {
        let is_a = start.names()[*p].contains("lora_A");
        assert_eq!(
            params.value(*p) == start.value(*p),
            is_a,
            "{}: b-only must train B and leave A",
            start.names()[*p]
        );
    }
    // FedMeZO perturbs everything assigned, the top layer too (no exact gradients asked)
    let mut params = initial.clone();
    let mut state = OptimizerState::new(params.len());
    let cfg = ClientConfig {
        zo_eps: 1e-2,
        ..client_config(HeadGrad::Exact)
    };
    train_local_mezo(
        &task,
        &mut params,
        &all,
        std::slice::from_ref(&batch),
        &cfg,
        &mut state,
        key,
    )
    .unwrap();
    for p in &top {
        assert!(params.value(*p) != initial.value(*p));
    }
}

fn sim_config(comm: CommMode, head_grad: HeadGrad) -> SimConfig {
    SimConfig {
        method: Method::Spry,
        clients_per_round: 1,
        rounds: 2,
        batch_size: 4,
        comm,
        planner: PlannerKind::Reference,
        server: ServerOptimizer::fedavg(),
        client: client_config(head_grad),
        seed: 21,
        eval_every: 100,
        workers: 1,
        ..SimConfig::default()
    }
}

/// With one client per round, per-iteration mode replays that client's local training exactly:
/// the same directions, the same exact gradients of the top layer (and head), the same
/// optimizer groups; both modes end at the same weights, and per-iteration uploads and
/// broadcasts the top layer's gradients every step.
#[test]
fn per_iteration_with_exact_top_layers_equals_per_epoch() {
    let (model, initial) = model();
    let tok = tokenizer();
    let task = ClassificationTask::new(
        &model,
        &tok,
        examples(40, 1),
        examples(10, 2),
        &PartitionScheme::Iid,
        2,
        5,
    )
    .unwrap();
    let top = model.backprop_params();
    let top_len: usize = top.iter().map(|&p| initial.value(p).len()).sum();
    for head_grad in [HeadGrad::Exact, HeadGrad::Forward] {
        let run = |comm| {
            let mut sim = Simulation::new(sim_config(comm, head_grad), initial.clone()).unwrap();
            sim.run(&task, None, |_| true).unwrap();
            sim
        };
        let (iteration, epoch) = (run(CommMode::PerIteration), run(CommMode::PerEpoch));
        for p in 0..initial.len() {
            let (a, b) = (iteration.global.value(p), epoch.global.value(p));
            let scale = 1.0 + b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = max_diff(a, b);
            assert!(
                d <= 1e-5 * scale,
                "{head_grad:?}: tensor {p} ({}): per-iteration vs per-epoch differ by {d}",
                initial.names()[p]
            );
            assert!(
                a != initial.value(p),
                "{head_grad:?}: tensor {p} did not move"
            );
        }
        // per step: K scalars, plus the exact gradients (the head's too when exact), up and down
        let head_len = if head_grad == HeadGrad::Exact {
            initial.value(model.head_params().0).len() + initial.value(model.head_params().1).len()
        } else {
            0
        };
        let n_t = top.len() + if head_len > 0 { 2 } else { 0 };
        let per_step = comm::upload_jvps(3) + comm::upload_gradients(top_len + head_len, n_t);
        let down_exact = comm::upload_gradients(top_len + head_len, n_t);
        for (r, m) in iteration.history.iter().enumerate() {
            let client = iteration.sample_clients(r as u64, 2).0[0] as usize;
            let steps = task.train_batches(client, r as u64, 4).unwrap().len() as u64;
            assert_eq!(m.bytes.up, steps * per_step, "round {}", m.round);
            let model_down = comm::download_model(initial.n_scalars());
            assert_eq!(
                m.bytes.down,
                model_down + steps * (comm::broadcast_jvps(3, 1) + down_exact),
                "round {}",
                m.round
            );
        }
    }
}

/// A user's model that lists tensors it can reverse but returns no gradient for them.
struct Forgetful<'a>(&'a BertClassifier<f32>);

impl TextClassifier for Forgetful<'_> {
    type Input = BertBatch;
    fn classify(
        &self,
        input: &BertBatch,
        labels: Option<&[i64]>,
        params: &Trainable<f32>,
        dirs: &Directions<f32>,
        dropout: Option<&DropoutKey>,
    ) -> spry::Result<ClassifierOutput<f32>> {
        self.0.forward(input, labels, params, dirs, dropout)
    }
    fn head_params(&self) -> (usize, usize) {
        self.0.head_params()
    }
    fn backprop_params(&self) -> Vec<usize> {
        self.0.backprop_params()
    }
}

#[test]
fn a_model_that_returns_no_exact_gradient_it_lists_is_a_typed_error() {
    let (model, params) = model();
    let tok = tokenizer();
    let user = Forgetful(&model);
    let task = ClassificationTask::new(
        &user,
        &tok,
        examples(20, 1),
        examples(5, 2),
        &PartitionScheme::Iid,
        1,
        5,
    )
    .unwrap();
    let batch = task.train_batches(0, 0, 4).unwrap().remove(0);
    let none = Directions::none(params.len());
    let top = model.backprop_params();
    assert!(matches!(
        task.loss_jvp(&batch, &params, &none, None, &top),
        Err(spry::Error::InvalidArgument { .. })
    ));
    // asking for nothing of it is fine
    assert!(task.loss_jvp(&batch, &params, &none, None, &[]).is_ok());
}
