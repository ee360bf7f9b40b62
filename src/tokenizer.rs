//! Text tokenizers: Hugging Face `tokenizer.json` files and the byte-level BPE of a GGUF file.
//!
//! [`TextTokenizer`] wraps a [`tokenizers::Tokenizer`] and gives spry's models what they need:
//!
//! - [`TextTokenizer::from_file`] loads a `tokenizer.json` (WordPiece for MiniLM, byte-level BPE
//!   for SmolLM2, ...). Padding and truncation baked into the file are **replaced** by
//!   [`TokenizerOptions`]: by default no truncation, and padding only to the longest sequence of a
//!   batch (MiniLM's file pads and truncates every sequence to 128 tokens).
//! - [`bpe_from_gguf_vocab`] builds the byte-level BPE that llama.cpp's GGUF metadata
//!   (`tokenizer.ggml.tokens`, `.token_type`, `.merges`) describes, from plain vectors, so it does
//!   not depend on a GGUF reader.
//! - [`TextTokenizer::encode`] gives one sequence's ids, type ids and mask,
//!   [`TextTokenizer::encode_pair`] a sentence pair's (type ids 1 on the second segment);
//!   [`TextTokenizer::encode_batch`] and [`TextTokenizer::encode_pair_batch`] pad a batch to its
//!   longest sequence and return `[B, T]` arrays plus a `[B, T]` boolean mask; [`TextTokenizer::decode`] maps ids back to text.

use std::path::Path;

use ndarray::Array2;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, PostProcessor, Tokenizer, TruncationParams};

use crate::{Error, Result};

/// The GGUF `tokenizer.ggml.token_type` of a control token (`<|im_start|>`, `<|endoftext|>`, ...):
/// these become special added tokens, matched before pre-tokenization and skippable in decoding.
pub const GGUF_TOKEN_TYPE_CONTROL: i32 = 3;

/// Settings that replace the padding and truncation stored in a tokenizer file.
///
/// The default is no truncation and the pad id of the file (0 when the file names none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenizerOptions {
    /// Truncate every sequence to at most this many tokens, special tokens included (`None`: never
    /// truncate). Must leave room for at least one token besides the special tokens the
    /// tokenizer adds.
    pub max_len: Option<usize>,
    /// Id that fills the padded positions of a batch (`None`: the file's pad id, else 0). Padded
    /// positions are excluded by the batch mask, so any valid id works.
    pub pad_id: Option<u32>,
}

impl TokenizerOptions {
    /// Sets [`max_len`](Self::max_len).
    #[must_use]
    pub fn with_max_len(mut self, max_len: usize) -> Self {
        self.max_len = Some(max_len);
        self
    }

    /// Sets [`pad_id`](Self::pad_id).
    #[must_use]
    pub fn with_pad_id(mut self, pad_id: u32) -> Self {
        self.pad_id = Some(pad_id);
        self
    }
}

/// One encoded sequence (no padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenEncoding {
    /// Token ids, special tokens included when requested.
    pub ids: Vec<u32>,
    /// Segment (token type) ids: all 0 for a single sequence; for a pair (BERT), 0 on the first
    /// segment and 1 on the second.
    pub type_ids: Vec<u32>,
    /// Attention mask: `true` for every real token (all `true` without padding).
    pub attention_mask: Vec<bool>,
}

impl TokenEncoding {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the sequence has no tokens.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// A batch of sequences right-padded to the longest one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenBatch {
    /// Token ids `[B, T]`; padded positions hold the pad id.
    pub ids: Array2<u32>,
    /// Segment ids `[B, T]`; padded positions hold 0.
    pub type_ids: Array2<u32>,
    /// `[B, T]`: `true` for real tokens, `false` for padding.
    pub mask: Array2<bool>,
    /// Length of each sequence before padding (`B` entries, the max is `T`).
    pub lengths: Vec<usize>,
}

/// A text tokenizer: a [`tokenizers::Tokenizer`] with spry's padding, truncation and errors.
#[derive(Clone, Debug)]
pub struct TextTokenizer {
    inner: Tokenizer,
    pad_id: u32,
    max_len: Option<usize>,
}

fn tok_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Tokenizer {
        msg: format!("{context}: {e}"),
    }
}

impl TextTokenizer {
    /// Loads a Hugging Face `tokenizer.json` and applies `opts` in place of the padding and
    /// truncation stored in the file.
    ///
    /// # Errors
    /// [`Error::Io`] if the file cannot be read; [`Error::Format`] (format `tokenizer.json`) if it
    /// is not a valid tokenizer description; [`Error::Tokenizer`] if it loads but panics when it
    /// encodes; [`Error::InvalidArgument`] if `opts` is invalid for this tokenizer (see
    /// [`TextTokenizer::with_options`]).
    pub fn from_file(path: impl AsRef<Path>, opts: TokenizerOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let format_error = |msg: String| Error::Format {
            path: path.to_path_buf(),
            format: "tokenizer.json",
            msg,
        };
        // the tokenizers crate panics on some malformed files (a decoder whose JSON does not
        // parse: `expect("Helper")`), so a panic here is a format error too
        let parsed = std::panic::catch_unwind(|| Tokenizer::from_bytes(&bytes)).map_err(|_| {
            format_error(
                "the tokenizers crate panicked while parsing it (a malformed component)".into(),
            )
        })?;
        let inner = parsed.map_err(|e| format_error(e.to_string()))?;
        let file_pad = inner.get_padding().map(|p| p.pad_id);
        Self::configure(inner, file_pad.unwrap_or(0), opts)
    }

    /// Wraps an already-built [`tokenizers::Tokenizer`], replacing its padding and truncation with
    /// `opts` (its own pad id is kept when `opts.pad_id` is `None`).
    ///
    /// # Errors
    /// As [`TextTokenizer::with_options`].
    pub fn from_tokenizer(inner: Tokenizer, opts: TokenizerOptions) -> Result<Self> {
        let file_pad = inner.get_padding().map(|p| p.pad_id);
        Self::configure(inner, file_pad.unwrap_or(0), opts)
    }

    /// Replaces the truncation and pad id (a `None` pad id keeps the current one).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `max_len` leaves no room for a token besides the special
    /// tokens the tokenizer adds, or if the pad id is not in the vocabulary.
    pub fn with_options(self, opts: TokenizerOptions) -> Result<Self> {
        let pad = self.pad_id;
        Self::configure(self.inner, pad, opts)
    }

    fn configure(mut inner: Tokenizer, default_pad: u32, opts: TokenizerOptions) -> Result<Self> {
        const OP: &str = "TextTokenizer::with_options";
        inner.with_padding(None);
        let trunc = match opts.max_len {
            None => None,
            Some(n) => {
                let added = inner
                    .get_post_processor()
                    .map_or(0, |pp| pp.added_tokens(false));
                if n <= added {
                    return Err(Error::invalid(
                        OP,
                        format!(
                            "max_len {n} leaves no room for text: the tokenizer adds {added} special tokens"
                        ),
                    ));
                }
                Some(TruncationParams {
                    max_length: n,
                    stride: 0,
                    ..TruncationParams::default()
                })
            }
        };
        inner
            .with_truncation(trunc)
            .map_err(|e| tok_err("setting truncation", e))?;
        // exercised once: a description that loads but panics when it encodes (a post-processor
        // naming a special token it does not define) is a typed error here, not a panic later
        let probe = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let single = inner.encode("a", true);
            let pair = inner.encode(("a", "b"), true);
            [single, pair]
        }));
        let Ok(probe) = probe else {
            return Err(Error::Tokenizer {
                msg: "the tokenizer panics when it encodes a text (a post-processor template \
                      naming a special token it does not define?)"
                    .into(),
            });
        };
        // every id the probes produce (the post-processor's special tokens among them) must be
        // one the vocabulary knows: a template or BertProcessing naming `[SEP]` with another
        // id would silently put a wrong token into every sequence
        for enc in probe.iter().flatten() {
            if let Some(&id) = enc
                .get_ids()
                .iter()
                .find(|&&id| inner.id_to_token(id).is_none())
            {
                return Err(Error::Tokenizer {
                    msg: format!(
                        "encoding a text gives id {id}, which is not in the vocabulary of {} \
                         tokens (a post-processor naming a special token by another id?)",
                        inner.get_vocab_size(true)
                    ),
                });
            }
        }
        let pad_id = opts.pad_id.unwrap_or(default_pad);
        if inner.id_to_token(pad_id).is_none() {
            return Err(Error::invalid(
                OP,
                format!(
                    "pad id {pad_id} is not in the vocabulary of {} tokens",
                    inner.get_vocab_size(true)
                ),
            ));
        }
        Ok(Self {
            inner,
            pad_id,
            max_len: opts.max_len,
        })
    }

    /// Encodes one text.
    ///
    /// `add_special_tokens` adds what the tokenizer's post-processor defines (`[CLS] … [SEP]` for
    /// MiniLM; nothing for SmolLM2, which has no automatic BOS). Special tokens written in the text
    /// (`<|im_start|>`) are always recognised. The result is truncated to
    /// [`max_len`](TokenizerOptions::max_len) when one is set, never padded.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the underlying tokenizer fails.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<TokenEncoding> {
        let enc = self
            .inner
            .encode(text, add_special_tokens)
            .map_err(|e| tok_err("encode", e))?;
        Ok(TokenEncoding {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            attention_mask: enc.get_attention_mask().iter().map(|&m| m != 0).collect(),
        })
    }

    /// Encodes a sentence pair: `[CLS] text [SEP] pair [SEP]` for BERT's post-processor, whose
    /// type ids are 0 on the first segment (with `[CLS]` and its `[SEP]`) and 1 on the second.
    /// With [`max_len`](TokenizerOptions::max_len) set, the `tokenizers` crate's longest-first
    /// truncation shares the room left by the special tokens: a text shorter than half of it is
    /// kept whole and the other cut, else both are cut to about half.
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the underlying tokenizer fails (for instance a `max_len` too short
    /// for a pair's special tokens).
    pub fn encode_pair(
        &self,
        text: &str,
        pair: &str,
        add_special_tokens: bool,
    ) -> Result<TokenEncoding> {
        let enc = self
            .inner
            .encode((text, pair), add_special_tokens)
            .map_err(|e| tok_err("encode_pair", e))?;
        Ok(TokenEncoding {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            attention_mask: enc.get_attention_mask().iter().map(|&m| m != 0).collect(),
        })
    }

    /// Encodes a batch and right-pads it to its longest sequence (dynamic padding).
    ///
    /// Sequences are encoded one after the other on the calling thread (no thread pool).
    /// An empty batch gives `[0, 0]` arrays.
    ///
    /// # Shapes
    /// - output `ids`, `type_ids`, `mask`: `[B, T]` with `B = texts.len()`, `T` the longest length
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the underlying tokenizer fails on any text.
    pub fn encode_batch<S: AsRef<str>>(
        &self,
        texts: &[S],
        add_special_tokens: bool,
    ) -> Result<TokenBatch> {
        let encs = texts
            .iter()
            .map(|t| self.encode(t.as_ref(), add_special_tokens))
            .collect::<Result<Vec<_>>>()?;
        Ok(self.pad(&encs))
    }

    /// Encodes a batch of texts, each alone (`(text, None)`, as [`TextTokenizer::encode`]) or
    /// with a second text (`(text, Some(pair))`, as [`TextTokenizer::encode_pair`]), and
    /// right-pads it to its longest sequence as [`TextTokenizer::encode_batch`] does.
    ///
    /// # Shapes
    /// - output `ids`, `type_ids`, `mask`: `[B, T]` with `B = pairs.len()`, `T` the longest length
    ///
    /// # Errors
    /// [`Error::Tokenizer`] if the underlying tokenizer fails on any input.
    pub fn encode_pair_batch<S: AsRef<str>>(
        &self,
        pairs: &[(S, Option<S>)],
        add_special_tokens: bool,
    ) -> Result<TokenBatch> {
        let encs = pairs
            .iter()
            .map(|(a, b)| match b {
                None => self.encode(a.as_ref(), add_special_tokens),
                Some(b) => self.encode_pair(a.as_ref(), b.as_ref(), add_special_tokens),
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(self.pad(&encs))
    }

    /// Right-pads encodings to the longest: pad id, type id 0 and mask `false` after each end.
    fn pad(&self, encs: &[TokenEncoding]) -> TokenBatch {
        let lengths: Vec<usize> = encs.iter().map(TokenEncoding::len).collect();
        let t = lengths.iter().copied().max().unwrap_or(0);
        let b = encs.len();
        let mut ids = Array2::from_elem((b, t), self.pad_id);
        let mut type_ids = Array2::zeros((b, t));
        let mut mask = Array2::from_elem((b, t), false);
        for (i, e) in encs.iter().enumerate() {
            for (j, ((&id, &ty), &m)) in e
                .ids
                .iter()
                .zip(&e.type_ids)
                .zip(&e.attention_mask)
                .enumerate()
            {
                ids[[i, j]] = id;
                type_ids[[i, j]] = ty;
                mask[[i, j]] = m;
            }
        }
        TokenBatch {
            ids,
            type_ids,
            mask,
            lengths,
        }
    }

    /// Decodes ids to text; `skip_special_tokens` drops special tokens (`<|im_end|>`, `[CLS]`).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if an id is not in the vocabulary; [`Error::Tokenizer`] if the
    /// decoder fails.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        if let Some(&bad) = ids.iter().find(|&&id| self.inner.id_to_token(id).is_none()) {
            return Err(Error::invalid(
                "TextTokenizer::decode",
                format!(
                    "id {bad} is not in the vocabulary of {} tokens",
                    self.vocab_size()
                ),
            ));
        }
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|e| tok_err("decode", e))
    }

    /// Id of a token (vocabulary entry or added token), if present.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Token string of an id, if present.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Number of tokens, added tokens included (30522 for MiniLM, 49152 for SmolLM2).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Id that fills the padded positions of [`TextTokenizer::encode_batch`].
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Truncation length, if any.
    pub fn max_len(&self) -> Option<usize> {
        self.max_len
    }
}

/// Builds the byte-level BPE tokenizer that llama.cpp's GGUF metadata describes.
///
/// `tokens`, `token_types` and `merges` are the arrays `tokenizer.ggml.tokens`,
/// `tokenizer.ggml.token_type` and `tokenizer.ggml.merges` (each merge is `"left right"`). The
/// result matches the `tokenizer.json` that `smollm2_from_gguf.py` writes (see `scripts/`):
///
/// - model: BPE over the vocabulary `tokens[i] → i` (a repeated token keeps its last id), the
///   merges in rank order, no unknown token, no byte fallback;
/// - pre-tokenizers: `Digits(individual_digits)` then `ByteLevel(add_prefix_space = false)` with
///   the GPT-2 regex;
/// - tokens of type [`GGUF_TOKEN_TYPE_CONTROL`] (3) become special added tokens;
/// - `ByteLevel` post-processor (it adds no token: there is no automatic BOS) and decoder;
/// - no padding and no truncation (set them with [`TextTokenizer::with_options`]); pad id 0.
///
/// # Errors
/// [`Error::InvalidArgument`] if `tokens` is empty or `token_types` has a different length;
/// [`Error::Tokenizer`] if a merge is not two space-separated tokens or names a token (or a merged
/// token) outside the vocabulary.
pub fn bpe_from_gguf_vocab(
    tokens: &[String],
    token_types: &[i32],
    merges: &[String],
) -> Result<TextTokenizer> {
    const OP: &str = "bpe_from_gguf_vocab";
    if tokens.is_empty() {
        return Err(Error::invalid(OP, "empty token list"));
    }
    if tokens.len() != token_types.len() {
        return Err(Error::invalid(
            OP,
            format!(
                "{} tokens but {} token types",
                tokens.len(),
                token_types.len()
            ),
        ));
    }
    let id_of = |i: usize| {
        u32::try_from(i).map_err(|_| Error::invalid(OP, format!("{i} tokens overflow u32")))
    };
    let mut vocab = Vocab::default();
    for (i, t) in tokens.iter().enumerate() {
        vocab.insert(t.clone(), id_of(i)?);
    }
    let merges: Merges = merges
        .iter()
        .enumerate()
        .map(|(rank, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| Error::Tokenizer {
                    msg: format!("{OP}: merge {rank} ({m:?}) is not two space-separated tokens"),
                })
        })
        .collect::<Result<_>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| tok_err(OP, e))?;

    let mut tk = Tokenizer::new(bpe);
    tk.with_pre_tokenizer(Some(Sequence::new(vec![
        PreTokenizerWrapper::from(Digits::new(true)),
        PreTokenizerWrapper::from(ByteLevel::new(false, true, true)),
    ])));
    tk.with_post_processor(Some(PostProcessorWrapper::from(ByteLevel::new(
        true, false, true,
    ))));
    tk.with_decoder(Some(DecoderWrapper::from(ByteLevel::new(true, true, true))));
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(token_types)
        .filter(|&(_, &ty)| ty == GGUF_TOKEN_TYPE_CONTROL)
        .map(|(t, _)| AddedToken::from(t.clone(), true))
        .collect();
    tk.add_special_tokens(&special);
    TextTokenizer::configure(tk, 0, TokenizerOptions::default())
}
