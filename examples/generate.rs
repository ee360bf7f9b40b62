//! Greedy chat completion with SmolLM2-135M-Instruct (GGUF), optionally with a PEFT LoRA adapter.
//!
//! Run: `cargo run --release --example generate -- "What is the capital of France?"
//! [--max-new 64] [--gguf PATH] [--adapter DIR] [--json]`
//!
//! Wraps the prompt in SmolLM2's chat template, generates greedily until `<|im_end|>` (or
//! `--max-new` tokens) and prints the completion (or, with `--json`, one line
//! `{"ids": [...], "text": "..."}`) on stdout; load time, generation time and peak RSS on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use spry::models::pretrained::{
    load_llama_gguf, load_llama_gguf_with_adapter, no_lora, require_file,
};
use spry::recipes::bundled::{chat_complete, smollm2_gguf};

/// Greedy chat completion with SmolLM2-135M-Instruct.
#[derive(Parser)]
struct Args {
    /// The user's message.
    prompt: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 64)]
    max_new: usize,
    /// The GGUF file [default: <assets>/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf].
    #[arg(long)]
    gguf: Option<PathBuf>,
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors) to apply.
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Print one JSON line `{"ids": [...], "text": "..."}` instead of the text.
    #[arg(long)]
    json: bool,
}

#[derive(serde::Serialize)]
struct JsonOut<'a> {
    ids: &'a [u32],
    text: &'a str,
}

fn run(args: Args) -> spry::Result<()> {
    let path = match args.gguf {
        Some(path) => path,
        None => smollm2_gguf()?,
    };
    require_file(&path)?;
    let t = Instant::now();
    let (mut model, trainable, tok) = match &args.adapter {
        Some(dir) => load_llama_gguf_with_adapter(&path, dir)?,
        None => load_llama_gguf(&path, &no_lora(), 0)?,
    };
    if let Some(dir) = &args.adapter {
        // fold the adapter into the weights: inference then costs what the base model costs
        model.merge_adapters(&trainable)?;
        let l = model.lora();
        eprintln!(
            "generate: adapter {} (r = {}, lora_alpha = {}, targets {:?}) merged",
            dir.display(),
            l.r,
            l.lora_alpha,
            l.target_modules
        );
    }
    let load = t.elapsed();
    let t = Instant::now();
    let out = chat_complete(&model, &trainable, &tok, &args.prompt, args.max_new)?;
    let forward = t.elapsed();
    if args.json {
        let line = JsonOut {
            ids: &out.ids,
            text: &out.text,
        };
        println!(
            "{}",
            serde_json::to_string(&line).expect("ids and text serialise")
        );
    } else {
        println!("{}", out.text);
    }
    let rss = spry::metrics::peak_rss_mib().map_or("n/a".to_string(), |m| format!("{m:.0} MiB"));
    let secs = forward.as_secs_f64();
    eprintln!(
        "generate: loaded {} in {:.2} s; prompt {} tokens, {} new tokens in {:.2} s \
         ({:.1} tokens/s); peak RSS {rss}",
        path.display(),
        load.as_secs_f64(),
        out.prompt_tokens,
        out.ids.len(),
        secs,
        out.ids.len() as f64 / secs,
    );
    Ok(())
}

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("generate: error: {e}");
            ExitCode::FAILURE
        }
    }
}
