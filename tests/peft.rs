//! PEFT adapter files: save → load round trips on small random BERT classifiers and Llamas
//! (bit-identical values, identical forward outputs), the exact file layout PEFT uses, every
//! error case (and the registry left untouched by each), and merging adapters into the weights.

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{Array2, ArrayD, IxDyn, array};
use serde_json::{Value, json};
use spry::Error;
use spry::io::{BertConfig, LlamaConfig, load_safetensors, save_safetensors};
use spry::models::bert::{BertBatch, BertClassifier};
use spry::models::llama::Llama;
use spry::models::source::RandomWeights;
use spry::modules::peft::{
    ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE, canonical_peft_name, modules_to_save,
};
use spry::modules::{
    Directions, LoraConfig, Trainable, load_peft_adapter, load_peft_tensors, read_peft_config,
    save_peft_adapter,
};
use spry::rng::{Domain, KeyedRng};

#[path = "common/temp_file.rs"]
mod temp_file;
use temp_file::TempDir;

// ---- fixtures ------------------------------------------------------------------------------

const BERT_JSON: &str = r#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}"#;

const LLAMA_JSON: &str = r#"{"vocab_size": 64, "hidden_size": 16, "intermediate_size": 24,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "max_position_embeddings": 32, "tie_word_embeddings": false}"#;

/// Frozen weights of every test model (the same for every registry seed).
fn weights() -> RandomWeights {
    RandomWeights {
        seed: 7,
        scale: 0.2,
    }
}

fn bert_lora(r: usize, alpha: f64, targets: &[&str]) -> LoraConfig {
    LoraConfig {
        task_type: Some("SEQ_CLS".into()),
        ..LoraConfig::new(r, alpha, 0.0, targets)
    }
}

fn classifier(lora: &LoraConfig, seed: u64) -> (BertClassifier<f32>, Trainable<f32>) {
    let cfg = BertConfig::from_json(BERT_JSON).unwrap();
    BertClassifier::load(&cfg, &mut weights(), lora, 3, seed).unwrap()
}

fn llama(lora: &LoraConfig, seed: u64) -> (Llama<f32>, Trainable<f32>) {
    let cfg = LlamaConfig::from_json(LLAMA_JSON).unwrap();
    let mut t = Trainable::new();
    let m = Llama::load(&cfg, &mut weights(), lora, seed, &mut t).unwrap();
    (m, t)
}

/// Every value replaced by `N(0, 0.3²)` draws: non-zero adapters (B starts at zero otherwise).
fn randomize(t: &mut Trainable<f32>, seed: u64) {
    let mut rng = KeyedRng::new(seed, Domain::Init, &[999]);
    for i in 0..t.len() {
        t.value_mut(i).mapv_inplace(|_| (0.3 * rng.normal()) as f32);
    }
}

fn bert_batch() -> BertBatch {
    let ids = array![[2u32, 17, 5, 33, 9, 3], [2, 41, 8, 3, 0, 0]];
    let mask = ids.mapv(|v| v != 0);
    BertBatch::new(ids, mask).unwrap()
}

fn bert_logits(m: &BertClassifier<f32>, t: &Trainable<f32>) -> Array2<f32> {
    m.forward(&bert_batch(), None, t, &Directions::none(t.len()), None)
        .unwrap()
        .logits
}

fn llama_ids() -> Array2<u32> {
    array![[1u32, 12, 40, 7, 63, 5, 22], [1, 3, 3, 50, 9, 18, 2]]
}

/// Last-position logits and the mean next-token loss.
fn llama_outputs(m: &Llama<f32>, t: &Trainable<f32>) -> (Array2<f32>, f32) {
    let ids = llama_ids();
    let logits = m.last_logits(ids.view(), t).unwrap();
    let labels = ids.mapv(|v| v as i64);
    let loss = m
        .loss(
            ids.view(),
            labels.view(),
            None,
            t,
            &Directions::none(t.len()),
            None,
        )
        .unwrap()
        .loss;
    (logits, loss)
}

fn bits(t: &Trainable<f32>) -> Vec<Vec<u32>> {
    t.values()
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

fn max_abs_diff(a: &Array2<f32>, b: &Array2<f32>) -> f32 {
    assert_eq!(a.shape(), b.shape());
    a.iter()
        .zip(b)
        .fold(0.0f32, |m, (x, y)| m.max((x - y).abs()))
}

/// A saved BERT-classifier adapter (query/value, r = 2, α = 4, random non-zero values) and the
/// model and registry it came from.
fn saved_bert(name: &str) -> (TempDir, BertClassifier<f32>, Trainable<f32>, LoraConfig) {
    let dir = TempDir::new(name);
    let lora = bert_lora(2, 4.0, &["query", "value"]);
    let (m, mut t) = classifier(&lora, 1);
    randomize(&mut t, 11);
    save_peft_adapter(dir.path(), &lora, &t).unwrap();
    (dir, m, t, lora)
}

/// A fresh registry for the same model as [`saved_bert`] (different initial values).
fn fresh_bert_registry(lora: &LoraConfig) -> Trainable<f32> {
    classifier(lora, 2).1
}

/// The adapter file's tensors, by name.
fn read_tensors(dir: &Path) -> BTreeMap<String, ArrayD<f32>> {
    let w = load_safetensors(dir.join(ADAPTER_WEIGHTS_FILE)).unwrap();
    w.iter()
        .map(|(n, v)| (n.to_string(), v.to_owned()))
        .collect()
}

fn write_tensors(dir: &Path, tensors: &BTreeMap<String, ArrayD<f32>>) {
    let views: Vec<(&str, _)> = tensors
        .iter()
        .map(|(n, v)| (n.as_str(), v.view()))
        .collect();
    save_safetensors(dir.join(ADAPTER_WEIGHTS_FILE), &views, None).unwrap();
}

fn edit_tensors(dir: &Path, f: impl FnOnce(&mut BTreeMap<String, ArrayD<f32>>)) {
    let mut t = read_tensors(dir);
    f(&mut t);
    write_tensors(dir, &t);
}

fn read_config_json(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join(ADAPTER_CONFIG_FILE)).unwrap()).unwrap()
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Map<String, Value>)) {
    let mut v = read_config_json(dir);
    f(v.as_object_mut().unwrap());
    std::fs::write(dir.join(ADAPTER_CONFIG_FILE), v.to_string()).unwrap();
}

/// The error of loading `dir` into a fresh registry, after checking the registry is untouched.
fn load_err(dir: &Path, lora: &LoraConfig) -> Error {
    let mut t = fresh_bert_registry(lora);
    let before = t.clone();
    let err = load_peft_tensors(dir, &mut t).unwrap_err();
    assert_eq!(t, before, "a failed load changed the registry ({err})");
    err
}

/// The raw JSON header of a safetensors file.
fn safetensors_header(path: &Path) -> serde_json::Map<String, Value> {
    let bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let v: Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    v.as_object().unwrap().clone()
}

// ---- round trips ---------------------------------------------------------------------------

#[test]
fn bert_classifier_round_trip_is_bit_identical_with_the_same_logits() {
    let (dir, m1, t1, lora) = saved_bert("bert-rt");
    let (m2, mut t2) = classifier(&lora, 2);
    assert_ne!(
        bits(&t1),
        bits(&t2),
        "the fresh registry must start different"
    );
    let cfg = load_peft_tensors(dir.path(), &mut t2).unwrap();
    assert_eq!(t2.names(), t1.names());
    assert_eq!(bits(&t2), bits(&t1));
    assert_eq!(bert_logits(&m2, &t2), bert_logits(&m1, &t1));
    assert_eq!(
        cfg,
        LoraConfig {
            inference_mode: true,
            modules_to_save: Some(vec!["classifier".into()]),
            ..lora.clone()
        }
    );
    // the checked variant accepts the model's own config
    let mut t3 = fresh_bert_registry(&lora);
    load_peft_adapter(dir.path(), m2.bert().lora(), &mut t3).unwrap();
    assert_eq!(bits(&t3), bits(&t1));
}

#[test]
fn adapters_on_some_layers_reload_from_their_own_config() {
    // adapters on layer 1 only: the saved config must describe exactly those modules, so a model
    // built from it has the same registry and takes the tensors (PEFT reads it the same way)
    let lora = LoraConfig {
        layers_to_transform: Some(vec![1]),
        ..bert_lora(2, 4.0, &["query", "value"])
    };
    let (m1, mut t1) = classifier(&lora, 1);
    randomize(&mut t1, 5);
    let dir = TempDir::new("layer-subset");
    save_peft_adapter(dir.path(), &lora, &t1).unwrap();
    let cfg = read_peft_config(dir.path()).unwrap();
    assert_eq!(cfg.layers_to_transform, None);
    assert_eq!(
        cfg.target_modules,
        vec![
            "encoder.layer.1.attention.self.query".to_string(),
            "encoder.layer.1.attention.self.value".to_string()
        ]
    );
    let (m2, mut t2) = classifier(&cfg, 2);
    assert_eq!(t2.names(), t1.names());
    load_peft_adapter(dir.path(), m2.bert().lora(), &mut t2).unwrap();
    assert_eq!(bits(&t2), bits(&t1));
    assert_eq!(bert_logits(&m2, &t2), bert_logits(&m1, &t1));
}

#[test]
fn llama_round_trip_is_bit_identical_with_the_same_outputs() {
    let dir = TempDir::new("llama-rt");
    let lora = LoraConfig {
        task_type: Some("CAUSAL_LM".into()),
        ..LoraConfig::new(4, 8.0, 0.05, &["q_proj", "v_proj"])
    };
    let (m1, mut t1) = llama(&lora, 1);
    randomize(&mut t1, 12);
    save_peft_adapter(dir.path(), &lora, &t1).unwrap();
    let (m2, mut t2) = llama(&lora, 2);
    let cfg = load_peft_adapter(dir.path(), m2.lora(), &mut t2).unwrap();
    assert_eq!(bits(&t2), bits(&t1));
    assert_eq!(llama_outputs(&m2, &t2), llama_outputs(&m1, &t1));
    assert_eq!(cfg.modules_to_save, None);
    assert_eq!(cfg.target_modules, ["q_proj", "v_proj"]);
    assert!(cfg.inference_mode);
    assert_eq!(cfg.lora_dropout, 0.05);
}

#[test]
fn f64_registries_round_trip_through_f32() {
    let dir = TempDir::new("f64");
    let cfg = LlamaConfig::from_json(LLAMA_JSON).unwrap();
    let lora = LoraConfig::new(2, 2.0, 0.0, &["v_proj"]);
    let mut t = Trainable::<f64>::new();
    Llama::<f64>::load(&cfg, &mut weights(), &lora, 1, &mut t).unwrap();
    save_peft_adapter(dir.path(), &lora, &t).unwrap();
    let mut u = Trainable::<f64>::new();
    Llama::<f64>::load(&cfg, &mut weights(), &lora, 2, &mut u).unwrap();
    load_peft_tensors(dir.path(), &mut u).unwrap();
    for (a, b) in t.values().iter().zip(u.values()) {
        for (x, y) in a.iter().zip(b) {
            assert_eq!(*y, *x as f32 as f64);
        }
    }
}

// ---- the files are PEFT's ------------------------------------------------------------------

#[test]
fn bert_adapter_files_use_pefts_names_fields_and_dtype() {
    let (dir, _, t, _) = saved_bert("bert-layout");
    let mut want = Vec::new();
    for l in 0..2 {
        for m in ["query", "value"] {
            for f in ["A", "B"] {
                want.push(format!(
                    "base_model.model.bert.encoder.layer.{l}.attention.self.{m}.lora_{f}.weight"
                ));
            }
        }
    }
    want.push("base_model.model.classifier.weight".into());
    want.push("base_model.model.classifier.bias".into());
    assert_eq!(t.names(), want.as_slice(), "registry order");

    let header = safetensors_header(&dir.path().join(ADAPTER_WEIGHTS_FILE));
    assert_eq!(header["__metadata__"], json!({"format": "pt"}));
    let mut keys: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    keys.sort();
    let mut want_sorted: Vec<&String> = want.iter().collect();
    want_sorted.sort();
    assert_eq!(keys, want_sorted);
    for (k, v) in &header {
        if k != "__metadata__" {
            assert_eq!(v["dtype"], "F32", "{k}");
        }
    }
    assert_eq!(
        header["base_model.model.bert.encoder.layer.1.attention.self.value.lora_A.weight"]["shape"],
        json!([2, 16])
    );
    assert_eq!(
        header["base_model.model.bert.encoder.layer.1.attention.self.value.lora_B.weight"]["shape"],
        json!([16, 2])
    );
    assert_eq!(
        header["base_model.model.classifier.weight"]["shape"],
        json!([3, 16])
    );

    let cfg = read_config_json(dir.path());
    for (k, v) in [
        ("peft_type", json!("LORA")),
        ("r", json!(2)),
        ("lora_alpha", json!(4.0)),
        ("lora_dropout", json!(0.0)),
        ("target_modules", json!(["query", "value"])),
        ("modules_to_save", json!(["classifier"])),
        ("task_type", json!("SEQ_CLS")),
        ("bias", json!("none")),
        ("fan_in_fan_out", json!(false)),
        ("inference_mode", json!(true)),
        ("use_rslora", json!(false)),
        ("use_dora", json!(false)),
        ("rank_pattern", json!({})),
        ("alpha_pattern", json!({})),
        ("layers_to_transform", Value::Null),
        ("base_model_name_or_path", Value::Null),
    ] {
        assert_eq!(cfg[k], v, "field {k}");
    }
    assert_eq!(modules_to_save(&t), ["classifier"]);
}

#[test]
fn llama_adapter_keys_are_pefts() {
    let dir = TempDir::new("llama-layout");
    let lora = LoraConfig::new(1, 1.0, 0.0, &["q_proj", "v_proj"]);
    let (_, t) = llama(&lora, 1);
    save_peft_adapter(dir.path(), &lora, &t).unwrap();
    let keys: Vec<String> = read_tensors(dir.path()).into_keys().collect();
    let mut want = Vec::new();
    for l in 0..2 {
        for m in ["q_proj", "v_proj"] {
            for f in ["A", "B"] {
                want.push(format!(
                    "base_model.model.model.layers.{l}.self_attn.{m}.lora_{f}.weight"
                ));
            }
        }
    }
    want.sort();
    assert_eq!(keys, want);
    assert_eq!(read_config_json(dir.path())["modules_to_save"], Value::Null);
}

#[test]
fn a_config_as_peft_writes_it_is_read() {
    // adapter_config.json as PEFT 0.1x writes it: every field, α an integer, targets in set order
    let (dir, _, t1, lora) = saved_bert("peft-config");
    let peft = json!({
        "alpha_pattern": {}, "auto_mapping": null,
        "base_model_name_or_path": "sentence-transformers/all-MiniLM-L6-v2", "bias": "none",
        "corda_config": null, "eva_config": null, "exclude_modules": null,
        "fan_in_fan_out": false, "inference_mode": true, "init_lora_weights": true,
        "layer_replication": null, "layers_pattern": null, "layers_to_transform": null,
        "loftq_config": {}, "lora_alpha": 4, "lora_bias": false, "lora_dropout": 0.1,
        "megatron_config": null, "megatron_core": "megatron.core",
        "modules_to_save": ["classifier", "score"], "peft_type": "LORA", "r": 2,
        "rank_pattern": {}, "revision": null, "target_modules": ["value", "query"],
        "target_parameters": null, "task_type": "SEQ_CLS", "trainable_token_indices": null,
        "use_dora": false, "use_rslora": false
    });
    std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), peft.to_string()).unwrap();
    let mut t = fresh_bert_registry(&lora);
    let cfg = load_peft_adapter(dir.path(), &lora, &mut t).unwrap();
    assert_eq!(bits(&t), bits(&t1));
    assert_eq!(cfg.lora_alpha, 4.0);
    assert_eq!(cfg.target_modules, ["value", "query"]);
    assert_eq!(
        cfg.base_model_name_or_path.as_deref(),
        Some("sentence-transformers/all-MiniLM-L6-v2")
    );
}

#[test]
fn keys_with_the_adapter_name_are_accepted() {
    let (dir, _, t1, lora) = saved_bert("adapter-name");
    edit_tensors(dir.path(), |m| {
        let old = std::mem::take(m);
        for (k, v) in old {
            let k = k
                .replace(".lora_A.weight", ".lora_A.default.weight")
                .replace(".lora_B.weight", ".lora_B.my_task.weight")
                .replace("classifier.", "classifier.modules_to_save.default.");
            m.insert(k, v);
        }
    });
    assert!(
        read_tensors(dir.path())
            .contains_key("base_model.model.classifier.modules_to_save.default.weight")
    );
    let mut t = fresh_bert_registry(&lora);
    load_peft_tensors(dir.path(), &mut t).unwrap();
    assert_eq!(bits(&t), bits(&t1));
    assert_eq!(
        canonical_peft_name("base_model.model.x.q_proj.lora_A.default.weight"),
        "base_model.model.x.q_proj.lora_A.weight"
    );
    assert_eq!(
        canonical_peft_name("base_model.model.x.q_proj.lora_B.weight"),
        "base_model.model.x.q_proj.lora_B.weight"
    );
}

// ---- errors --------------------------------------------------------------------------------

#[test]
fn missing_files_are_io_errors_naming_the_file() {
    let dir = TempDir::new("missing-files");
    let lora = bert_lora(2, 4.0, &["query", "value"]);
    match load_err(dir.path(), &lora) {
        Error::Io { path, .. } => assert!(path.ends_with(ADAPTER_CONFIG_FILE)),
        e => panic!("{e}"),
    }
    let (dir, _, _, lora) = saved_bert("missing-weights");
    std::fs::remove_file(dir.path().join(ADAPTER_WEIGHTS_FILE)).unwrap();
    match load_err(dir.path(), &lora) {
        Error::Io { path, .. } => assert!(path.ends_with(ADAPTER_WEIGHTS_FILE)),
        e => panic!("{e}"),
    }
}

#[test]
fn a_missing_tensor_is_named() {
    let (dir, _, _, lora) = saved_bert("missing-tensor");
    let gone = "base_model.model.bert.encoder.layer.1.attention.self.query.lora_B.weight";
    edit_tensors(dir.path(), |m| {
        m.remove(gone).unwrap();
    });
    match load_err(dir.path(), &lora) {
        Error::MissingTensor { path, name } => {
            assert!(path.ends_with(ADAPTER_WEIGHTS_FILE));
            assert_eq!(name, gone);
        }
        e => panic!("{e}"),
    }
    // a classifier adapter without its head
    let (dir, _, _, lora) = saved_bert("missing-head");
    edit_tensors(dir.path(), |m| {
        m.retain(|k, _| !k.contains("classifier"));
    });
    match load_err(dir.path(), &lora) {
        Error::MissingTensor { name, .. } => {
            assert_eq!(name, "base_model.model.classifier.weight")
        }
        e => panic!("{e}"),
    }
}

#[test]
fn a_mis_shaped_tensor_is_named_with_both_shapes() {
    let (dir, _, _, lora) = saved_bert("bad-shape");
    let name = "base_model.model.classifier.weight";
    edit_tensors(dir.path(), |m| {
        m.insert(name.into(), ArrayD::zeros(IxDyn(&[2, 16])));
    });
    match load_err(dir.path(), &lora) {
        Error::TensorShape {
            path,
            name: n,
            expected,
            got,
        } => {
            assert!(path.ends_with(ADAPTER_WEIGHTS_FILE));
            assert_eq!(n, name);
            assert_eq!(expected, [3, 16]);
            assert_eq!(got, [2, 16]);
        }
        e => panic!("{e}"),
    }
}

#[test]
fn extra_lora_tensors_from_another_model_are_rejected() {
    // one layer more than the model has
    let (dir, _, _, lora) = saved_bert("extra-layer");
    let extra = "base_model.model.bert.encoder.layer.2.attention.self.query.lora_A.weight";
    edit_tensors(dir.path(), |m| {
        m.insert(extra.into(), ArrayD::zeros(IxDyn(&[2, 16])));
    });
    let err = load_err(dir.path(), &lora);
    assert!(err.to_string().contains("another model"), "{err}");
    match err {
        Error::UnexpectedTensor { path, name } => {
            assert!(path.ends_with(ADAPTER_WEIGHTS_FILE));
            assert_eq!(name, extra);
        }
        e => panic!("{e}"),
    }
    // an adapter on query/key/value loaded into a model adapted on query/value only
    let dir = TempDir::new("extra-target");
    let qkv = bert_lora(2, 4.0, &["query", "key", "value"]);
    let (_, t) = classifier(&qkv, 1);
    save_peft_adapter(dir.path(), &qkv, &t).unwrap();
    match load_err(dir.path(), &bert_lora(2, 4.0, &["query", "value"])) {
        Error::UnexpectedTensor { name, .. } => assert_eq!(
            name,
            "base_model.model.bert.encoder.layer.0.attention.self.key.lora_A.weight"
        ),
        e => panic!("{e}"),
    }
    // a classifier head in a file loaded into a registry without one
    let dir = TempDir::new("extra-head");
    let lora = LoraConfig::new(1, 1.0, 0.0, &["v_proj"]);
    let (_, t) = llama(&lora, 1);
    save_peft_adapter(dir.path(), &lora, &t).unwrap();
    edit_tensors(dir.path(), |m| {
        m.insert(
            "base_model.model.score.weight".into(),
            ArrayD::zeros(IxDyn(&[2, 16])),
        );
    });
    let (_, mut u) = llama(&lora, 2);
    let before = u.clone();
    match load_peft_tensors(dir.path(), &mut u).unwrap_err() {
        Error::UnexpectedTensor { name, .. } => assert_eq!(name, "base_model.model.score.weight"),
        e => panic!("{e}"),
    }
    assert_eq!(u, before);
}

#[test]
fn rank_and_alpha_mismatches_are_config_errors() {
    let (dir, _, _, lora) = saved_bert("rank");
    // the model has rank 4, the adapter rank 2
    let r4 = bert_lora(4, 4.0, &["query", "value"]);
    let err = load_err(dir.path(), &r4);
    match &err {
        Error::Config { path, msg } => {
            assert!(path.ends_with(ADAPTER_CONFIG_FILE));
            assert!(msg.contains("r = 2"), "{msg}");
        }
        e => panic!("{e}"),
    }
    let mut t = fresh_bert_registry(&r4);
    let before = t.clone();
    assert!(matches!(
        load_peft_adapter(dir.path(), &r4, &mut t),
        Err(Error::Config { .. })
    ));
    assert_eq!(t, before);
    // same rank, another α: only the checked loader can tell
    let a8 = bert_lora(2, 8.0, &["query", "value"]);
    let mut t = fresh_bert_registry(&a8);
    let before = t.clone();
    match load_peft_adapter(dir.path(), &a8, &mut t).unwrap_err() {
        Error::Config { path, msg } => {
            assert!(path.ends_with(ADAPTER_CONFIG_FILE));
            assert!(msg.contains("lora_alpha = 4"), "{msg}");
        }
        e => panic!("{e}"),
    }
    assert_eq!(t, before);
    // a config whose r disagrees with its own tensors
    edit_config(dir.path(), |c| {
        c.insert("r".into(), json!(3));
    });
    assert!(matches!(load_err(dir.path(), &lora), Error::Config { .. }));
}

#[test]
fn unsupported_or_malformed_configs_are_rejected() {
    let (dir, _, _, lora) = saved_bert("bad-config");
    let original = std::fs::read_to_string(dir.path().join(ADAPTER_CONFIG_FILE)).unwrap();
    for (key, value, needle) in [
        ("use_dora", json!(true), "use_dora"),
        ("use_rslora", json!(true), "use_rslora"),
        ("rank_pattern", json!({"query": 8}), "rank_pattern"),
        ("alpha_pattern", json!({"query": 8}), "alpha_pattern"),
        ("layers_to_transform", json!([0]), "layers_to_transform"),
        ("target_modules", json!(".*query"), "pattern"),
        ("bias", json!("all"), "bias"),
        ("peft_type", json!("IA3"), "IA3"),
        ("r", json!(0), "rank"),
        ("r", json!("two"), "invalid type"),
        ("fan_in_fan_out", json!(true), "fan_in_fan_out"),
    ] {
        std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), &original).unwrap();
        edit_config(dir.path(), |c| {
            c.insert(key.into(), value.clone());
        });
        match load_err(dir.path(), &lora) {
            Error::Config { path, msg } => {
                assert!(path.ends_with(ADAPTER_CONFIG_FILE));
                assert!(msg.contains(needle), "{key} = {value}: {msg}");
            }
            e => panic!("{key} = {value}: {e}"),
        }
    }
    std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), "{\"r\": 2,").unwrap();
    assert!(matches!(
        load_err(dir.path(), &lora),
        Error::Format { format: "json", .. }
    ));
    // read_peft_config is the same check
    std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), &original).unwrap();
    assert_eq!(read_peft_config(dir.path()).unwrap().r, 2);
}

#[test]
fn bad_tensor_files_are_rejected() {
    // the same parameter twice (plain name and with the adapter name)
    let (dir, _, _, lora) = saved_bert("duplicate");
    let name = "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight";
    edit_tensors(dir.path(), |m| {
        let v = m[name].clone();
        m.insert(name.replace("lora_A.", "lora_A.default."), v);
    });
    match load_err(dir.path(), &lora) {
        Error::Format { path, msg, .. } => {
            assert!(path.ends_with(ADAPTER_WEIGHTS_FILE));
            assert!(msg.contains(name), "{msg}");
        }
        e => panic!("{e}"),
    }
    // an integer tensor where a parameter should be
    let (dir, _, t, lora) = saved_bert("int-tensor");
    let path = dir.path().join(ADAPTER_WEIGHTS_FILE);
    let name = "base_model.model.classifier.bias";
    let ints = [0u8; 3 * 8];
    let mut views = vec![(
        name.to_string(),
        safetensors::tensor::TensorView::new(safetensors::Dtype::I64, vec![3], &ints).unwrap(),
    )];
    let floats: Vec<(String, Vec<u8>, Vec<usize>)> = t
        .names()
        .iter()
        .zip(t.values())
        .filter(|(n, _)| n.as_str() != name)
        .map(|(n, v)| {
            let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
            (n.clone(), bytes, v.shape().to_vec())
        })
        .collect();
    for (n, b, s) in &floats {
        views.push((
            n.clone(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap(),
        ));
    }
    safetensors::serialize_to_file(views, None, &path).unwrap();
    match load_err(dir.path(), &lora) {
        Error::UnsupportedDtype { name: n, dtype, .. } => {
            assert_eq!(n, name);
            assert_eq!(dtype, "I64");
        }
        e => panic!("{e}"),
    }
    // not a safetensors file at all
    std::fs::write(&path, b"garbage").unwrap();
    assert!(matches!(load_err(dir.path(), &lora), Error::Format { .. }));
}

#[test]
fn saving_checks_its_inputs() {
    let dir = TempDir::new("save-errors");
    let lora = bert_lora(2, 4.0, &["query", "value"]);
    let (_, mut t) = classifier(&lora, 1);
    // a config whose rank does not describe the tensors
    assert!(matches!(
        save_peft_adapter(dir.path(), &bert_lora(3, 4.0, &["query", "value"]), &t),
        Err(Error::InvalidArgument { .. })
    ));
    t.value_mut(1)[[0, 0]] = f32::NAN;
    assert!(matches!(
        save_peft_adapter(dir.path(), &lora, &t),
        Err(Error::NonFinite { .. })
    ));
}

// ---- merging -------------------------------------------------------------------------------

#[test]
fn merged_bert_gives_the_adapted_logits() {
    let lora = bert_lora(2, 4.0, &["query", "key", "value", "dense"]);
    let (mut m, mut t) = classifier(&lora, 1);
    assert_eq!(
        t.units().len(),
        2 * 6 + 1,
        "every linear layer adapted, plus the head"
    );
    let base = bert_logits(&m, &t); // B = 0: the base model
    randomize(&mut t, 21);
    let adapted = bert_logits(&m, &t);
    assert!(
        max_abs_diff(&adapted, &base) > 1e-2,
        "the adapters must matter"
    );
    assert!(m.bert().has_adapters());
    m.merge_adapters(&t).unwrap();
    assert!(!m.bert().has_adapters());
    let merged = bert_logits(&m, &t);
    let d = max_abs_diff(&merged, &adapted);
    assert!(d <= 1e-5, "merged vs adapted logits differ by {d}");
    // the merged model no longer reads the LoRA tensors (the head it still reads)
    let head = m.head_params();
    for i in 0..t.len() {
        if i != head.0 && i != head.1 {
            t.value_mut(i).fill(0.0);
        }
    }
    assert_eq!(bert_logits(&m, &t), merged);
}

#[test]
fn merged_llama_gives_the_adapted_outputs() {
    let all = [
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    ];
    let lora = LoraConfig::new(2, 3.0, 0.0, &all);
    let (mut m, mut t) = llama(&lora, 1);
    let (base, _) = llama_outputs(&m, &t);
    randomize(&mut t, 22);
    let (adapted, adapted_loss) = llama_outputs(&m, &t);
    assert!(max_abs_diff(&adapted, &base) > 1e-2);
    m.merge_adapters(&t).unwrap();
    assert!(!m.has_adapters());
    let (merged, merged_loss) = llama_outputs(&m, &t);
    let d = max_abs_diff(&merged, &adapted);
    assert!(d <= 1e-5, "merged vs adapted logits differ by {d}");
    assert!((merged_loss - adapted_loss).abs() <= 1e-5);
    let zero = {
        let mut z = t.clone();
        (0..z.len()).for_each(|i| z.value_mut(i).fill(0.0));
        z
    };
    assert_eq!(llama_outputs(&m, &zero).0, merged);
    // generation works on the merged model and needs no adapter values
    let a = m.generate_greedy(&[1, 12, 40], 5, &[], &t).unwrap();
    assert_eq!(a, m.generate_greedy(&[1, 12, 40], 5, &[], &zero).unwrap());
}

#[test]
fn merging_with_a_foreign_registry_fails_and_changes_nothing() {
    let lora = LoraConfig::new(2, 3.0, 0.0, &["q_proj", "v_proj"]);
    let (mut m, t) = llama(&lora, 1);
    let other = llama(&LoraConfig::new(1, 1.0, 0.0, &["q_proj", "v_proj"]), 1).1;
    assert!(matches!(
        m.merge_adapters(&other),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(m.has_adapters());
    let empty = Trainable::<f32>::new();
    assert!(matches!(
        m.merge_adapters(&empty),
        Err(Error::InvalidArgument { .. })
    ));
    assert!(m.has_adapters());
    m.merge_adapters(&t).unwrap();
}

#[test]
fn a_loaded_adapter_merges_into_the_model_it_was_trained_on() {
    let (dir, m1, t1, lora) = saved_bert("load-merge");
    let (mut m2, mut t2) = classifier(&lora, 3);
    load_peft_adapter(dir.path(), m2.bert().lora(), &mut t2).unwrap();
    m2.merge_adapters(&t2).unwrap();
    let d = max_abs_diff(&bert_logits(&m2, &t2), &bert_logits(&m1, &t1));
    assert!(d <= 1e-5, "{d}");
}
