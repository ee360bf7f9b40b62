//! Sentence embeddings with all-MiniLM-L6-v2: prints the cosine similarity of every pair of the
//! given sentences.
//!
//! Run: `cargo run --release --example embed -- "The weather is lovely today." "It's so sunny
//! outside!" "He drove to the stadium." [--model-dir DIR] [--adapter DIR] [--json]`
//!
//! Prints a table (or, with `--json`, one line `{"cosine": [[...]]}`) on stdout; load time,
//! forward time and peak RSS on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use spry::TokenizerOptions;
use spry::models::pretrained::{cosine_matrix, load_bert_with_adapter};
use spry::recipes::bundled::{MINILM_MAX_LEN, load_sentence_encoder, minilm_dir};

/// Cosine similarities of sentence embeddings (all-MiniLM-L6-v2).
#[derive(Parser)]
struct Args {
    /// The sentences to compare.
    #[arg(required = true)]
    sentences: Vec<String>,
    /// Folder with config.json, model.safetensors and tokenizer.json
    /// [default: <assets>/all-MiniLM-L6-v2].
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// A LoRA adapter folder to apply first: one a `federated` run wrote (its encoder's
    /// adapters; the classification head is not used) or any PEFT adapter of this encoder.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Print one JSON line `{"cosine": [[...]]}` instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct JsonOut {
    cosine: Vec<Vec<f32>>,
}

fn run(args: Args) -> spry::Result<()> {
    let dir = match args.model_dir {
        Some(dir) => dir,
        None => minilm_dir()?,
    };
    let t = Instant::now();
    let (bert, trainable, tok) = match &args.adapter {
        Some(adapter) => load_bert_with_adapter(
            &dir,
            adapter,
            TokenizerOptions::default().with_max_len(MINILM_MAX_LEN),
        )?,
        None => load_sentence_encoder(&dir)?,
    };
    let load = t.elapsed();
    let t = Instant::now();
    let cos = cosine_matrix(&bert, &trainable, &tok, &args.sentences)?;
    let forward = t.elapsed();
    if args.json {
        let out = JsonOut {
            cosine: cos.rows().into_iter().map(|r| r.to_vec()).collect(),
        };
        println!(
            "{}",
            serde_json::to_string(&out).expect("numbers serialise")
        );
    } else {
        for (i, s) in args.sentences.iter().enumerate() {
            println!("[{i}] {s}");
        }
        println!();
        let header: String = (0..cos.nrows()).map(|j| format!("{:>8}", j)).collect();
        println!("{:>6}{header}", "cosine");
        for (i, row) in cos.rows().into_iter().enumerate() {
            let cells: String = row.iter().map(|v| format!("{v:>8.4}")).collect();
            println!("{:>6}{cells}", format!("[{i}]"));
        }
    }
    let rss = spry::metrics::peak_rss_mib().map_or("n/a".to_string(), |m| format!("{m:.0} MiB"));
    eprintln!(
        "embed: loaded {} in {:.0} ms; {} sentences embedded in {:.1} ms; peak RSS {rss}",
        dir.display(),
        load.as_secs_f64() * 1e3,
        args.sentences.len(),
        forward.as_secs_f64() * 1e3,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("embed: error: {e}");
            ExitCode::FAILURE
        }
    }
}
