//! One check per file reader of spry: feed it arbitrary bytes, accept `Ok` or a typed
//! [`spry::Error`], and when the load succeeds assert what the reader promises (element counts
//! that match shapes, finite weights, a config that validates, labels in range, ...).
//!
//! Shared by the fuzz targets (`fuzz/fuzz_targets/*.rs`, one per [`Reader`]) and by the stable
//! test `tests/fuzz_corpus.rs`, which includes this file by path and replays the seed corpus and
//! the saved regressions through the same functions. A panic here is a bug: either the reader
//! panicked, or it returned something its documentation rules out.
//!
//! Readers that only take a path get the bytes as a file in a fresh scratch folder (under
//! `/dev/shm` when it exists, else the temp dir), removed after the call. Multi-file inputs use
//! the framing documented on [`Reader::Peft`].

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{ArrayD, IxDyn};
use spry::data::{Columns, MAX_CLASSES, load_labelled, load_labelled_against};
use spry::federated::{CHECKPOINT_FORMAT, CHECKPOINT_VERSION, Checkpoint, Simulation};
use spry::io::{BertConfig, GgufFile, LlamaConfig, load_safetensors, save_safetensors};
use spry::models::bert::{BertClassifier, ClassifierConfig};
use spry::models::pretrained::gguf_tokenizer;
use spry::models::source::RandomWeights;
use spry::modules::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use spry::modules::{LoraConfig, Trainable, load_peft_adapter};
use spry::{Result, TextTokenizer, TokenizerOptions};

/// The readers under test; each is one fuzz target (named [`Reader::name`]) and one folder of
/// `fuzz/corpus/` and `fuzz/regressions/`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reader {
    /// `load_safetensors` (the bytes as a `.safetensors` file).
    Safetensors,
    /// `GgufFile::from_bytes`, then every tensor dequantised and packed, `load_all`,
    /// `LlamaConfig::from_gguf` and the GGUF tokenizer.
    Gguf,
    /// `BertConfig::from_file` and `LlamaConfig::from_file` (a Hugging Face `config.json`).
    ModelConfig,
    /// `TextTokenizer::from_file` (a `tokenizer.json`), then encoding, batching and decoding.
    Tokenizer,
    /// `load_peft_adapter` into a tiny BERT classifier's registry. Framing: a little-endian
    /// `u16` length `n`, then `n` bytes of `adapter_config.json`, then the rest as
    /// `adapter_model.safetensors`; if fewer than `n` bytes follow, the remainder is the config
    /// and the safetensors file is absent.
    Peft,
    /// `Simulation::load_checkpoint`, `Checkpoint::validate`, `Simulation::resume` into a tiny
    /// registry.
    Checkpoint,
    /// `load_labelled` then `load_labelled_against` the inferred classes. Framing: the first
    /// byte picks the format and columns ([`labelled_setup`]), the rest is the file.
    Labelled,
    /// `ClassifierConfig::load` (a trained classifier's `classifier_config.json`).
    ClassifierConfig,
}

impl Reader {
    /// Every reader.
    pub const ALL: [Reader; 8] = [
        Reader::Safetensors,
        Reader::Gguf,
        Reader::ModelConfig,
        Reader::Tokenizer,
        Reader::Peft,
        Reader::Checkpoint,
        Reader::Labelled,
        Reader::ClassifierConfig,
    ];

    /// The fuzz target's name, also its corpus and regressions folder.
    pub fn name(self) -> &'static str {
        match self {
            Reader::Safetensors => "safetensors",
            Reader::Gguf => "gguf",
            Reader::ModelConfig => "model_config",
            Reader::Tokenizer => "tokenizer",
            Reader::Peft => "peft",
            Reader::Checkpoint => "checkpoint",
            Reader::Labelled => "labelled",
            Reader::ClassifierConfig => "classifier_config",
        }
    }

    /// The reader of a target name.
    pub fn from_name(name: &str) -> Option<Reader> {
        Reader::ALL.into_iter().find(|r| r.name() == name)
    }

    /// Feeds `bytes` to the reader and checks what a successful load promises. Returns the
    /// reader's typed error, if any; panics if the reader panics or breaks a promise.
    pub fn check(self, bytes: &[u8]) -> Result<()> {
        match self {
            Reader::Safetensors => safetensors(bytes),
            Reader::Gguf => gguf(bytes),
            Reader::ModelConfig => model_config(bytes),
            Reader::Tokenizer => tokenizer(bytes),
            Reader::Peft => peft(bytes),
            Reader::Checkpoint => checkpoint(bytes),
            Reader::Labelled => labelled(bytes),
            Reader::ClassifierConfig => classifier_config(bytes),
        }
    }
}

// ---- scratch files ------------------------------------------------------------------------------

/// A fresh folder holding some files, removed on drop.
pub struct Scratch(PathBuf);

impl Scratch {
    /// A new folder with `files` (name, content) in it.
    pub fn new(files: &[(&str, &[u8])]) -> Scratch {
        static N: AtomicUsize = AtomicUsize::new(0);
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!(
            "spry-fuzz-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("scratch folder");
        for (name, bytes) in files {
            std::fs::write(dir.join(name), bytes).expect("scratch file");
        }
        Scratch(dir)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// A file in the folder.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- weights ------------------------------------------------------------------------------------

fn safetensors(bytes: &[u8]) -> Result<()> {
    let scratch = Scratch::new(&[("model.safetensors", bytes)]);
    let weights = load_safetensors(scratch.file("model.safetensors"))?;
    let mut total = 0;
    for (name, t) in weights.iter() {
        assert_eq!(t.len(), t.shape().iter().product::<usize>(), "`{name}`");
        assert!(
            t.iter().all(|x| x.is_finite()),
            "`{name}` holds a non-finite value"
        );
        assert_eq!(
            weights.get(name).expect("a listed tensor").shape(),
            t.shape()
        );
        total += t.len();
    }
    assert_eq!(weights.n_params(), total);
    for (name, _) in weights.skipped() {
        assert!(!weights.contains(name), "`{name}` both loaded and skipped");
        assert!(weights.get(name).is_err());
    }
    // what was read writes back and reads back the same
    let views: Vec<_> = weights.iter().collect();
    let again = scratch.file("again.safetensors");
    save_safetensors(&again, &views, None).expect("loaded weights save");
    let reloaded = load_safetensors(&again).expect("saved weights load");
    assert_eq!(reloaded.len(), weights.len());
    for (name, t) in weights.iter() {
        assert_eq!(reloaded.get(name).expect("saved tensor"), t, "`{name}`");
    }
    Ok(())
}

fn gguf(bytes: &[u8]) -> Result<()> {
    let file = GgufFile::from_bytes("fuzz.gguf", bytes.to_vec())?;
    assert!(file.data_start() <= bytes.len().max(file.data_start()));
    let _ = file.metadata_iter().count();
    let mut n_params = 0usize;
    for info in file.tensor_infos() {
        let n = info.n_elements();
        assert_eq!(
            n,
            info.shape().iter().product::<usize>(),
            "`{}`",
            info.name()
        );
        n_params += n;
        let dense = file.tensor_f32(info.name());
        if let Ok(t) = &dense {
            assert_eq!(t.shape(), info.shape(), "`{}`", info.name());
            assert!(t.iter().all(|x| x.is_finite()), "`{}`", info.name());
        }
        if let Ok(p) = file.tensor_packed(info.name()) {
            assert_eq!(p.rows() * p.cols(), n, "`{}`", info.name());
            assert_eq!(p.first_non_finite(), None, "`{}`", info.name());
            let widened = p.to_dense::<f32>();
            let t = dense.as_ref().expect("a packed tensor also dequantises");
            assert_eq!(
                widened.as_slice().expect("standard layout"),
                t.as_slice().expect("standard layout"),
                "`{}`: packed and dequantised values differ",
                info.name()
            );
        }
    }
    assert_eq!(file.n_params(), n_params);
    if let Ok(all) = file.load_all() {
        for (name, t) in all.iter() {
            let info = file.tensor_info(name).expect("a loaded tensor has an info");
            assert_eq!(t.shape(), info.shape(), "`{name}`");
        }
    }
    if let Ok(config) = LlamaConfig::from_gguf(&file) {
        config
            .validate()
            .expect("a config read from GGUF validates");
    }
    if let Ok(tok) = gguf_tokenizer(&file) {
        exercise_tokenizer(&tok)?;
    }
    Ok(())
}

// ---- configs ------------------------------------------------------------------------------------

fn model_config(bytes: &[u8]) -> Result<()> {
    let scratch = Scratch::new(&[("config.json", bytes)]);
    let path = scratch.file("config.json");
    let bert = BertConfig::from_file(&path);
    if let Ok(c) = &bert {
        c.validate().expect("a loaded BERT config validates");
        assert_eq!(c.head_dim() * c.num_attention_heads, c.hidden_size);
    }
    let llama = LlamaConfig::from_file(&path);
    if let Ok(c) = &llama {
        c.validate().expect("a loaded Llama config validates");
        assert_eq!(c.head_dim() * c.num_attention_heads, c.hidden_size);
        assert_eq!(c.kv_groups() * c.num_key_value_heads, c.num_attention_heads);
    }
    // a file is one or the other: an error only if it is neither
    match (bert, llama) {
        (Err(e), Err(_)) => Err(e),
        _ => Ok(()),
    }
}

fn classifier_config(bytes: &[u8]) -> Result<()> {
    let scratch = Scratch::new(&[(spry::models::bert::CLASSIFIER_CONFIG_FILE, bytes)]);
    let config = ClassifierConfig::load(scratch.dir())?;
    let n = config.n_labels();
    assert!(n >= 2);
    for id in 0..n {
        let name = config.label(id);
        assert!(!name.is_empty());
        assert_eq!(config.label2id.get(&name), Some(&id));
    }
    let again = Scratch::new(&[]);
    config.save(again.dir()).expect("a loaded config saves");
    assert_eq!(
        ClassifierConfig::load(again.dir()).expect("and loads back"),
        config
    );
    Ok(())
}

// ---- tokenizer ----------------------------------------------------------------------------------

fn tokenizer(bytes: &[u8]) -> Result<()> {
    let scratch = Scratch::new(&[("tokenizer.json", bytes)]);
    let tok =
        TextTokenizer::from_file(scratch.file("tokenizer.json"), TokenizerOptions::default())?;
    exercise_tokenizer(&tok)
}

/// Encodes, batches and decodes a few texts; checks the lengths agree and every id is in the
/// vocabulary. Tokenizer errors are returned (a tokenizer may fail on a text), panics are bugs.
fn exercise_tokenizer(tok: &TextTokenizer) -> Result<()> {
    let texts = ["Hello, world!", "a", "héllo  wörld 123 <|im_start|> [CLS]"];
    for text in texts {
        let enc = tok.encode(text, true)?;
        assert_eq!(enc.ids.len(), enc.type_ids.len());
        assert_eq!(enc.ids.len(), enc.attention_mask.len());
        for &id in &enc.ids {
            assert!(
                tok.id_to_token(id).is_some(),
                "id {id} is not in the vocabulary"
            );
        }
        let _ = tok.decode(&enc.ids, true)?;
    }
    let pair = tok.encode_pair(texts[0], texts[2], true)?;
    assert_eq!(pair.ids.len(), pair.type_ids.len());
    let batch = tok.encode_batch(&texts, true)?;
    assert_eq!(batch.ids.dim(), batch.mask.dim());
    assert_eq!(batch.lengths.len(), texts.len());
    assert_eq!(
        batch.ids.ncols(),
        batch.lengths.iter().copied().max().unwrap_or(0)
    );
    for (row, &len) in batch.lengths.iter().enumerate() {
        assert_eq!(batch.mask.row(row).iter().filter(|&&m| m).count(), len);
    }
    // a truncating tokenizer never returns more than max_len tokens
    if let Ok(short) = tok
        .clone()
        .with_options(TokenizerOptions::default().with_max_len(6))
    {
        let long = "one two three four five six seven eight nine ten eleven twelve";
        assert!(short.encode(long, true)?.len() <= 6);
        assert!(short.encode_pair(long, long, true)?.len() <= 6);
    }
    Ok(())
}

// ---- PEFT adapter folders -----------------------------------------------------------------------

/// The tiny BERT classifier whose registry [`Reader::Peft`] loads into (`peft_registry`), and
/// the seed corpus's adapters are saved from.
pub const PEFT_BERT_JSON: &str = r#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 2,
    "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32}"#;

/// LoRA of [`peft_registry`]: r = 2, α = 4 on query and value.
pub fn peft_lora() -> LoraConfig {
    LoraConfig {
        task_type: Some("SEQ_CLS".into()),
        ..LoraConfig::new(2, 4.0, 0.0, &["query", "value"])
    }
}

/// The registry of a tiny 3-class BERT classifier with [`peft_lora`] (built once).
pub fn peft_registry() -> &'static Trainable<f32> {
    static REGISTRY: OnceLock<Trainable<f32>> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let cfg = BertConfig::from_json(PEFT_BERT_JSON).expect("tiny BERT config");
        let mut weights = RandomWeights {
            seed: 7,
            scale: 0.2,
        };
        BertClassifier::<f32>::load(&cfg, &mut weights, &peft_lora(), 3, 1)
            .expect("tiny BERT classifier")
            .1
    })
}

/// Splits a [`Reader::Peft`] input into its config and (if present) safetensors bytes.
pub fn peft_frame(bytes: &[u8]) -> (&[u8], Option<&[u8]>) {
    let Some((len, rest)) = bytes.split_first_chunk::<2>() else {
        return (bytes, None);
    };
    let n = usize::from(u16::from_le_bytes(*len));
    if n > rest.len() {
        (rest, None)
    } else {
        (&rest[..n], Some(&rest[n..]))
    }
}

/// The [`Reader::Peft`] input of a config and a safetensors file.
pub fn peft_unframe(config: &[u8], weights: &[u8]) -> Vec<u8> {
    let n = u16::try_from(config.len()).expect("config under 64 KiB");
    let mut out = n.to_le_bytes().to_vec();
    out.extend_from_slice(config);
    out.extend_from_slice(weights);
    out
}

fn peft(bytes: &[u8]) -> Result<()> {
    let (config, weights) = peft_frame(bytes);
    let mut files = vec![(ADAPTER_CONFIG_FILE, config)];
    if let Some(w) = weights {
        files.push((ADAPTER_WEIGHTS_FILE, w));
    }
    let scratch = Scratch::new(&files);
    let original = peft_registry();
    let mut trainable = original.clone();
    let result = load_peft_adapter(scratch.dir(), &peft_lora(), &mut trainable);
    match &result {
        Ok(loaded) => {
            assert_eq!(loaded.r, peft_lora().r);
            for (i, v) in trainable.values().iter().enumerate() {
                assert_eq!(v.shape(), original.value(i).shape(), "tensor {i}");
                assert!(v.iter().all(|x| x.is_finite()), "tensor {i}");
            }
        }
        Err(_) => {
            for (i, v) in trainable.values().iter().enumerate() {
                let same = v
                    .iter()
                    .zip(original.value(i))
                    .all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same, "a failed load changed tensor {i}");
            }
        }
    }
    result.map(|_| ())
}

// ---- federated checkpoints ----------------------------------------------------------------------

/// Shapes of the registry [`Reader::Checkpoint`] resumes into: the test suite's tiny network
/// (`tests/tiny_model`: W1 `[4, 3]`, b1 `[4]` as unit "hidden", W2 `[3, 4]`, b2 `[3]` as
/// "head"), whose checkpoints seed the corpus.
pub const CHECKPOINT_SHAPES: [&[usize]; 4] = [&[4, 3], &[4], &[3, 4], &[3]];

/// A registry of [`CHECKPOINT_SHAPES`], zero-filled.
pub fn checkpoint_registry() -> Trainable<f64> {
    let z = |i: usize| ArrayD::<f64>::zeros(IxDyn(CHECKPOINT_SHAPES[i]));
    let mut t = Trainable::new();
    t.push_unit("hidden", vec![("w1".into(), z(0)), ("b1".into(), z(1))])
        .expect("unit");
    t.push_unit("head", vec![("w2".into(), z(2)), ("b2".into(), z(3))])
        .expect("unit");
    t
}

/// A checkpoint file around `body` with the checksum it needs, as `save_checkpoint` writes it.
fn sealed_checkpoint(body: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let hex: String = Sha256::digest(body)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let head = format!(
        "{{\"format\":\"{CHECKPOINT_FORMAT}\",\"version\":{CHECKPOINT_VERSION},\"sha256\":\"{hex}\",\"checkpoint\":"
    );
    [head.as_bytes(), body, b"}"].concat()
}

/// `B` + a checkpoint body: sealed with its correct checksum first, so that the fuzzer reaches
/// the parser and the validation behind the checksum; anything else: a whole checkpoint file.
fn checkpoint(bytes: &[u8]) -> Result<()> {
    let sealed;
    let bytes = match bytes.split_first() {
        Some((b'B', body)) => {
            sealed = sealed_checkpoint(body);
            &sealed[..]
        }
        _ => bytes,
    };
    let scratch = Scratch::new(&[("checkpoint.json", bytes)]);
    let ckpt: Checkpoint = Simulation::<f64>::load_checkpoint(&scratch.file("checkpoint.json"))?;
    let own: Vec<usize> = ckpt.params.iter().map(Vec::len).collect();
    let self_consistent = ckpt.validate(&own);
    let registry = checkpoint_registry();
    let sizes: Vec<usize> = registry.values().iter().map(ArrayD::len).collect();
    let fits = ckpt.validate(&sizes);
    let config = ckpt.config.clone();
    let resumed = Simulation::resume(&config, registry.clone(), ckpt.clone())?;
    assert!(
        fits.is_ok() && self_consistent.is_ok(),
        "resumed an invalid checkpoint"
    );
    // a resume accepts only what a fresh run of the same configuration accepts
    if let Err(e) = Simulation::new(config, registry) {
        panic!("resumed a checkpoint whose configuration a fresh run refuses: {e}");
    }
    assert_eq!(resumed.round, ckpt.round);
    for (i, v) in resumed.global.values().iter().enumerate() {
        assert!(v.iter().all(|x| x.is_finite()), "tensor {i}");
        assert_eq!(v.as_slice().expect("standard layout"), &ckpt.params[i][..]);
    }
    let again = resumed.checkpoint();
    assert_eq!(again.round, ckpt.round);
    assert_eq!(again.params, ckpt.params);
    Ok(())
}

// ---- labelled data ------------------------------------------------------------------------------

/// The format and columns a [`Reader::Labelled`] input's first byte picks: bits 0–1 the format
/// (TSV, CSV, JSON Lines, and TSV again under the `.ndjson`-free name `.TSV`), bit 2 a text-pair
/// column `pair`, bits 3–4 a group column (none, `movie`, `speaker`, `group`). The text and
/// label columns are always `text` and `label` (the bundled rt_polarity and debates files).
pub fn labelled_setup(selector: u8) -> (&'static str, Columns) {
    let ext = ["tsv", "csv", "jsonl", "TSV"][usize::from(selector & 3)];
    let mut columns = Columns::new("text", "label");
    if selector & 4 != 0 {
        columns = columns.with_text_pair("pair");
    }
    match (selector >> 3) & 3 {
        1 => columns = columns.with_group("movie"),
        2 => columns = columns.with_group("speaker"),
        3 => columns = columns.with_group("group"),
        _ => {}
    }
    (ext, columns)
}

fn labelled(bytes: &[u8]) -> Result<()> {
    let Some((&selector, content)) = bytes.split_first() else {
        return Ok(());
    };
    let (ext, columns) = labelled_setup(selector);
    let name = format!("data.{ext}");
    let scratch = Scratch::new(&[(&name, content)]);
    let path = scratch.file(&name);
    let (examples, labels) = load_labelled(&path, &columns)?;
    assert!(!examples.is_empty());
    assert!(!labels.is_empty() && labels.len() <= MAX_CLASSES);
    for ex in &examples {
        assert!(
            ex.label < labels.len(),
            "label {} of {}",
            ex.label,
            labels.len()
        );
        assert!(!ex.text.is_empty());
        assert_eq!(ex.text_pair.is_some(), columns.text_pair.is_some());
        assert_eq!(ex.group.is_some(), columns.group.is_some());
    }
    for (id, name) in labels.names().iter().enumerate() {
        assert_eq!(labels.id(name), Some(id), "class `{name}`");
    }
    let against = load_labelled_against(&path, &columns, &labels)
        .expect("a file reads against its own classes");
    assert_eq!(against, examples);
    Ok(())
}
