//! Federated next-token finetuning of a Llama-family GGUF model on a text with Spry (or
//! FedMeZO): a command line over [`spry::recipes::language_model::LanguageModelRun`]. By default
//! SmolLM2-135M-Instruct on Hamlet: LoRA on q_proj/v_proj of the top six layers, forward
//! gradients, clients holding disjoint parts of the play. Prints the held-out NLL and a greedy
//! continuation of a held-out prompt before and after, and writes `config.json`, `metrics.csv`,
//! `checkpoint.json` (`--resume`), `summary.json` and the trained adapter in PEFT's format
//! (`adapter/`, and `adapter-best/` for the lowest evaluated NLL; `generate --adapter` loads it).
//!
//! ```text
//! cargo run --release --example finetune_lm -- --rounds 20 --eval-every 3 --out runs/lm
//! cargo run --release --example finetune_lm -- --config lm.toml --out runs/lm2
//! ```

use std::path::PathBuf;

use spry::recipes::config::parse_command_line;
use spry::recipes::language_model::LanguageModelRun;

fn main() {
    if let Err(e) = run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let (settings, invocation) = parse_command_line::<LanguageModelRun>(
        "finetune_lm",
        "Federated next-token finetuning of a Llama-family GGUF model on a text with Spry.",
    )?;
    let out = invocation
        .out
        .unwrap_or_else(|| PathBuf::from("runs/finetune_lm"));
    let (gguf, text) = settings.files();
    eprintln!(
        "{} on {} with {}: {} rounds, output in {}",
        settings.method,
        text.display(),
        gguf.display(),
        settings.rounds,
        out.display()
    );
    let o = settings.run(&out, invocation.resume, |m| {
        let nll = m.test.map_or(String::new(), |t| format!("{:.4}", t.loss));
        eprintln!(
            "round {} train loss {:.4} held-out NLL {nll} ({:.0} s)",
            m.round, m.train_loss, m.wall_s
        );
    })?;
    println!(
        "held-out NLL {:.4} -> {:.4} (perplexity {:.1} -> {:.1})",
        o.nll_before,
        o.nll_after,
        o.nll_before.exp(),
        o.nll_after.exp()
    );
    println!("prompt: {:?}", o.prompt);
    println!("before: {:?}", o.sample_before);
    println!("after:  {:?}", o.sample_after);
    Ok(())
}
