//! The checkpoints and data `scripts/fetch_assets.sh` downloads, and what the examples do with
//! them: their paths inside the assets folder ([`assets_dir`]), all-MiniLM-L6-v2's truncation
//! length, SmolLM2's chat template, a timing helper. Tests use the same functions, so they check
//! exactly what the examples print.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::io::assets_dir;
use crate::models::bert::Bert;
use crate::models::llama::Llama;
use crate::models::pretrained::{BERT_DIR_FILES, load_bert_dir, no_lora, require_files};
use crate::modules::Trainable;
use crate::tokenizer::{TextTokenizer, TokenizerOptions};
use crate::{Error, Result};

/// Folder of all-MiniLM-L6-v2 inside the assets folder.
pub const MINILM_DIR: &str = "all-MiniLM-L6-v2";
/// The SmolLM2-135M-Instruct GGUF file inside the assets folder.
pub const SMOLLM2_GGUF: &str = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";
/// Truncation length of all-MiniLM-L6-v2 (sentence-transformers' `max_seq_length`).
pub const MINILM_MAX_LEN: usize = 256;
/// SmolLM2's end-of-turn token, where a chat completion stops.
pub const IM_END: &str = "<|im_end|>";

/// `assets_dir()/all-MiniLM-L6-v2`.
pub fn minilm_dir() -> PathBuf {
    assets_dir().join(MINILM_DIR)
}

/// `assets_dir()/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf`.
pub fn smollm2_gguf() -> PathBuf {
    assets_dir().join(SMOLLM2_GGUF)
}

/// Loads a sentence-embedding BERT folder (all-MiniLM-L6-v2 layout) with no adapter and
/// truncation at [`MINILM_MAX_LEN`] tokens, after checking that its files are there.
///
/// # Errors
/// As [`require_files`] (with the hint to fetch the assets) and [`load_bert_dir`].
pub fn load_sentence_encoder(dir: &Path) -> Result<(Bert<f32>, Trainable<f32>, TextTokenizer)> {
    require_files(dir, &BERT_DIR_FILES)?;
    load_bert_dir(
        dir,
        &no_lora(),
        0,
        TokenizerOptions::default().with_max_len(MINILM_MAX_LEN),
    )
}

/// SmolLM2's chat template for one user turn, ready for the assistant's answer:
/// `<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n`.
pub fn chat_prompt(text: &str) -> String {
    format!("<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")
}

/// A greedy chat completion.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// Number of tokens of the templated prompt.
    pub prompt_tokens: usize,
    /// The generated ids, the final `<|im_end|>` included when generation stopped on it.
    pub ids: Vec<u32>,
    /// The generated text, special tokens dropped.
    pub text: String,
}

/// Answers `text` as SmolLM2's assistant: wraps it in [`chat_prompt`], generates greedily with
/// [`Llama::generate_greedy`] until `<|im_end|>` or `max_new` tokens, and decodes.
///
/// # Errors
/// [`Error::Tokenizer`] if the tokenizer has no `<|im_end|>` token; tokenizer and generation
/// errors (a prompt plus `max_new` longer than the context).
pub fn chat_complete(
    model: &Llama<f32>,
    trainable: &Trainable<f32>,
    tok: &TextTokenizer,
    text: &str,
    max_new: usize,
) -> Result<Completion> {
    let stop = tok.token_to_id(IM_END).ok_or_else(|| Error::Tokenizer {
        msg: format!("the vocabulary has no {IM_END} token: not a ChatML model"),
    })?;
    let prompt = tok.encode(&chat_prompt(text), true)?.ids;
    let ids = model.generate_greedy(&prompt, max_new, &[stop], trainable)?;
    let text = tok.decode(&ids, true)?;
    Ok(Completion {
        prompt_tokens: prompt.len(),
        ids,
        text,
    })
}

/// Runs `f` `warmup` times untimed, then `reps` times (at least once), and returns the median
/// wall time.
pub fn median_time(warmup: usize, reps: usize, mut f: impl FnMut()) -> Duration {
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..reps.max(1))
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[times.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_is_the_middle_sample() {
        let mut i = 0u64;
        let d = median_time(1, 5, || {
            i += 1;
            std::thread::sleep(Duration::from_millis(1));
        });
        assert_eq!(i, 6);
        assert!(d >= Duration::from_millis(1));
        // zero repetitions still time one
        let mut j = 0;
        median_time(0, 0, || j += 1);
        assert_eq!(j, 1);
    }
}
