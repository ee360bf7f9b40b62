//! Hugging Face `config.json` parsing and validation for BERT and Llama. (Llama configurations
//! from GGUF metadata are tested in `io_gguf.rs`, which has the GGUF writer.)

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use spry::Error;
use spry::io::{Activation, BertConfig, LlamaConfig, asset};

fn write_temp(json: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("spry-io-config-{}-{n}.json", std::process::id()));
    std::fs::write(&path, json).unwrap();
    path
}

/// The message of a Config error, after checking it names `path`.
fn config_msg<T: std::fmt::Debug>(result: spry::Result<T>, path: &str) -> String {
    match result {
        Err(Error::Config { path: p, msg }) => {
            assert_eq!(p.to_str(), Some(path));
            msg
        }
        other => panic!("expected a Config error, got {other:?}"),
    }
}

/// `config_msg` for configs parsed from strings.
fn msg<T: std::fmt::Debug>(result: spry::Result<T>) -> String {
    config_msg(result, "<in-memory config>")
}

const BERT_MIN: &str = r#"{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 4, "intermediate_size": 64}"#;

const LLAMA_MIN: &str = r#"{"vocab_size": 100, "hidden_size": 16, "intermediate_size": 40,
    "num_hidden_layers": 2, "num_attention_heads": 4}"#;

/// `base` JSON with the fields `extra` appended (a key already in `base` makes a duplicate
/// field, which serde rejects).
fn with(base: &str, extra: &str) -> String {
    let base = base.trim_end().strip_suffix('}').unwrap();
    format!("{base}, {extra}}}")
}

// ---- BERT ----------------------------------------------------------------------------------

#[test]
fn real_minilm_config() {
    let path = asset("all-MiniLM-L6-v2/config.json").unwrap_or_else(|e| panic!("{e}"));
    let c = BertConfig::from_file(path).unwrap();
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.num_hidden_layers,
            c.num_attention_heads,
            c.intermediate_size
        ),
        (30522, 384, 6, 12, 1536)
    );
    assert_eq!(c.hidden_act, Activation::Gelu);
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(
        (c.max_position_embeddings, c.type_vocab_size, c.pad_token_id),
        (512, 2, Some(0))
    );
    assert_eq!(c.position_embedding_type, "absolute");
    assert_eq!(c.model_type.as_deref(), Some("bert"));
    assert_eq!(c.head_dim(), 32);
}

#[test]
fn bert_defaults_follow_hugging_face() {
    let c = BertConfig::from_json(BERT_MIN).unwrap();
    assert_eq!(c.hidden_act, Activation::Gelu);
    assert_eq!(c.max_position_embeddings, 512);
    assert_eq!(c.type_vocab_size, 2);
    assert_eq!(c.layer_norm_eps, 1e-12);
    assert_eq!(c.pad_token_id, Some(0));
    assert_eq!(c.position_embedding_type, "absolute");
    assert_eq!(c.model_type, None);
    assert_eq!(c.head_dim(), 4);
    let c = BertConfig::from_json(&with(BERT_MIN, r#""pad_token_id": null"#)).unwrap();
    assert_eq!(c.pad_token_id, None);
}

#[test]
fn bert_activations() {
    for (name, act) in [
        ("gelu", Activation::Gelu),
        ("gelu_new", Activation::GeluTanh),
        ("gelu_pytorch_tanh", Activation::GeluTanh),
        ("relu", Activation::Relu),
        ("silu", Activation::Silu),
        ("swish", Activation::Silu),
    ] {
        let c =
            BertConfig::from_json(&with(BERT_MIN, &format!(r#""hidden_act": "{name}""#))).unwrap();
        assert_eq!(c.hidden_act, act, "{name}");
    }
    let m = msg(BertConfig::from_json(&with(
        BERT_MIN,
        r#""hidden_act": "mish""#,
    )));
    assert!(m.contains("mish"), "{m}");
}

#[test]
fn bert_missing_required_field_names_file_and_field() {
    let json = r#"{"vocab_size": 100, "num_hidden_layers": 2, "num_attention_heads": 4,
        "intermediate_size": 64}"#;
    let path = write_temp(json);
    let m = config_msg(BertConfig::from_file(&path), path.to_str().unwrap());
    assert!(m.contains("hidden_size"), "{m}");
    let full = BertConfig::from_file(&path).unwrap_err().to_string();
    assert!(full.contains(path.to_str().unwrap()), "{full}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bert_validation() {
    for (extra_or_json, needle) in [
        (
            r#"{"vocab_size": 100, "hidden_size": 18, "num_hidden_layers": 2,
               "num_attention_heads": 4, "intermediate_size": 64}"#
                .to_owned(),
            "divisible",
        ),
        (
            r#"{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 0,
               "num_attention_heads": 4, "intermediate_size": 64}"#
                .to_owned(),
            "num_hidden_layers",
        ),
        (
            r#"{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2,
               "num_attention_heads": 0, "intermediate_size": 64}"#
                .to_owned(),
            "num_attention_heads",
        ),
        (
            with(BERT_MIN, r#""position_embedding_type": "relative_key""#),
            "relative_key",
        ),
        (with(BERT_MIN, r#""model_type": "roberta""#), "roberta"),
        (with(BERT_MIN, r#""layer_norm_eps": 0.0"#), "layer_norm_eps"),
        (
            with(BERT_MIN, r#""layer_norm_eps": -1e-5"#),
            "layer_norm_eps",
        ),
        (with(BERT_MIN, r#""pad_token_id": 100"#), "pad_token_id"),
        (with(BERT_MIN, r#""type_vocab_size": 0"#), "type_vocab_size"),
        (with(BERT_MIN, r#""hidden_size": 16"#), "duplicate"),
        ("{not json".to_owned(), "key must be a string"),
        (r#"{"vocab_size": -1}"#.to_owned(), "invalid value"),
    ] {
        let m = msg(BertConfig::from_json(&extra_or_json));
        assert!(m.contains(needle), "{needle}: {m}");
    }
    // A config built in code is validated on request.
    let mut c = BertConfig::from_json(BERT_MIN).unwrap();
    c.validate().unwrap();
    c.num_attention_heads = 3;
    assert!(msg(c.validate()).contains("divisible"));
}

#[test]
fn missing_config_file_is_io_error() {
    let path = std::env::temp_dir().join("spry-io-config-does-not-exist.json");
    assert!(matches!(
        BertConfig::from_file(&path),
        Err(Error::Io { .. })
    ));
    assert!(matches!(
        LlamaConfig::from_file(&path),
        Err(Error::Io { .. })
    ));
}

// ---- Llama ---------------------------------------------------------------------------------

#[test]
fn real_smollm2_config() {
    let path = asset("SmolLM2-135M-Instruct/config.json").unwrap_or_else(|e| panic!("{e}"));
    let c = LlamaConfig::from_file(path).unwrap();
    assert_eq!(
        (
            c.vocab_size,
            c.hidden_size,
            c.intermediate_size,
            c.num_hidden_layers
        ),
        (49152, 576, 1536, 30)
    );
    assert_eq!((c.num_attention_heads, c.num_key_value_heads), (9, 3));
    assert_eq!((c.head_dim(), c.kv_groups(), c.kv_dim()), (64, 3, 192));
    assert_eq!(c.hidden_act, Activation::Silu);
    assert_eq!(c.rms_norm_eps, 9.999999747378752e-06);
    assert_eq!(c.rope_theta, 100000.0);
    assert_eq!(c.max_position_embeddings, 8192);
    assert!(c.tie_word_embeddings);
    assert!(!c.attention_bias && !c.mlp_bias);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.clone(), c.pad_token_id),
        (Some(1), vec![2], Some(2))
    );
}

#[test]
fn llama_defaults_follow_hugging_face() {
    let c = LlamaConfig::from_json(LLAMA_MIN).unwrap();
    assert_eq!(c.num_key_value_heads, 4);
    assert_eq!(c.kv_groups(), 1);
    assert_eq!(c.head_dim(), 4);
    assert_eq!(c.hidden_act, Activation::Silu);
    assert_eq!(c.max_position_embeddings, 2048);
    assert_eq!(c.rms_norm_eps, 1e-6);
    assert_eq!(c.rope_theta, 10000.0);
    assert!(!c.tie_word_embeddings);
    assert_eq!(c.bos_token_id, Some(1));
    assert_eq!(c.eos_token_ids, [2]);
    assert_eq!(c.pad_token_id, None);
}

#[test]
fn llama_token_ids_in_every_form() {
    let c = LlamaConfig::from_json(&with(LLAMA_MIN, r#""eos_token_id": [2, 7, 9]"#)).unwrap();
    assert_eq!(c.eos_token_ids, [2, 7, 9]);
    let c = LlamaConfig::from_json(&with(
        LLAMA_MIN,
        r#""eos_token_id": null, "bos_token_id": null, "pad_token_id": 5"#,
    ))
    .unwrap();
    assert!(c.eos_token_ids.is_empty());
    assert_eq!((c.bos_token_id, c.pad_token_id), (None, Some(5)));
    // rope_scaling null and a consistent head_dim are fine.
    LlamaConfig::from_json(&with(
        LLAMA_MIN,
        r#""rope_scaling": null, "head_dim": 4, "model_type": "llama""#,
    ))
    .unwrap();
}

#[test]
fn llama_validation() {
    for (extra, needle) in [
        (r#""num_key_value_heads": 3"#, "num_key_value_heads"),
        (r#""num_key_value_heads": 0"#, "num_key_value_heads"),
        (r#""hidden_act": "gelu""#, "silu"),
        (
            r#""rope_scaling": {"type": "linear", "factor": 2.0}"#,
            "rope_scaling",
        ),
        (r#""head_dim": 8"#, "head_dim"),
        (r#""model_type": "mistral""#, "mistral"),
        (r#""rope_theta": -1.0"#, "rope_theta"),
        (r#""rms_norm_eps": 0.0"#, "rms_norm_eps"),
        (r#""bos_token_id": 100"#, "bos_token_id"),
        (r#""eos_token_id": [2, 100]"#, "eos_token_id"),
        (r#""pad_token_id": 1000"#, "pad_token_id"),
        (r#""max_position_embeddings": 0"#, "max_position_embeddings"),
    ] {
        let m = msg(LlamaConfig::from_json(&with(LLAMA_MIN, extra)));
        assert!(m.contains(needle), "{extra}: {m}");
    }
    // hidden not divisible by heads; odd head size.
    let m = msg(LlamaConfig::from_json(
        r#"{"vocab_size": 100, "hidden_size": 18, "intermediate_size": 40,
            "num_hidden_layers": 2, "num_attention_heads": 4}"#,
    ));
    assert!(m.contains("divisible"), "{m}");
    let m = msg(LlamaConfig::from_json(
        r#"{"vocab_size": 100, "hidden_size": 12, "intermediate_size": 40,
            "num_hidden_layers": 2, "num_attention_heads": 4}"#,
    ));
    assert!(m.contains("odd"), "{m}");
    // A required field missing.
    let m = msg(LlamaConfig::from_json(
        r#"{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": 2,
            "num_attention_heads": 4}"#,
    ));
    assert!(m.contains("intermediate_size"), "{m}");
    // In code.
    let mut c = LlamaConfig::from_json(LLAMA_MIN).unwrap();
    c.num_key_value_heads = 3;
    assert!(msg(c.validate()).contains("num_key_value_heads"));
}

#[test]
fn llama_errors_name_the_file() {
    let path = write_temp(&with(LLAMA_MIN, r#""num_key_value_heads": 3"#));
    let m = config_msg(LlamaConfig::from_file(&path), path.to_str().unwrap());
    assert!(m.contains("num_key_value_heads"), "{m}");
    std::fs::remove_file(&path).unwrap();
}

/// Sizes and hyper-parameters have documented ranges: an absurd value is a Config error naming
/// it, before anything is allocated for it.
#[test]
fn absurd_sizes_and_hyper_parameters_are_refused() {
    let huge = 1u64 << 40;
    for (json, needle) in [
        (
            format!(
                r#"{{"vocab_size": 100, "hidden_size": 16, "num_hidden_layers": {huge},
                "num_attention_heads": 4, "intermediate_size": 64}}"#
            ),
            "num_hidden_layers",
        ),
        (
            format!(
                r#"{{"vocab_size": {huge}, "hidden_size": 16, "num_hidden_layers": 2,
                "num_attention_heads": 4, "intermediate_size": 64}}"#
            ),
            "vocab_size",
        ),
        (with(BERT_MIN, r#""layer_norm_eps": 1.0"#), "layer_norm_eps"),
        (
            with(BERT_MIN, &format!(r#""max_position_embeddings": {huge}"#)),
            "max_position_embeddings",
        ),
    ] {
        let m = msg(BertConfig::from_json(&json));
        assert!(m.contains(needle), "{needle}: {m}");
    }
    for (extra, needle) in [
        (r#""rms_norm_eps": 0.5"#, "rms_norm_eps"),
        (r#""rope_theta": 1e300"#, "rope_theta"),
        (r#""rope_theta": 0.5"#, "rope_theta"),
        (
            r#""max_position_embeddings": 1099511627776"#,
            "max_position_embeddings",
        ),
    ] {
        let m = msg(LlamaConfig::from_json(&with(LLAMA_MIN, extra)));
        assert!(m.contains(needle), "{needle}: {m}");
    }
    // LoRA: α of 0, negative, huge; a rank past the limit
    for (r, alpha) in [(4, 0.0), (4, -8.0), (4, 1e308), (1 << 20, 8.0)] {
        let lora = spry::modules::LoraConfig::new(r, alpha, 0.0, &["query"]);
        assert!(
            matches!(lora.validate(), Err(Error::InvalidArgument { .. })),
            "r {r}, alpha {alpha} accepted"
        );
    }
    spry::modules::LoraConfig::new(4, 8.0, 0.0, &["query"])
        .validate()
        .unwrap();
}
