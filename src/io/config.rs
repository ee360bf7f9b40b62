//! Model hyper-parameters from Hugging Face `config.json` (and, for Llama, from GGUF metadata),
//! validated so that a model constructor can trust them.
//!
//! Structural sizes (vocabulary, hidden size, layers, heads, FFN size) are required: a file
//! without them is almost surely not a model config, and Hugging Face's silent fallbacks to the
//! base-size defaults would only surface later as confusing shape errors. The other fields take
//! Hugging Face's defaults when absent. Unknown keys are ignored.

use std::path::Path;

use serde::Deserialize;

use super::gguf::GgufFile;
use crate::{Error, Result};

/// Label of the path in errors about configs that do not come from a file.
const IN_MEMORY: &str = "<in-memory config>";

fn config_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_json(&text, path)
}

fn parse_json<T: serde::de::DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    serde_json::from_str(text).map_err(|e| config_error(path, e.to_string()))
}

/// The feed-forward activation named by `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Activation {
    /// Exact GELU, `x·Φ(x)` with the error function (`"gelu"`).
    #[serde(rename = "gelu")]
    Gelu,
    /// Tanh-approximated GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
    /// ReLU (`"relu"`).
    #[serde(rename = "relu")]
    Relu,
    /// SiLU / swish, `x·σ(x)` (`"silu"`, `"swish"`); Llama's SwiGLU gate.
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

// ---- BERT ----------------------------------------------------------------------------------

/// Hyper-parameters of a BERT encoder (`model_type: "bert"`, e.g. all-MiniLM-L6-v2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BertConfig {
    /// Vocabulary size (rows of `embeddings.word_embeddings.weight`).
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// Number of encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// FFN inner size.
    pub intermediate_size: usize,
    /// FFN activation (default exact GELU).
    #[serde(default = "default_gelu")]
    pub hidden_act: Activation,
    /// Learned absolute positions (default 512).
    #[serde(default = "default_512")]
    pub max_position_embeddings: usize,
    /// Token-type (segment) vocabulary (default 2).
    #[serde(default = "default_2")]
    pub type_vocab_size: usize,
    /// LayerNorm ε (default 1e-12).
    #[serde(default = "default_ln_eps")]
    pub layer_norm_eps: f64,
    /// Padding token id (default 0; `null` in the file gives `None`).
    #[serde(default = "default_pad_0")]
    pub pad_token_id: Option<u32>,
    /// Position embedding kind (default `"absolute"`, the only one supported).
    #[serde(default = "default_absolute")]
    pub position_embedding_type: String,
    /// `model_type`, if the file names it (must be `"bert"`).
    #[serde(default)]
    pub model_type: Option<String>,
}

fn default_gelu() -> Activation {
    Activation::Gelu
}
fn default_512() -> usize {
    512
}
fn default_2() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}
fn default_pad_0() -> Option<u32> {
    Some(0)
}
fn default_absolute() -> String {
    "absolute".to_owned()
}

/// The largest size any model dimension may declare (2²⁴: a vocabulary of 16.7 M tokens, a
/// context of 16.7 M positions), and the most layers (4096): far above every real checkpoint,
/// far below what would make a loader allocate without bound.
pub const MAX_DIMENSION: usize = 1 << 24;
/// The most layers a config may declare.
pub const MAX_LAYERS: usize = 4096;
/// The largest normalisation ε a config may declare (real ones are 1e-12 to 1e-5).
pub const MAX_NORM_EPS: f64 = 0.1;

/// The largest RoPE base θ a config may declare.
pub const MAX_ROPE_THETA: f64 = 1e10;

/// Checks `sizes` are in `1..=MAX_DIMENSION` (layer counts in `1..=MAX_LAYERS`).
fn check_sizes(sizes: &[(&str, usize)]) -> std::result::Result<(), String> {
    for &(name, v) in sizes {
        let max = if name.ends_with("layers") {
            MAX_LAYERS
        } else {
            MAX_DIMENSION
        };
        if v == 0 || v > max {
            return Err(format!("{name} {v} outside 1..={max}"));
        }
    }
    Ok(())
}

/// Checks a normalisation ε is in `(0, MAX_NORM_EPS]`.
fn check_eps(name: &str, eps: f64) -> std::result::Result<(), String> {
    if eps.is_finite() && eps > 0.0 && eps <= MAX_NORM_EPS {
        Ok(())
    } else {
        Err(format!("{name} {eps} outside (0, {MAX_NORM_EPS}]"))
    }
}

impl BertConfig {
    /// Reads and validates a Hugging Face `config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] if unreadable; [`Error::Config`] naming the file if the JSON is invalid, a
    /// required field is missing, or validation fails (see [`BertConfig::validate`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let c: Self = read_json(path)?;
        c.validate_at(path)?;
        Ok(c)
    }

    /// Parses and validates config JSON held in a string.
    ///
    /// # Errors
    /// As [`BertConfig::from_file`], without the I/O.
    pub fn from_json(json: &str) -> Result<Self> {
        let path = Path::new(IN_MEMORY);
        let c: Self = parse_json(json, path)?;
        c.validate_at(path)?;
        Ok(c)
    }

    /// Checks the values are consistent and supported: all sizes in `1..=`[`MAX_DIMENSION`]
    /// (layers up to [`MAX_LAYERS`]), `hidden_size` divisible by `num_attention_heads`, ε in
    /// `(0, `[`MAX_NORM_EPS`]`]`, pad id inside the vocabulary,
    /// absolute positions, `model_type` `"bert"` if given.
    ///
    /// # Errors
    /// [`Error::Config`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.validate_at(Path::new(IN_MEMORY))
    }

    fn validate_at(&self, path: &Path) -> Result<()> {
        let err = |msg: String| Err(config_error(path, msg));
        check_sizes(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("max_position_embeddings", self.max_position_embeddings),
            ("type_vocab_size", self.type_vocab_size),
        ])
        .or_else(err)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        check_eps("layer_norm_eps", self.layer_norm_eps).or_else(err)?;
        if let Some(pad) = self.pad_token_id
            && pad as usize >= self.vocab_size
        {
            return err(format!(
                "pad_token_id {pad} is outside the vocabulary of {}",
                self.vocab_size
            ));
        }
        if self.position_embedding_type != "absolute" {
            return err(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            ));
        }
        if let Some(mt) = &self.model_type
            && mt != "bert"
        {
            return err(format!("model_type `{mt}` is not `bert`"));
        }
        Ok(())
    }

    /// Size of one attention head, `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

// ---- Llama ---------------------------------------------------------------------------------

/// Hyper-parameters of a Llama-architecture decoder (`model_type: "llama"`, e.g.
/// SmolLM2-135M-Instruct): RMSNorm, grouped-query attention with RoPE, SwiGLU FFN.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// FFN inner size (rows of the gate and up projections).
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads per layer.
    pub num_attention_heads: usize,
    /// Key/value heads per layer (default: `num_attention_heads`, plain multi-head attention).
    pub num_key_value_heads: usize,
    /// FFN gate activation (default and only supported: SiLU).
    pub hidden_act: Activation,
    /// Longest context the model was trained for (default 2048).
    pub max_position_embeddings: usize,
    /// RMSNorm ε (default 1e-6).
    pub rms_norm_eps: f64,
    /// RoPE base θ (default 10000).
    pub rope_theta: f64,
    /// Whether the LM head reuses the token embedding (default false).
    pub tie_word_embeddings: bool,
    /// Whether q/k/v/o projections have biases (default false).
    pub attention_bias: bool,
    /// Whether the FFN projections have biases (default false).
    pub mlp_bias: bool,
    /// Beginning-of-sequence token id (default 1).
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token ids (the file may give one id or a list; default `[2]`).
    pub eos_token_ids: Vec<u32>,
    /// Padding token id (default none).
    pub pad_token_id: Option<u32>,
}

/// `eos_token_id` as Hugging Face writes it: one id or a list.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// The serde image of a Llama `config.json`.
#[derive(Deserialize)]
struct RawLlamaConfig {
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_silu")]
    hidden_act: Activation,
    #[serde(default = "default_2048")]
    max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    rope_theta: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "default_bos")]
    bos_token_id: Option<u32>,
    #[serde(default = "default_eos")]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    rope_scaling: Option<serde_json::Value>,
    #[serde(default)]
    model_type: Option<String>,
}

fn default_silu() -> Activation {
    Activation::Silu
}
fn default_2048() -> usize {
    2048
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_bos() -> Option<u32> {
    Some(1)
}
fn default_eos() -> Option<OneOrMany> {
    Some(OneOrMany::One(2))
}

impl RawLlamaConfig {
    fn resolve(self, path: &Path) -> Result<LlamaConfig> {
        let err = |msg: String| Err(config_error(path, msg));
        if let Some(mt) = &self.model_type
            && mt != "llama"
        {
            return err(format!("model_type `{mt}` is not `llama`"));
        }
        if let Some(scaling) = &self.rope_scaling
            && !scaling.is_null()
        {
            return err(format!("rope_scaling {scaling} is not supported"));
        }
        let c = LlamaConfig {
            vocab_size: self.vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_hidden_layers: self.num_hidden_layers,
            num_attention_heads: self.num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(self.num_attention_heads),
            hidden_act: self.hidden_act,
            max_position_embeddings: self.max_position_embeddings,
            rms_norm_eps: self.rms_norm_eps,
            rope_theta: self.rope_theta,
            tie_word_embeddings: self.tie_word_embeddings,
            attention_bias: self.attention_bias,
            mlp_bias: self.mlp_bias,
            bos_token_id: self.bos_token_id,
            eos_token_ids: match self.eos_token_id {
                None => vec![],
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
            },
            pad_token_id: self.pad_token_id,
        };
        c.validate_at(path)?;
        if let Some(hd) = self.head_dim
            && hd != c.head_dim()
        {
            return err(format!(
                "head_dim {hd} differs from hidden_size / num_attention_heads = {}: not supported",
                c.head_dim()
            ));
        }
        Ok(c)
    }
}

impl LlamaConfig {
    /// Reads and validates a Hugging Face `config.json`.
    ///
    /// # Errors
    /// [`Error::Io`] if unreadable; [`Error::Config`] naming the file if the JSON is invalid, a
    /// required field is missing, `rope_scaling` is set, `head_dim` is not
    /// `hidden_size / num_attention_heads`, or validation fails (see [`LlamaConfig::validate`]).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        read_json::<RawLlamaConfig>(path)?.resolve(path)
    }

    /// Parses and validates config JSON held in a string.
    ///
    /// # Errors
    /// As [`LlamaConfig::from_file`], without the I/O.
    pub fn from_json(json: &str) -> Result<Self> {
        let path = Path::new(IN_MEMORY);
        parse_json::<RawLlamaConfig>(json, path)?.resolve(path)
    }

    /// The configuration stored in a GGUF file's `llama.*` metadata (as llama.cpp reads it).
    ///
    /// | field | key |
    /// |---|---|
    /// | `hidden_size` | `llama.embedding_length` |
    /// | `intermediate_size` | `llama.feed_forward_length` |
    /// | `num_hidden_layers` | `llama.block_count` |
    /// | `num_attention_heads` | `llama.attention.head_count` |
    /// | `num_key_value_heads` | `llama.attention.head_count_kv` (default: head count) |
    /// | `rms_norm_eps` | `llama.attention.layer_norm_rms_epsilon` |
    /// | `rope_theta` | `llama.rope.freq_base` (default 10000) |
    /// | `max_position_embeddings` | `llama.context_length` |
    /// | `vocab_size` | `llama.vocab_size`, else the length of `tokenizer.ggml.tokens`, else the rows of `token_embd.weight` |
    /// | `tie_word_embeddings` | true iff there is no `output.weight` tensor |
    /// | token ids | `tokenizer.ggml.{bos,eos,padding}_token_id` |
    ///
    /// `hidden_act` is SiLU and there are no biases (llama.cpp's Llama graph).
    ///
    /// # Errors
    /// [`Error::Config`] naming the file if `general.architecture` is not `llama`, a required
    /// key is missing or has the wrong type, `llama.rope.dimension_count` or
    /// `llama.attention.key_length` disagree with `hidden_size / num_attention_heads`, the
    /// vocabulary sources disagree, a `llama.rope.scaling.type` other than `none` is set, or
    /// validation fails.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let err = |msg: String| config_error(path, msg);
        let arch = gguf
            .metadata("general.architecture")
            .ok_or_else(|| err("missing metadata key `general.architecture`".into()))?;
        if arch.as_str() != Some("llama") {
            return Err(err(format!(
                "general.architecture is {arch:?}, not \"llama\""
            )));
        }
        let uint = |key: &str| -> Result<Option<usize>> {
            match gguf.metadata(key) {
                None => Ok(None),
                Some(v) => v
                    .to_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .map(Some)
                    .ok_or_else(|| {
                        err(format!("`{key}` must be a non-negative integer, got {v:?}"))
                    }),
            }
        };
        let float = |key: &str| -> Result<Option<f64>> {
            match gguf.metadata(key) {
                None => Ok(None),
                Some(v) => v
                    .to_f64()
                    .map(Some)
                    .ok_or_else(|| err(format!("`{key}` must be a number, got {v:?}"))),
            }
        };
        let token_id = |key: &str| -> Result<Option<u32>> {
            uint(key)?
                .map(|v| u32::try_from(v).map_err(|_| err(format!("`{key}` {v} is too large"))))
                .transpose()
        };
        let missing = |key: &str| err(format!("missing metadata key `{key}`"));
        let req_uint = |key: &str| uint(key)?.ok_or_else(|| missing(key));

        if let Some(scaling) = gguf.metadata("llama.rope.scaling.type")
            && scaling.as_str() != Some("none")
        {
            return Err(err(format!(
                "llama.rope.scaling.type {scaling:?} is not supported"
            )));
        }

        let num_attention_heads = req_uint("llama.attention.head_count")?;
        let tokens = gguf
            .metadata("tokenizer.ggml.tokens")
            .map(|v| {
                v.as_string_array()
                    .map(<[String]>::len)
                    .ok_or_else(|| err("`tokenizer.ggml.tokens` is not an array of strings".into()))
            })
            .transpose()?;
        let emb_rows = gguf
            .tensor_info("token_embd.weight")
            .ok()
            .and_then(|t| t.shape().first().copied());
        let vocab_size = match (uint("llama.vocab_size")?, tokens, emb_rows) {
            (Some(v), _, _) | (None, Some(v), _) | (None, None, Some(v)) => v,
            (None, None, None) => {
                return Err(err(
                    "no vocabulary size: none of `llama.vocab_size`, `tokenizer.ggml.tokens`, \
                     `token_embd.weight`"
                        .into(),
                ));
            }
        };
        for (source, n) in [
            ("tokenizer.ggml.tokens", tokens),
            ("token_embd.weight", emb_rows),
        ] {
            if let Some(n) = n
                && n != vocab_size
            {
                return Err(err(format!(
                    "vocabulary size {vocab_size} disagrees with {source} ({n})"
                )));
            }
        }

        let c = LlamaConfig {
            vocab_size,
            hidden_size: req_uint("llama.embedding_length")?,
            intermediate_size: req_uint("llama.feed_forward_length")?,
            num_hidden_layers: req_uint("llama.block_count")?,
            num_attention_heads,
            num_key_value_heads: uint("llama.attention.head_count_kv")?
                .unwrap_or(num_attention_heads),
            hidden_act: Activation::Silu,
            max_position_embeddings: req_uint("llama.context_length")?,
            rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon")?
                .ok_or_else(|| missing("llama.attention.layer_norm_rms_epsilon"))?,
            rope_theta: float("llama.rope.freq_base")?.unwrap_or(10000.0),
            tie_word_embeddings: gguf.tensor_info("output.weight").is_err(),
            attention_bias: false,
            mlp_bias: false,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id")?
                .into_iter()
                .collect(),
            pad_token_id: token_id("tokenizer.ggml.padding_token_id")?,
        };
        c.validate_at(path)?;
        for key in [
            "llama.rope.dimension_count",
            "llama.attention.key_length",
            "llama.attention.value_length",
        ] {
            if let Some(d) = uint(key)?
                && d != c.head_dim()
            {
                return Err(err(format!(
                    "`{key}` {d} differs from the head size {}: not supported",
                    c.head_dim()
                )));
            }
        }
        Ok(c)
    }

    /// Checks the values are consistent and supported: all sizes in `1..=`[`MAX_DIMENSION`]
    /// (layers up to [`MAX_LAYERS`]), `hidden_size` divisible by `num_attention_heads` into heads
    /// of even size (RoPE rotates pairs), `num_attention_heads` divisible by
    /// `num_key_value_heads`, SiLU activation, ε in `(0, `[`MAX_NORM_EPS`]`]`, θ in
    /// `[1, `[`MAX_ROPE_THETA`]`]`, token ids inside the vocabulary.
    ///
    /// # Errors
    /// [`Error::Config`] saying what is wrong.
    pub fn validate(&self) -> Result<()> {
        self.validate_at(Path::new(IN_MEMORY))
    }

    fn validate_at(&self, path: &Path) -> Result<()> {
        let err = |msg: String| Err(config_error(path, msg));
        check_sizes(&[
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ])
        .or_else(err)?;
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return err(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return err(format!(
                "head size {} is odd; RoPE needs an even head size",
                self.head_dim()
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return err(format!(
                "num_attention_heads {} is not divisible by num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.hidden_act != Activation::Silu {
            return err(format!(
                "hidden_act {:?} is not supported for Llama (only silu)",
                self.hidden_act
            ));
        }
        check_eps("rms_norm_eps", self.rms_norm_eps).or_else(err)?;
        // RoPE bases in use run from 1e4 to about 1e8
        if !(self.rope_theta.is_finite() && (1.0..=MAX_ROPE_THETA).contains(&self.rope_theta)) {
            return err(format!(
                "rope_theta {} outside [1, {MAX_ROPE_THETA}]",
                self.rope_theta
            ));
        }
        let ids = self
            .bos_token_id
            .iter()
            .map(|&id| ("bos_token_id", id))
            .chain(self.eos_token_ids.iter().map(|&id| ("eos_token_id", id)))
            .chain(self.pad_token_id.iter().map(|&id| ("pad_token_id", id)));
        for (name, id) in ids {
            if id as usize >= self.vocab_size {
                return err(format!(
                    "{name} {id} is outside the vocabulary of {}",
                    self.vocab_size
                ));
            }
        }
        Ok(())
    }

    /// Size of one attention head, `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Query heads sharing one key/value head, `num_attention_heads / num_key_value_heads`.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads
    }

    /// Rows of the key and value projections, `num_key_value_heads · head_dim`.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim()
    }
}
