//! One-call loaders for the checkpoints people have: a Hugging Face BERT folder
//! (`config.json`, `model.safetensors`, `tokenizer.json`) and a llama.cpp GGUF file (weights,
//! config and tokenizer all from the one file), optionally with a PEFT adapter; sentence
//! embeddings and their cosines. The bundled checkpoints' paths and SmolLM2's chat template are
//! in `spry::recipes::bundled` (feature `recipes`).

use std::path::{Path, PathBuf};

use ndarray::Array2;

use super::bert::{Bert, BertBatch, BertClassifier, ClassifierConfig};
use super::llama::Llama;
use super::source::{GgufLlamaSource, WeightFormat};
use crate::io::{ASSETS_ENV, BertConfig, GgufFile, LlamaConfig, load_safetensors};
use crate::modules::{LoraConfig, PeftAdapter, Trainable, save_peft_adapter};
use crate::tokenizer::{TextTokenizer, TokenizerOptions, bpe_from_gguf_vocab};
use crate::{Error, Result};

/// The files a BERT folder must hold for [`load_bert_dir`].
pub const BERT_DIR_FILES: [&str; 3] = ["config.json", "model.safetensors", "tokenizer.json"];

/// Checks that `dir` holds every file of `files`.
///
/// # Errors
/// [`Error::Io`] (kind `NotFound`) naming the first missing file and telling to run
/// `scripts/fetch_assets.sh` (or to set `SPRY_ASSETS`).
pub fn require_files(dir: &Path, files: &[&str]) -> Result<()> {
    files.iter().try_for_each(|f| require_file(&dir.join(f)))
}

/// Checks that the file `path` exists.
///
/// # Errors
/// As [`require_files`].
pub fn require_file(path: &Path) -> Result<()> {
    if path.is_file() {
        Ok(())
    } else {
        Err(missing_file(path.to_path_buf()))
    }
}

fn missing_file(path: PathBuf) -> Error {
    Error::Io {
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "not found: run `scripts/fetch_assets.sh` to download the model files \
                 (or set {ASSETS_ENV} to the folder that holds them)"
            ),
        ),
        path,
    }
}

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

/// Saves a trained classifier as an adapter folder: the PEFT files ([`save_peft_adapter`]: the
/// LoRA factors and the head) and `classifier_config.json` ([`ClassifierConfig`]: class names,
/// pooling, truncation).
///
/// # Errors
/// As [`save_peft_adapter`] and [`ClassifierConfig::save`].
pub fn save_bert_classifier(
    dir: &Path,
    lora: &LoraConfig,
    trainable: &Trainable<f32>,
    config: &ClassifierConfig,
) -> Result<()> {
    save_peft_adapter(dir, lora, trainable)?;
    config.save(dir)
}

/// Loads a BERT folder with a classifier adapter folder written by [`save_bert_classifier`]:
/// the adapters its `adapter_config.json` describes, its classes, pooling and truncation from
/// `classifier_config.json`, and its tensors (checked against the model).
///
/// # Errors
/// As [`load_bert_classifier_dir`], [`PeftAdapter::read`], [`ClassifierConfig::load`] and
/// [`PeftAdapter::load_into`]; [`Error::TensorShape`] when the head's class count differs from
/// the config's (checked before the model is built).
pub fn load_bert_classifier_with_adapter(
    model_dir: &Path,
    adapter_dir: &Path,
) -> Result<(
    BertClassifier<f32>,
    Trainable<f32>,
    TextTokenizer,
    ClassifierConfig,
)> {
    // the adapter's tensors are read and checked before the model allocates anything for them
    let adapter = PeftAdapter::read(adapter_dir)?;
    let lora = adapter.config().clone();
    let config = ClassifierConfig::load(adapter_dir)?;
    let head = format!("{}classifier.weight", super::adapted::PEFT_PREFIX);
    if let Some(shape) = adapter.shape(&head)
        && shape.first() != Some(&config.n_labels())
    {
        return Err(Error::TensorShape {
            path: adapter.weights_path(),
            name: head,
            expected: vec![config.n_labels(), shape.get(1).copied().unwrap_or(0)],
            got: shape,
        });
    }
    let opts = match config.max_len {
        Some(m) => TokenizerOptions::default().with_max_len(m),
        None => TokenizerOptions::default(),
    };
    let (model, mut trainable, tok) =
        load_bert_classifier_dir(model_dir, &lora, config.n_labels(), 0, opts)?;
    adapter.load_into(model.bert().lora(), &mut trainable)?;
    Ok((model.with_pooling(config.pooling), trainable, tok, config))
}

/// Loads a BERT folder with a LoRA adapter folder as an encoder: a classifier adapter (one
/// with `classifier_config.json`, as [`save_bert_classifier`] writes it) is loaded as the
/// classifier and its encoder kept; any other adapter is loaded onto the bare encoder.
/// Truncation and padding come from `opts`.
///
/// # Errors
/// As [`load_bert_classifier_with_adapter`] or [`load_bert_dir`], [`PeftAdapter::read`] and
/// [`PeftAdapter::load_into`].
pub fn load_bert_with_adapter(
    model_dir: &Path,
    adapter_dir: &Path,
    opts: TokenizerOptions,
) -> Result<(Bert<f32>, Trainable<f32>, TextTokenizer)> {
    if adapter_dir
        .join(super::bert::CLASSIFIER_CONFIG_FILE)
        .is_file()
    {
        let (model, trainable, _, _) = load_bert_classifier_with_adapter(model_dir, adapter_dir)?;
        let tok = TextTokenizer::from_file(model_dir.join("tokenizer.json"), opts)?;
        return Ok((model.into_bert(), trainable, tok));
    }
    let adapter = PeftAdapter::read(adapter_dir)?;
    let (bert, mut trainable, tok) = load_bert_dir(model_dir, adapter.config(), 0, opts)?;
    adapter.load_into(bert.lora(), &mut trainable)?;
    Ok((bert, trainable, tok))
}

/// Class probabilities of `texts` (softmax of the classifier's logits), in batches of `batch`
/// texts.
///
/// # Shapes
/// - output `[texts.len(), C]`
///
/// # Errors
/// Tokenizer and model errors.
pub fn class_probabilities<S: AsRef<str>>(
    model: &BertClassifier<f32>,
    trainable: &Trainable<f32>,
    tok: &TextTokenizer,
    texts: &[S],
    batch: usize,
) -> Result<Array2<f32>> {
    let none = crate::modules::Directions::none(trainable.len());
    let mut probs = Array2::zeros((0, model.n_labels()));
    for chunk in texts.chunks(batch.max(1)) {
        let b: BertBatch = tok.encode_batch(chunk, true)?.into();
        let logits = model.forward(&b, None, trainable, &none, None)?.logits;
        let p = crate::kernels::softmax(&crate::Dual::constant(logits))?.into_primal();
        probs
            .append(ndarray::Axis(0), p.view())
            .map_err(|e| Error::invalid("class_probabilities", e.to_string()))?;
    }
    Ok(probs)
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
        Some(pad) => {
            let pad = u32::try_from(pad).map_err(|_| Error::Format {
                path: file.path().to_path_buf(),
                format: "gguf",
                msg: format!("tokenizer.ggml.padding_token_id {pad} is not a 32-bit token id"),
            })?;
            tok.with_options(TokenizerOptions::default().with_pad_id(pad))
        }
        None => Ok(tok),
    }
}

/// Loads a Llama model from a GGUF file: config and tokenizer from its metadata, frozen matrices
/// kept in their stored format ([`WeightFormat::Stored`]: Q8_0/Q4_0/Q4_1/F16/BF16 stay packed and
/// are widened a tile at a time), q/k rows un-permuted for rotate-half RoPE. The file is opened
/// with [`GgufFile::open_mapped`]: the packed matrices stay in the file's map (page cache, not
/// anonymous memory; nothing is copied), other tensors (norm gains, f32 matrices) are copied out
/// of it. The file must not be modified or truncated while the model is alive (a truncated file
/// raises `SIGBUS`; see [`GgufFile::open_mapped`]).
///
/// # Errors
/// File, metadata, tensor and tokenizer errors, each naming the file.
pub fn load_llama_gguf(
    path: &Path,
    lora: &LoraConfig,
    seed: u64,
) -> Result<(Llama<f32>, Trainable<f32>, TextTokenizer)> {
    load_llama_gguf_as(path, lora, seed, WeightFormat::Stored)
}

/// [`load_llama_gguf`] with the frozen matrices in `format`: [`WeightFormat::Dense`] dequantises
/// every weight to f32 at load (about 5× the memory of a 4-bit file, the same function).
///
/// # Errors
/// As [`load_llama_gguf`].
pub fn load_llama_gguf_as(
    path: &Path,
    lora: &LoraConfig,
    seed: u64,
    format: WeightFormat,
) -> Result<(Llama<f32>, Trainable<f32>, TextTokenizer)> {
    // packed matrices stay in the map; the map lives as long as the last of them
    let file = GgufFile::open_mapped(path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let tokenizer = gguf_tokenizer(&file)?;
    let mut source =
        GgufLlamaSource::new(file, config.num_attention_heads, config.num_key_value_heads)
            .with_format(format);
    let mut trainable = Trainable::new();
    let model = Llama::load(&config, &mut source, lora, seed, &mut trainable)?;
    Ok((model, trainable, tokenizer))
}

/// Loads a Llama GGUF with the PEFT adapter in `adapter_dir`: the LoRA slots follow the adapter's
/// `adapter_config.json` (e.g. `q_proj`/`v_proj`, its `r` and `lora_alpha`), their values come
/// from its `adapter_model.safetensors`.
///
/// # Errors
/// As [`load_llama_gguf`], [`PeftAdapter::read`] and [`PeftAdapter::load_into`] (the adapter
/// folder is read and checked before the model is built).
pub fn load_llama_gguf_with_adapter(
    path: &Path,
    adapter_dir: &Path,
) -> Result<(Llama<f32>, Trainable<f32>, TextTokenizer)> {
    let adapter = PeftAdapter::read(adapter_dir)?;
    let (model, mut trainable, tok) = load_llama_gguf(path, adapter.config(), 0)?;
    adapter.load_into(model.lora(), &mut trainable)?;
    Ok((model, trainable, tok))
}

/// Sentence embeddings of `texts` as one padded batch: the mean of the last hidden state over
/// real tokens, L2-normalised (all-MiniLM-L6-v2's recipe).
///
/// # Shapes
/// - output `[texts.len(), H]`
///
/// # Errors
/// [`Error::InvalidArgument`] if `texts` is empty; tokenizer and model errors.
pub fn embed_sentences<S: AsRef<str>>(
    bert: &Bert<f32>,
    trainable: &Trainable<f32>,
    tok: &TextTokenizer,
    texts: &[S],
) -> Result<Array2<f32>> {
    if texts.is_empty() {
        return Err(Error::invalid("embed_sentences", "no text to embed"));
    }
    let batch = tok.encode_batch(texts, true)?;
    let mut b = BertBatch::new(batch.ids, batch.mask)?;
    b.type_ids = batch.type_ids;
    bert.sentence_embeddings(&b, trainable)
}

/// Cosine similarity of every pair of `texts`: the Gram matrix of their normalised
/// [`embed_sentences`] embeddings.
///
/// # Shapes
/// - output `[N, N]`, N = `texts.len()`, symmetric with (up to rounding) ones on the diagonal
///
/// # Errors
/// As [`embed_sentences`].
pub fn cosine_matrix<S: AsRef<str>>(
    bert: &Bert<f32>,
    trainable: &Trainable<f32>,
    tok: &TextTokenizer,
    texts: &[S],
) -> Result<Array2<f32>> {
    let e = embed_sentences(bert, trainable, tok, texts)?;
    Ok(e.dot(&e.t()))
}
