//! One-call loaders for the checkpoints people have: a Hugging Face BERT folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`) and a llama.cpp GGUF file (weights,
//! config and tokenizer all from the one file).

use std::path::Path;

use super::bert::{Bert, BertClassifier};
use super::llama::Llama;
use super::source::GgufLlamaSource;
use crate::io::{BertConfig, GgufFile, LlamaConfig, load_safetensors};
use crate::modules::{LoraConfig, Trainable};
use crate::tokenizer::{TextTokenizer, TokenizerOptions, bpe_from_gguf_vocab};
use crate::{Error, Result};

/// A LoRA configuration with no target: the plain pretrained model.
pub fn no_lora() -> LoraConfig {
    LoraConfig {
        target_modules: Vec::new(),
        lora_dropout: 0.0,
        ..LoraConfig::default()
    }
}

/// Loads a BERT encoder (e.g. all-MiniLM-L6-v2) from a Hugging Face folder, with its tokenizer
/// (padding/truncation from `opts`, replacing the file's baked-in ones).
///
/// # Errors
/// File, config, tensor and tokenizer errors, each naming the file.
pub fn load_bert_dir(
    dir: &Path,
    lora: &LoraConfig,
    seed: u64,
    opts: TokenizerOptions,
) -> Result<(Bert<f32>, Trainable<f32>, TextTokenizer)> {
    let config = BertConfig::from_file(dir.join("config.json"))?;
    let mut weights = load_safetensors(dir.join("model.safetensors"))?;
    let mut trainable = Trainable::new();
    let bert = Bert::load(&config, &mut weights, lora, "", seed, &mut trainable)?;
    let tokenizer = TextTokenizer::from_file(dir.join("tokenizer.json"), opts)?;
    Ok((bert, trainable, tokenizer))
}

/// Loads a BERT folder as a sequence classifier with `n_labels` classes (a fresh head).
///
/// # Errors
/// As [`load_bert_dir`].
pub fn load_bert_classifier_dir(
    dir: &Path,
    lora: &LoraConfig,
    n_labels: usize,
    seed: u64,
    opts: TokenizerOptions,
) -> Result<(BertClassifier<f32>, Trainable<f32>, TextTokenizer)> {
    let config = BertConfig::from_file(dir.join("config.json"))?;
    let mut weights = load_safetensors(dir.join("model.safetensors"))?;
    let (model, trainable) = BertClassifier::load(&config, &mut weights, lora, n_labels, seed)?;
    let tokenizer = TextTokenizer::from_file(dir.join("tokenizer.json"), opts)?;
    Ok((model, trainable, tokenizer))
}

/// The byte-level BPE tokenizer described by a GGUF file's `tokenizer.ggml.*` metadata.
///
/// # Errors
/// [`Error::Format`] if the metadata is missing or mistyped; tokenizer errors.
pub fn gguf_tokenizer(file: &GgufFile) -> Result<TextTokenizer> {
    let missing = |key: &str| Error::Format {
        path: file.path().to_path_buf(),
        format: "gguf",
        msg: format!("metadata `{key}` is missing or has the wrong type"),
    };
    let strings = |key: &str| {
        file.metadata(key)
            .and_then(|v| v.as_string_array())
            .map(|s| s.to_vec())
            .ok_or_else(|| missing(key))
    };
    let tokens = strings("tokenizer.ggml.tokens")?;
    let merges = strings("tokenizer.ggml.merges")?;
    let types = file
        .metadata("tokenizer.ggml.token_type")
        .and_then(|v| v.as_i32_array())
        .map(|s| s.to_vec())
        .ok_or_else(|| missing("tokenizer.ggml.token_type"))?;
    let tok = bpe_from_gguf_vocab(&tokens, &types, &merges)?;
    match file
        .metadata("tokenizer.ggml.padding_token_id")
        .and_then(|v| v.to_u64())
    {
        Some(pad) => tok.with_options(TokenizerOptions::default().with_pad_id(pad as u32)),
        None => Ok(tok),
    }
}

/// Loads a Llama model from a GGUF file: config and tokenizer from its metadata, weights
/// dequantised to f32 with q/k rows un-permuted for rotate-half RoPE.
///
/// # Errors
/// File, metadata, tensor and tokenizer errors, each naming the file.
pub fn load_llama_gguf(
    path: &Path,
    lora: &LoraConfig,
    seed: u64,
) -> Result<(Llama<f32>, Trainable<f32>, TextTokenizer)> {
    let file = GgufFile::open(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let tokenizer = gguf_tokenizer(&file)?;
    let mut source =
        GgufLlamaSource::new(file, config.num_attention_heads, config.num_key_value_heads);
    let mut trainable = Trainable::new();
    let model = Llama::load(&config, &mut source, lora, seed, &mut trainable)?;
    Ok((model, trainable, tokenizer))
}
