//! Your data in, a usable adapter out, on a tiny random BERT written as a real model folder
//! (`config.json`, `model.safetensors`, and MiniLM's `tokenizer.json`): a federated run of the
//! classification recipe on a generated 3-class file with string labels writes an adapter
//! folder; loading base + adapter through the classify path gives the very logits of the run's
//! final state, and the label names come back.

#[path = "common/assets.rs"]
mod assets;

use std::path::{Path, PathBuf};

use spry::federated::Simulation;
use spry::io::{BertConfig, save_safetensors};
use spry::models::WeightSource;
use spry::models::bert::{BertClassifier, ClassifierConfig};
use spry::models::pretrained::{
    class_probabilities, load_bert_classifier_dir, load_bert_classifier_with_adapter,
};
use spry::models::source::RandomWeights;
use spry::modules::{Directions, read_peft_config};
use spry::ndarray::ArrayD;
use spry::recipes::classification::{ClassificationRun, EvalSplit};

use spry::{Result, TokenizerOptions};

/// A scratch folder of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spry-clf-files-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Random weights that also keep what was taken, to be written out as a checkpoint.
struct Recording {
    inner: RandomWeights,
    taken: Vec<(String, ArrayD<f32>)>,
}

impl WeightSource for Recording {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        let t = self.inner.take(name, shape)?;
        self.taken.push((name.to_string(), t.clone()));
        Ok(t)
    }

    fn has(&self, name: &str) -> bool {
        self.inner.has(name)
    }
}

/// A BERT folder with random weights (2 layers, width 16) and MiniLM's vocabulary.
fn tiny_bert_dir(dir: &Path) {
    let vocab = 30522;
    let config = format!(
        r#"{{"model_type": "bert", "vocab_size": {vocab}, "hidden_size": 16,
        "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
        "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu",
        "layer_norm_eps": 1e-12}}"#
    );
    std::fs::write(dir.join("config.json"), &config).unwrap();
    let cfg = BertConfig::from_json(&config).unwrap();
    let mut src = Recording {
        inner: RandomWeights {
            seed: 3,
            scale: 0.3,
        },
        taken: Vec::new(),
    };
    let lora = spry::models::pretrained::no_lora();
    BertClassifier::<f32>::load(&cfg, &mut src, &lora, 2, 0).unwrap();
    let views: Vec<(&str, _)> = src
        .taken
        .iter()
        .map(|(n, t)| (n.as_str(), t.view()))
        .collect();
    save_safetensors(dir.join("model.safetensors"), &views, None).unwrap();
    std::fs::copy(
        assets::asset("all-MiniLM-L6-v2/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
}

/// 60 texts of three topics labelled by name, as CSV with quoted texts (commas inside).
fn write_topics(path: &Path) {
    let topics = [
        ("weather", "sunny, warm and bright weather"),
        ("storm", "rain, storm and cold wind"),
        ("markets", "stock market, \"\"price\"\""),
    ];
    let mut csv = String::from("text,label\n");
    for i in 0..60 {
        let (label, words) = topics[i % 3];
        csv.push_str(&format!("\"{words} on day {i}\",{label}\n"));
    }
    std::fs::write(path, csv).unwrap();
}

#[test]
fn a_trained_adapter_labels_texts_exactly_as_the_run_left_it() {
    let root = scratch("rt");
    let model_dir = root.join("tiny-bert");
    std::fs::create_dir_all(&model_dir).unwrap();
    tiny_bert_dir(&model_dir);
    let data = root.join("topics.csv");
    write_topics(&data);
    let run = ClassificationRun {
        model_dir: Some(model_dir.clone()),
        train: Some(data),
        // no test file: 20% of the file is held out as the test set, 10% of the rest as
        // validation
        eval: EvalSplit::Test,
        test_frac: 0.2,
        rounds: 2,
        clients: 6,
        per_round: 3,
        eval_every: 1,
        diagnostics: false,
        personalize_clients: 0,
        time_budget_s: 0.0,
        lora_layers: Some("1".into()),
        max_len: 16,
        ..ClassificationRun::default()
    };
    let out = root.join("run");
    let outcome = run.run(&out, false, |_| {}).unwrap();
    assert_eq!(outcome.history.len(), 2);
    // 60 rows: 12 test, 48 → 5 validation (held out, unused here) and 43 training examples
    let summary = &outcome.summary;
    assert_eq!(summary["eval_split"], "test");
    assert!(summary["final_test_accuracy"].as_f64().is_some());
    for f in [
        "config.json",
        "metrics.csv",
        "summary.json",
        "checkpoint.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "adapter/classifier_config.json",
        "adapter-best/classifier_config.json",
    ] {
        assert!(out.join(f).is_file(), "{f} missing");
    }

    // the run's final state, rebuilt from its checkpoint: the in-memory model
    let ckpt = Simulation::<f32>::load_checkpoint(&out.join("checkpoint.json")).unwrap();
    let lora = run.lora_config(2).unwrap();
    let opts = TokenizerOptions::default().with_max_len(16);
    let (model, initial, tok) = load_bert_classifier_dir(&model_dir, &lora, 3, 0, opts).unwrap();
    let sim = Simulation::resume(&ckpt.config.clone(), initial, ckpt).unwrap();
    let texts = [
        "rain and wind today",
        "the stock price fell",
        "a bright warm day",
    ];
    let want = class_probabilities(&model, &sim.global, &tok, &texts, 2).unwrap();

    // base + adapter through the classify path
    let adapter = out.join("adapter");
    assert_eq!(
        read_peft_config(&adapter).unwrap().modules_to_save,
        Some(vec!["classifier".to_string()])
    );
    let (m2, p2, tok2, config) = load_bert_classifier_with_adapter(&model_dir, &adapter).unwrap();
    let got = class_probabilities(&m2, &p2, &tok2, &texts, 3).unwrap();
    assert_eq!(
        got, want,
        "reloaded classifier differs from the run's state"
    );
    // the classes are the file's names, sorted
    assert_eq!(
        (config.label(0), config.label(1), config.label(2)),
        ("markets".into(), "storm".into(), "weather".into())
    );
    assert_eq!(config.max_len, Some(16));
    // the adapters moved in training: the head is not all there is
    let none = Directions::none(p2.len());
    let b = spry::models::bert::BertBatch::from(tok2.encode_batch(&texts, true).unwrap());
    let fresh = load_bert_classifier_dir(&model_dir, &lora, 3, 0, TokenizerOptions::default())
        .unwrap()
        .1;
    let moved = p2
        .names()
        .iter()
        .zip(p2.values().iter().zip(fresh.values()))
        .any(|(n, (a, b))| n.contains("lora_B") && a != b);
    assert!(moved, "no LoRA B moved");
    assert!(m2.forward(&b, None, &p2, &none, None).is_ok());
    let _ = ClassifierConfig::load(&adapter).unwrap();
}
