//! A Spry client step on a Llama-2-7B-geometry model (issue 16, item 1), measured.
//!
//! Builds a model of the chosen geometry with random Q4_0 (or Q8_0) weights, writes it as a real
//! GGUF file with [`GgufWriter`] (streamed: the file never sits in memory), then, for every
//! (B, T, K), runs one client step in a fresh child process (its own peak RSS): the file is
//! loaded by spry's loader ([`GgufFile::open_mapped`] + [`LlamaConfig::from_gguf`] +
//! [`GgufLlamaSource`] + [`Llama::load`], what `load_llama_gguf` does minus the tokenizer, which
//! the file does not carry), weights kept packed; then `train_local` with a `LanguageModelTask`
//! over one batch of random token ids, perturbing only the LoRA units (r = 8, α = 16 on q/v) the
//! depth-aware planner gives one client out of `--clients` (default: the paper's 10 per round,
//! `SimConfig::default`). The default client is the last one, whose block is the bottom of the
//! network, so its tangents run through every layer: the slowest client.
//!
//! Per configuration: load peak RSS, resident weight bytes (frozen + trainable), RSS after the
//! load, step peak RSS (the watermark is reset after the load), working memory above the weights
//! (step peak − RSS after load), RssAnon/RssFile, seconds per step. A table, then one JSON line.
//!
//! ```text
//! cargo run --release --example bench_7b -- --geometry tiny
//! cargo run --release --example bench_7b -- --geometry 1b --batch 1,8 --seq 256,512 --k 1,4
//! cargo run --release --example bench_7b -- --geometry 7b --format q4_0 --batch 8 --seq 256 --k 1
//! ```

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use clap::{Parser, ValueEnum};
use ndarray::Array2;
use spry::federated::{
    ClientConfig, OptimizerState, PlannerKind, SimConfig, Simulation, StepKey, train_local,
};
use spry::io::{GgmlType, GgufArray, GgufFile, GgufTensorSpec, GgufValue, GgufWriter, LlamaConfig};
use spry::metrics::{current_rss_mib, peak_rss_mib, reset_peak_rss};
use spry::models::llama::Llama;
use spry::models::source::GgufLlamaSource;
use spry::modules::{LoraConfig, Trainable};
use spry::tasks::{LanguageModelTask, LmBatch};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Model geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Geometry {
    /// Llama-2-7B: 32 layers, hidden 4096, 32 heads, FFN 11008, vocab 32000, untied output.
    #[value(name = "7b")]
    B7,
    /// A 1B-ish model for regular use: 16 layers, hidden 2048, 32 heads, FFN 5632, vocab 32000.
    #[value(name = "1b")]
    B1,
    /// A smoke run: 4 layers, hidden 256, 8 heads, FFN 704, vocab 32000.
    Tiny,
}

/// (layers, hidden, heads, ffn, vocab).
fn dims(g: Geometry) -> (usize, usize, usize, usize, usize) {
    match g {
        Geometry::B7 => (32, 4096, 32, 11008, 32000),
        Geometry::B1 => (16, 2048, 32, 5632, 32000),
        Geometry::Tiny => (4, 256, 8, 704, 32000),
    }
}

/// Storage format of the matrices.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// 4-bit blocks (18 bytes per 32 weights).
    #[value(name = "q4_0")]
    Q4_0,
    /// 8-bit blocks (34 bytes per 32 weights).
    #[value(name = "q8_0")]
    Q8_0,
}

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Model geometry.
    #[arg(long, value_enum, default_value = "tiny")]
    geometry: Geometry,
    /// Matrix format.
    #[arg(long, value_enum, default_value = "q4_0")]
    format: Format,
    /// Batch sizes B.
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    batch: Vec<usize>,
    /// Sequence lengths T.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    seq: Vec<usize>,
    /// Directions per step K.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    k: Vec<usize>,
    /// Clients per round the depth-aware planner splits the units among (`SimConfig::default`).
    #[arg(long, default_value_t = SimConfig::default().clients_per_round)]
    clients: usize,
    /// Which client's units to perturb (0 = the top block; default: the last, the bottom block).
    #[arg(long)]
    client: Option<usize>,
    /// Row budget of one micro-batch (`Llama::with_max_rows`; default: the library's,
    /// `models::microbatch::default_max_rows` of the FFN width: 762 rows for 7b, 1024 otherwise).
    #[arg(long)]
    max_rows: Option<usize>,
    /// The GGUF file (default `target/bench7b/<geometry>-<format>.gguf`); reused when its
    /// header matches, else written.
    #[arg(long)]
    file: Option<PathBuf>,
    /// Run one configuration `B,T,K` in this process and print its JSON (used by the parent).
    #[arg(long, hide = true, value_delimiter = ',')]
    child: Option<Vec<usize>>,
}

fn main() {
    let args = Args::parse();
    let res = match &args.child {
        Some(c) => child(&args, c),
        None => run(&args),
    };
    if let Err(e) = res {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn geometry_name(g: Geometry) -> &'static str {
    match g {
        Geometry::B7 => "7b",
        Geometry::B1 => "1b",
        Geometry::Tiny => "tiny",
    }
}

fn format_name(f: Format) -> &'static str {
    match f {
        Format::Q4_0 => "q4_0",
        Format::Q8_0 => "q8_0",
    }
}

fn file_path(args: &Args) -> PathBuf {
    args.file.clone().unwrap_or_else(|| {
        PathBuf::from("target/bench7b").join(format!(
            "{}-{}.gguf",
            geometry_name(args.geometry),
            format_name(args.format)
        ))
    })
}

/// The file's description: Llama metadata as `LlamaConfig::from_gguf` reads it, and the tensors
/// in llama.cpp's order and names (matrices in `format`, norms in F32, output untied).
fn describe(g: Geometry, format: Format) -> Res<GgufWriter> {
    let (layers, hidden, heads, ffn, vocab) = dims(g);
    let ty = match format {
        Format::Q4_0 => GgmlType::Q4_0,
        Format::Q8_0 => GgmlType::Q8_0,
    };
    let u32v = |x: usize| GgufValue::U32(x as u32);
    let mut w = GgufWriter::new();
    w.metadata("general.architecture", GgufValue::String("llama".into()))?
        .metadata(
            "general.name",
            GgufValue::String(format!("spry-bench-{}", geometry_name(g))),
        )?
        .metadata("llama.vocab_size", u32v(vocab))?
        .metadata("llama.context_length", u32v(4096))?
        .metadata("llama.embedding_length", u32v(hidden))?
        .metadata("llama.block_count", u32v(layers))?
        .metadata("llama.feed_forward_length", u32v(ffn))?
        .metadata("llama.rope.dimension_count", u32v(hidden / heads))?
        .metadata("llama.attention.head_count", u32v(heads))?
        .metadata("llama.attention.head_count_kv", u32v(heads))?
        .metadata(
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        )?
        .metadata("llama.rope.freq_base", GgufValue::F32(10000.0))?
        .metadata("tokenizer.ggml.bos_token_id", u32v(1))?
        .metadata("tokenizer.ggml.eos_token_id", u32v(2))?
        .metadata(
            "spry.bench.note",
            GgufValue::Array(GgufArray::String(vec![
                "random weights, no tokenizer: a memory and speed benchmark".into(),
            ])),
        )?;
    w.tensor(GgufTensorSpec::new(
        "token_embd.weight",
        &[vocab, hidden],
        ty,
    ))?;
    for l in 0..layers {
        let t = |n: &str| format!("blk.{l}.{n}.weight");
        w.tensor(GgufTensorSpec::new(
            t("attn_norm"),
            &[hidden],
            GgmlType::F32,
        ))?;
        for n in ["attn_q", "attn_k", "attn_v", "attn_output"] {
            w.tensor(GgufTensorSpec::new(t(n), &[hidden, hidden], ty))?;
        }
        w.tensor(GgufTensorSpec::new(t("ffn_norm"), &[hidden], GgmlType::F32))?;
        w.tensor(GgufTensorSpec::new(t("ffn_gate"), &[ffn, hidden], ty))?;
        w.tensor(GgufTensorSpec::new(t("ffn_up"), &[ffn, hidden], ty))?;
        w.tensor(GgufTensorSpec::new(t("ffn_down"), &[hidden, ffn], ty))?;
    }
    w.tensor(GgufTensorSpec::new(
        "output_norm.weight",
        &[hidden],
        GgmlType::F32,
    ))?;
    w.tensor(GgufTensorSpec::new("output.weight", &[vocab, hidden], ty))?;
    Ok(w)
}

/// xorshift64* bytes.
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn fill(&mut self, out: &mut [u8]) {
        for c in out.chunks_mut(8) {
            let x = self.next().to_le_bytes();
            c.copy_from_slice(&x[..c.len()]);
        }
    }
}

/// Random blocks: uniform nibbles (Q4_0) or int8 (Q8_0) with an f16 scale giving a weight
/// standard deviation of about 0.02 (uniform q − 8 in −8..7 has std ≈ 4.64; uniform i8 ≈ 73.9).
/// The scale is finite and the values are bounded, so every weight is finite.
fn write_blocks(
    out: &mut dyn Write,
    ty: GgmlType,
    n_bytes: usize,
    rng: &mut Bytes,
) -> std::io::Result<()> {
    let (block_bytes, d) = match ty {
        GgmlType::Q4_0 => (18, 0.02 / 4.64),
        GgmlType::Q8_0 => (34, 0.02 / 73.9),
        _ => return Err(std::io::Error::other(format!("no generator for {ty}"))),
    };
    let d = half::f16::from_f32(d).to_bits().to_le_bytes();
    let mut buf = vec![0u8; block_bytes * 4096];
    let mut left = n_bytes;
    while left > 0 {
        let n = left.min(buf.len());
        let chunk = &mut buf[..n];
        rng.fill(chunk);
        for blk in chunk.chunks_exact_mut(block_bytes) {
            blk[..2].copy_from_slice(&d);
        }
        out.write_all(chunk)?;
        left -= n;
    }
    Ok(())
}

/// The file at `path` if its header and length are those `w` writes, else a freshly written
/// one; returns the write time (`None` when reused).
fn ensure_file(w: &GgufWriter, path: &Path) -> Res<Option<f64>> {
    let header = w.header_bytes();
    if let Ok(meta) = std::fs::metadata(path)
        && meta.len() == w.file_len()
    {
        let mut got = vec![0u8; header.len()];
        let mut f = std::fs::File::open(path)?;
        std::io::Read::read_exact(&mut f, &mut got)?;
        if got == header {
            return Ok(None);
        }
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let t0 = Instant::now();
    let mut rng = Bytes(0x005E_ED0F_5B1C);
    w.write_file(path, |_, spec, out| {
        let n = spec.n_bytes().map_err(std::io::Error::other)?;
        if spec.ggml_type == GgmlType::F32 {
            // norm gains: ones
            out.write_all(&1f32.to_le_bytes().repeat(n / 4))
        } else {
            write_blocks(out, spec.ggml_type, n, &mut rng)
        }
    })?;
    Ok(Some(t0.elapsed().as_secs_f64()))
}

fn run(args: &Args) -> Res<()> {
    let path = file_path(args);
    let w = describe(args.geometry, args.format)?;
    let wrote = ensure_file(&w, &path)?;
    let cpu = cpu_name();
    let (layers, hidden, heads, ffn, vocab) = dims(args.geometry);
    println!(
        "geometry {} ({layers} layers, hidden {hidden}, {heads} heads, FFN {ffn}, vocab {vocab}), \
         {}, file {} ({:.2} GB){}",
        geometry_name(args.geometry),
        format_name(args.format),
        path.display(),
        w.file_len() as f64 / 1e9,
        match wrote {
            Some(s) => format!(", written in {s:.1} s"),
            None => ", reused".into(),
        }
    );
    println!(
        "CPU {cpu}, {} threads; LoRA r=8 alpha=16 on q_proj/v_proj; depth-aware plan, {} clients",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        args.clients
    );
    println!(
        "{:>3} {:>5} {:>2} | {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "B",
        "T",
        "K",
        "load pk",
        "weights",
        "after ld",
        "step pk",
        "work",
        "anon",
        "file",
        "load s",
        "step s"
    );
    println!(
        "{:>3} {:>5} {:>2} | {:>9} {:>10} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8}",
        "", "", "", "MiB", "MiB", "MiB", "MiB", "MiB", "MiB", "MiB", "", ""
    );
    let mut rows = Vec::new();
    for &b in &args.batch {
        for &t in &args.seq {
            for &k in &args.k {
                let r = run_child(args, &path, b, t, k)?;
                let f = |key: &str| r[key].as_f64().unwrap_or(f64::NAN);
                println!(
                    "{b:>3} {t:>5} {k:>2} | {:>9.0} {:>10.1} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>9.0} {:>8.1} {:>8.1}",
                    f("load_peak_rss_mib"),
                    f("resident_weight_bytes") / (1024.0 * 1024.0),
                    f("rss_after_load_mib"),
                    f("step_peak_rss_mib"),
                    f("working_mib"),
                    f("step_rss_anon_mib"),
                    f("step_rss_file_mib"),
                    f("load_s"),
                    f("step_s"),
                );
                rows.push(r);
            }
        }
    }
    let json = serde_json::json!({
        "geometry": geometry_name(args.geometry),
        "format": format_name(args.format),
        "layers": layers, "hidden": hidden, "heads": heads, "ffn": ffn, "vocab": vocab,
        "file": path.display().to_string(),
        "file_bytes": w.file_len(),
        "write_s": wrote,
        "cpu": cpu,
        "threads": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "clients": args.clients,
        "max_rows": args.max_rows,
        "lora": {"r": 8, "alpha": 16.0, "targets": ["q_proj", "v_proj"]},
        "runs": rows,
    });
    println!("{json}");
    Ok(())
}

fn run_child(args: &Args, path: &Path, b: usize, t: usize, k: usize) -> Res<serde_json::Value> {
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args([
        "--geometry",
        geometry_name(args.geometry),
        "--format",
        format_name(args.format),
        "--clients",
        &args.clients.to_string(),
        "--file",
    ])
    .arg(path)
    .args(["--child", &format!("{b},{t},{k}")]);
    if let Some(c) = args.client {
        cmd.args(["--client", &c.to_string()]);
    }
    if let Some(m) = args.max_rows {
        cmd.args(["--max-rows", &m.to_string()]);
    }
    let out = cmd.output()?;
    if !out.status.success() {
        return Err(format!(
            "child B={b} T={t} K={k} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let text = String::from_utf8(out.stdout)?;
    let line = text.lines().last().ok_or("child printed nothing")?;
    Ok(serde_json::from_str(line)?)
}

/// `RssAnon` and `RssFile` of this process in MiB (`spry::metrics::rss_breakdown_mib`).
fn rss_breakdown_mib() -> (Option<f64>, Option<f64>) {
    let r = spry::metrics::rss_breakdown_mib();
    (r.map(|r| r.anon), r.map(|r| r.file))
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn child(args: &Args, c: &[usize]) -> Res<()> {
    let &[b, t, k] = c else {
        return Err("--child takes B,T,K".into());
    };
    let path = file_path(args);
    let none = || "no /proc/self/status";

    // the load, as load_llama_gguf does it (the file carries no tokenizer)
    let t0 = Instant::now();
    let lora = LoraConfig::new(8, 16.0, 0.0, &["q_proj", "v_proj"]);
    let file = GgufFile::open_mapped(&path)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let mut source =
        GgufLlamaSource::new(file, config.num_attention_heads, config.num_key_value_heads);
    let mut params = Trainable::new();
    let model = Llama::<f32>::load(&config, &mut source, &lora, 0, &mut params)?;
    let max_rows = args
        .max_rows
        .unwrap_or_else(|| spry::models::microbatch::default_max_rows(config.intermediate_size));
    let model = model.with_max_rows(max_rows);
    drop(source);
    let load_s = t0.elapsed().as_secs_f64();
    let load_peak = peak_rss_mib().ok_or_else(none)?;
    let after_load = current_rss_mib().ok_or_else(none)?;
    let (load_anon, load_file) = rss_breakdown_mib();
    let trainable_bytes: usize = params.values().iter().map(|v| v.len() * 4).sum();
    let frozen_bytes = model.frozen_bytes();

    // the units the depth-aware plan gives one client, through the simulation's own code
    let sim_cfg = SimConfig {
        planner: PlannerKind::Depth,
        clients_per_round: args.clients,
        ..SimConfig::default()
    };
    let assigned_all = Simulation::new(sim_cfg, params.clone())?.assignments(0, args.clients)?;
    let client = args.client.unwrap_or(assigned_all.len() - 1);
    let assigned = assigned_all
        .get(client)
        .ok_or_else(|| format!("client {client} of {}", assigned_all.len()))?
        .clone();
    drop(assigned_all);
    let unit_names: Vec<String> = params
        .units()
        .iter()
        .filter(|u| assigned.contains(&u.params.start))
        .map(|u| u.name.clone())
        .collect();

    let vocab = config.vocab_size as u64;
    let mut s = Bytes(0xB47C_u64 + (b * 1000 + t) as u64);
    let ids = Array2::from_shape_fn((b, t), |_| 3 + (s.next() % (vocab - 3)) as u32);
    let batches = vec![LmBatch {
        labels: ids.mapv(i64::from),
        mask: Array2::from_elem(ids.dim(), true),
        ids,
    }];
    let task = LanguageModelTask {
        model: &model,
        train: Vec::new(),
        test: Vec::new(),
        client_train: Vec::new(),
        seed: 0,
    };
    let cfg = ClientConfig {
        k,
        ..ClientConfig::default()
    };
    let mut state = OptimizerState::new(params.len());
    let key = StepKey {
        seed: 0,
        round: 0,
        client: client as u64,
        step: 0,
    };
    let reset = reset_peak_rss();
    let before_step = current_rss_mib().ok_or_else(none)?;
    let t0 = Instant::now();
    let report = train_local(
        &task,
        &mut params,
        &assigned,
        &batches,
        &cfg,
        &mut state,
        key,
    )?;
    let step_s = t0.elapsed().as_secs_f64();
    let step_peak = peak_rss_mib().ok_or_else(none)?;
    let (anon, file) = rss_breakdown_mib();
    println!(
        "{}",
        serde_json::json!({
            "batch": b, "seq": t, "k": k,
            "client": client,
            "max_rows": max_rows,
            "units": unit_names,
            "n_params_perturbed": assigned.iter().map(|&i| params.value(i).len()).sum::<usize>(),
            "load_s": load_s,
            "load_peak_rss_mib": load_peak,
            "rss_after_load_mib": after_load,
            "load_rss_anon_mib": load_anon,
            "load_rss_file_mib": load_file,
            "frozen_bytes": frozen_bytes,
            "trainable_bytes": trainable_bytes,
            "resident_weight_bytes": frozen_bytes + trainable_bytes,
            "peak_reset": reset,
            "rss_before_step_mib": before_step,
            "step_peak_rss_mib": step_peak,
            "working_mib": step_peak - after_load,
            "step_rss_anon_mib": anon,
            "step_rss_file_mib": file,
            "step_s": step_s,
            "loss": report.mean_loss,
            "skipped_steps": report.skipped,
        })
    );
    Ok(())
}
