//! Labels texts with a trained classifier: a BERT-family folder plus the adapter folder a
//! `federated` run wrote (`adapter/` or `adapter-best/`: PEFT's files and
//! `classifier_config.json` with the class names).
//!
//! ```text
//! cargo run --release --example classify -- --adapter runs/spry/adapter "A gripping, funny film."
//! cargo run --release --example classify -- --adapter runs/spry/adapter --file texts.txt --json
//! echo "Dull and far too long." | cargo run --release --example classify -- --adapter runs/spry/adapter
//! ```
//! Texts come from the arguments, else `--file` (one per line), else standard input (one per
//! line). Prints `label<TAB>probability<TAB>text` per text, or with `--json` one JSON object per
//! line (`text`, `label`, `id`, `probabilities` by class name).

use std::io::BufRead;
use std::path::PathBuf;

use clap::Parser;
use spry::models::pretrained::{class_probabilities, load_bert_classifier_with_adapter};
use spry::modules::read_peft_config;
use spry::recipes::bundled::minilm_dir;

/// Label texts with a BERT-family classifier adapter trained by `federated`.
#[derive(Parser)]
struct Args {
    /// Texts to label (default: `--file`, else standard input, one per line).
    texts: Vec<String>,
    /// The adapter folder (`adapter_config.json`, `adapter_model.safetensors`,
    /// `classifier_config.json`).
    #[arg(long)]
    adapter: PathBuf,
    /// The base model folder (default: the adapter's `base_model_name_or_path` if it is a
    /// folder, else all-MiniLM-L6-v2 in the assets folder).
    #[arg(long)]
    model_dir: Option<PathBuf>,
    /// Read the texts from this file, one per line.
    #[arg(long)]
    file: Option<PathBuf>,
    /// One JSON object per line instead of tab-separated text.
    #[arg(long)]
    json: bool,
    /// Texts per forward pass.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("classify: error: {e}");
        std::process::exit(1);
    }
}

fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let texts: Vec<String> = if !args.texts.is_empty() {
        args.texts
    } else if let Some(f) = &args.file {
        std::fs::read_to_string(f)?
            .lines()
            .map(str::to_string)
            .collect()
    } else {
        std::io::stdin().lock().lines().collect::<Result<_, _>>()?
    };
    let base = read_peft_config(&args.adapter)?
        .base_model_name_or_path
        .map(PathBuf::from)
        .filter(|p| p.is_dir());
    let model_dir = match args.model_dir.or(base) {
        Some(dir) => dir,
        None => minilm_dir()?,
    };
    let (model, params, tok, config) =
        load_bert_classifier_with_adapter(&model_dir, &args.adapter)?;
    let probs = class_probabilities(&model, &params, &tok, &texts, args.batch)?;
    for (text, p) in texts.iter().zip(probs.rows()) {
        let id = spry::models::argmax_rows(p.insert_axis(spry::ndarray::Axis(0)))[0];
        if args.json {
            let by_name: serde_json::Map<String, serde_json::Value> = (0..p.len())
                .map(|j| (config.label(j), p[j].into()))
                .collect();
            let line = serde_json::json!({
                "text": text, "label": config.label(id), "id": id, "probabilities": by_name,
            });
            println!("{line}");
        } else {
            println!("{}\t{:.4}\t{text}", config.label(id), p[id]);
        }
    }
    Ok(())
}
