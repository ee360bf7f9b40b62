//! The fuzz targets' checks on the stable toolchain: every file of `fuzz/seeds/<target>/`,
//! `fuzz/corpus/<target>/` and `fuzz/regressions/<target>/` through the same per-reader function
//! the fuzz target calls (`fuzz/src/readers.rs`), and property tests: any byte string, and any
//! mutation of a seed, into any reader gives `Ok` or a typed error, never a panic.
//!
//! The seeds are written by the ignored test `write_seed_corpus` (from the real assets,
//! `$SPRY_ASSETS`, and the crate's own writers):
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`.

#[path = "../fuzz/src/readers.rs"]
mod readers;
mod tiny_model;

use std::path::{Path, PathBuf};

use proptest::prelude::*;
use readers::{Reader, peft_unframe};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The files of `fuzz/<kind>/<target>/`, sorted (none if the folder is absent).
fn files(kind: &str, reader: Reader) -> Vec<PathBuf> {
    let dir = fuzz_dir().join(kind).join(reader.name());
    let mut out: Vec<PathBuf> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .map(|e| e.expect("a folder entry").path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

/// Runs every file of `fuzz/<kind>/<target>/` through the reader; returns how many loaded.
fn replay(kind: &str, reader: Reader) -> (usize, usize) {
    let files = files(kind, reader);
    let mut ok = 0;
    for path in &files {
        // a running fuzzer replaces corpus files as it reduces them
        let Ok(bytes) = std::fs::read(path) else {
            continue;
        };
        let result = std::panic::catch_unwind(|| reader.check(&bytes));
        match result {
            Ok(r) => ok += usize::from(r.is_ok()),
            Err(_) => panic!("{} panicked on {}", reader.name(), path.display()),
        }
    }
    (files.len(), ok)
}

#[test]
fn every_seed_loads() {
    for reader in Reader::ALL {
        let (n, ok) = replay("seeds", reader);
        assert!(n > 0, "fuzz/seeds/{} is empty", reader.name());
        assert_eq!(ok, n, "a seed of {} does not load", reader.name());
    }
}

#[test]
fn the_corpus_gives_ok_or_typed_errors() {
    for reader in Reader::ALL {
        replay("corpus", reader);
    }
}

#[test]
fn regressions_stay_fixed() {
    for reader in Reader::ALL {
        replay("regressions", reader);
    }
}

/// The seeds of a reader.
fn seeds(reader: Reader) -> Vec<Vec<u8>> {
    files("seeds", reader)
        .iter()
        .map(|p| std::fs::read(p).unwrap())
        .collect()
}

/// A seed with a few bytes overwritten, then maybe truncated.
fn mutated(
    seed: &[u8],
    edits: &[(prop::sample::Index, u8)],
    cut: Option<prop::sample::Index>,
) -> Vec<u8> {
    let mut bytes = seed.to_vec();
    if !bytes.is_empty() {
        for (at, b) in edits {
            let i = at.index(bytes.len());
            bytes[i] = *b;
        }
    }
    if let Some(cut) = cut {
        bytes.truncate(cut.index(bytes.len() + 1));
    }
    bytes
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_into_any_reader_give_ok_or_a_typed_error(
        reader in prop::sample::select(Reader::ALL.to_vec()),
        bytes in prop::collection::vec(any::<u8>(), 0..2048),
    ) {
        let _ = reader.check(&bytes);
    }

    #[test]
    fn any_mutated_seed_gives_ok_or_a_typed_error(
        reader in prop::sample::select(Reader::ALL.to_vec()),
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let seeds = seeds(reader);
        prop_assume!(!seeds.is_empty());
        let seed = &seeds[which.index(seeds.len())];
        let _ = reader.check(&mutated(seed, &edits, cut));
    }
}

// ---- the seed corpus ----------------------------------------------------------------------------

mod seed {
    use std::collections::HashMap;

    use ndarray::{ArrayD, IxDyn};
    use serde_json::{Value, json};
    use spry::federated::{
        ClientConfig, CommMode, LocalOptimizer, Method, ServerOptimizer, SimConfig, Simulation,
    };
    use spry::io::{GgufFile, save_safetensors};
    use spry::models::bert::{ClassifierConfig, Pooling};
    use spry::modules::save_peft_adapter;
    use spry::rng::{Domain, KeyedRng};

    use super::tiny_model::{TinyTask, init_params};

    /// Writes `fuzz/seeds/<target>/<name>`.
    pub fn write(target: &str, name: &str, bytes: &[u8]) {
        let dir = super::fuzz_dir().join("seeds").join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }

    pub fn asset(rel: &str) -> Vec<u8> {
        std::fs::read(spry::io::asset(rel).unwrap()).unwrap()
    }

    // -- safetensors by hand (dtypes the crate's writer does not write) --

    pub fn safetensors_file(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), json!({"format": "pt"}));
        let mut data = Vec::new();
        for (name, dtype, shape, bytes) in tensors {
            let start = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                (*name).into(),
                json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
            );
        }
        let mut h = serde_json::to_vec(&Value::Object(header)).unwrap();
        while !h.len().is_multiple_of(8) {
            h.push(b' ');
        }
        let mut out = (h.len() as u64).to_le_bytes().to_vec();
        out.extend(h);
        out.extend(data);
        out
    }

    // -- GGUF by hand (spry has no GGUF writer) --

    fn put_str(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }

    pub enum Kv<'a> {
        U32(u32),
        F32(f32),
        Str(&'a str),
        Strs(&'a [String]),
        I32s(&'a [i32]),
    }

    pub struct GgufTensor<'a> {
        pub name: &'a str,
        /// Row-major shape (written innermost first).
        pub shape: &'a [u64],
        pub ggml_type: u32,
        pub data: Vec<u8>,
    }

    pub fn gguf_file(kv: &[(&str, Kv)], tensors: &[GgufTensor]) -> Vec<u8> {
        let mut out = b"GGUF".to_vec();
        out.extend(3u32.to_le_bytes());
        out.extend((tensors.len() as u64).to_le_bytes());
        out.extend((kv.len() as u64).to_le_bytes());
        for (key, value) in kv {
            put_str(&mut out, key);
            match value {
                Kv::U32(v) => {
                    out.extend(4u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Kv::F32(v) => {
                    out.extend(6u32.to_le_bytes());
                    out.extend(v.to_le_bytes());
                }
                Kv::Str(s) => {
                    out.extend(8u32.to_le_bytes());
                    put_str(&mut out, s);
                }
                Kv::Strs(v) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(8u32.to_le_bytes());
                    out.extend((v.len() as u64).to_le_bytes());
                    for s in *v {
                        put_str(&mut out, s);
                    }
                }
                Kv::I32s(v) => {
                    out.extend(9u32.to_le_bytes());
                    out.extend(5u32.to_le_bytes());
                    out.extend((v.len() as u64).to_le_bytes());
                    for x in *v {
                        out.extend(x.to_le_bytes());
                    }
                }
            }
        }
        let mut offset = 0u64;
        for t in tensors {
            put_str(&mut out, t.name);
            out.extend((t.shape.len() as u32).to_le_bytes());
            for d in t.shape.iter().rev() {
                out.extend(d.to_le_bytes());
            }
            out.extend(t.ggml_type.to_le_bytes());
            out.extend(offset.to_le_bytes());
            offset += (t.data.len() as u64).div_ceil(32) * 32;
        }
        for t in tensors {
            while !out.len().is_multiple_of(32) {
                out.push(0);
            }
            out.extend(&t.data);
        }
        out
    }

    /// `n` deterministic values in ±1.
    pub fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut rng = KeyedRng::new(seed, Domain::Init, &[0xf022]);
        (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
    }

    pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    pub fn f16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
            .collect()
    }

    pub fn bf16_bytes(v: &[f32]) -> Vec<u8> {
        v.iter()
            .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
            .collect()
    }

    /// Q8_0, Q4_0 and Q4_1 blocks of 32 values (scale 1/64, codes from `seed`).
    pub fn q_blocks(ggml_type: u32, n_blocks: usize, seed: u64) -> Vec<u8> {
        let mut rng = KeyedRng::new(seed, Domain::Init, &[0xb10c]);
        let d = half::f16::from_f32(1.0 / 64.0).to_le_bytes();
        let mut out = Vec::new();
        for _ in 0..n_blocks {
            out.extend(d);
            match ggml_type {
                8 => out.extend((0..32).map(|_| rng.below(256) as u8)),
                2 => out.extend((0..16).map(|_| rng.below(256) as u8)),
                3 => {
                    out.extend(half::f16::from_f32(-0.25).to_le_bytes());
                    out.extend((0..16).map(|_| rng.below(256) as u8));
                }
                _ => unreachable!(),
            }
        }
        out
    }

    // -- tokenizer.json trimmed to a small vocabulary --

    /// The real `tokenizer.json` with its vocabulary cut to the tokens `keep` accepts (ids kept),
    /// and for BPE the merges among them.
    pub fn trimmed_tokenizer(bytes: &[u8], keep: impl Fn(&str, u64) -> bool) -> Vec<u8> {
        let mut t: Value = serde_json::from_slice(bytes).unwrap();
        let vocab = t["model"]["vocab"].as_object_mut().unwrap();
        vocab.retain(|k, v| keep(k, v.as_u64().unwrap()));
        let kept: std::collections::HashSet<String> = vocab.keys().cloned().collect();
        if let Some(merges) = t["model"].get_mut("merges").and_then(Value::as_array_mut) {
            merges.retain(|m| {
                let (a, b) = match m {
                    Value::String(s) => {
                        let (a, b) = s.split_once(' ').unwrap();
                        (a.to_string(), b.to_string())
                    }
                    Value::Array(p) => (
                        p[0].as_str().unwrap().to_string(),
                        p[1].as_str().unwrap().to_string(),
                    ),
                    _ => unreachable!(),
                };
                kept.contains(&a) && kept.contains(&b) && kept.contains(&format!("{a}{b}"))
            });
        }
        serde_json::to_vec(&t).unwrap()
    }

    // -- checkpoints of the tiny network --

    /// The checkpoint after two rounds of the tiny network under `cfg`.
    pub fn checkpoint(cfg: SimConfig) -> Vec<u8> {
        let task = TinyTask::new();
        let mut sim = Simulation::new(cfg, init_params(5)).unwrap();
        sim.run(&task, None, |m| m.round < 2).unwrap();
        let dir = super::readers::Scratch::new(&[]);
        let path = dir.file("checkpoint.json");
        sim.save_checkpoint(&path).unwrap();
        std::fs::read(path).unwrap()
    }

    pub fn sim_config(method: Method, comm: CommMode, server: ServerOptimizer) -> SimConfig {
        SimConfig {
            method,
            clients_per_round: 2,
            rounds: 4,
            batch_size: 6,
            comm,
            server,
            client: ClientConfig {
                k: 2,
                optimizer: LocalOptimizer::adamw(0.05),
                ..ClientConfig::default()
            },
            eval_every: 1,
            seed: 3,
            ..SimConfig::default()
        }
    }

    pub fn classifier_config(labels: &[&str], pooling: Pooling, max_len: Option<usize>) -> Vec<u8> {
        let dir = super::readers::Scratch::new(&[]);
        ClassifierConfig::new(labels, pooling, max_len)
            .unwrap()
            .save(dir.dir())
            .unwrap();
        std::fs::read(dir.file(spry::models::bert::CLASSIFIER_CONFIG_FILE)).unwrap()
    }

    /// The saved adapter of the PEFT target's registry, with non-zero values, framed.
    pub fn peft_adapter(seed: u64) -> Vec<u8> {
        let mut t = super::readers::peft_registry().clone();
        for i in 0..t.len() {
            let shape = t.value(i).shape().to_vec();
            let v = values(shape.iter().product(), seed + i as u64);
            t.set_value(i, ArrayD::from_shape_vec(IxDyn(&shape), v).unwrap())
                .unwrap();
        }
        let dir = super::readers::Scratch::new(&[]);
        save_peft_adapter(dir.dir(), &super::readers::peft_lora(), &t).unwrap();
        let config = std::fs::read(dir.file(spry::modules::peft::ADAPTER_CONFIG_FILE)).unwrap();
        let weights = std::fs::read(dir.file(spry::modules::peft::ADAPTER_WEIGHTS_FILE)).unwrap();
        super::peft_unframe(&config, &weights)
    }

    /// A few f32 tensors written by spry's own writer.
    pub fn saved_safetensors() -> Vec<u8> {
        let a = ArrayD::from_shape_vec(IxDyn(&[3, 4]), values(12, 1)).unwrap();
        let b = ArrayD::from_shape_vec(IxDyn(&[5]), values(5, 2)).unwrap();
        let c = ArrayD::from_shape_vec(IxDyn(&[2, 1, 3]), values(6, 3)).unwrap();
        let dir = super::readers::Scratch::new(&[]);
        let path = dir.file("w.safetensors");
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        save_safetensors(
            &path,
            &[
                ("a.weight", a.view()),
                ("b.bias", b.view()),
                ("c", c.view()),
            ],
            Some(meta),
        )
        .unwrap();
        std::fs::read(path).unwrap()
    }

    /// The first `n` lines of a real data file.
    pub fn head(rel: &str, n: usize) -> Vec<u8> {
        let text = String::from_utf8(asset(rel)).unwrap();
        let mut out: String = text.lines().take(n).collect::<Vec<_>>().join("\n");
        out.push('\n');
        out.into_bytes()
    }

    /// The real SmolLM2 GGUF's first `n` tokens (types and the merges among them).
    pub fn gguf_vocab(n: usize) -> (Vec<String>, Vec<i32>, Vec<String>) {
        let file = GgufFile::open_mapped(
            spry::io::asset("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf").unwrap(),
        )
        .unwrap();
        let meta = |k: &str| file.metadata(k).unwrap();
        let tokens = meta("tokenizer.ggml.tokens").as_string_array().unwrap()[..n].to_vec();
        let types = meta("tokenizer.ggml.token_type").as_i32_array().unwrap()[..n].to_vec();
        let kept: std::collections::HashSet<&str> = tokens.iter().map(String::as_str).collect();
        let merges = meta("tokenizer.ggml.merges")
            .as_string_array()
            .unwrap()
            .iter()
            .filter(|m| {
                let (a, b) = m.split_once(' ').unwrap();
                kept.contains(a) && kept.contains(b) && kept.contains(format!("{a}{b}").as_str())
            })
            .cloned()
            .collect();
        (tokens, types, merges)
    }
}

/// Writes the seeds `fuzz/seeds/<target>/*` from the real assets and spry's writers.
#[test]
#[ignore = "writes the fuzz seed corpus; needs the real assets"]
fn write_seed_corpus() {
    use seed::*;
    use spry::federated::{CommMode, Method, ServerOptimizer};
    use spry::models::bert::Pooling;

    // safetensors: spry's writer; F16/BF16 with an integer buffer; an empty file of tensors
    write("safetensors", "spry-f32", &saved_safetensors());
    let v = values(8, 9);
    let mixed = safetensors_file(&[
        (
            "embeddings.position_ids",
            "I64",
            &[1, 4],
            (0i64..4).flat_map(i64::to_le_bytes).collect(),
        ),
        ("h.weight", "F16", &[2, 4], f16_bytes(&v)),
        ("b.weight", "BF16", &[8], bf16_bytes(&v)),
        ("s", "F32", &[], f32_bytes(&v[..1])),
    ]);
    write("safetensors", "f16-bf16-i64", &mixed);
    write("safetensors", "empty", &safetensors_file(&[]));

    // GGUF: the real SmolLM2 metadata shape with a 96-token slice of its vocabulary, one tensor
    // of every supported type
    let (tokens, types, merges) = gguf_vocab(96);
    let n_vocab = tokens.len() as u64;
    let kv = [
        ("general.architecture", Kv::Str("llama")),
        ("general.name", Kv::Str("fuzz seed")),
        ("general.alignment", Kv::U32(32)),
        ("llama.block_count", Kv::U32(1)),
        ("llama.context_length", Kv::U32(32)),
        ("llama.embedding_length", Kv::U32(8)),
        ("llama.feed_forward_length", Kv::U32(16)),
        ("llama.attention.head_count", Kv::U32(2)),
        ("llama.attention.head_count_kv", Kv::U32(1)),
        ("llama.attention.layer_norm_rms_epsilon", Kv::F32(1e-5)),
        ("llama.rope.freq_base", Kv::F32(10000.0)),
        ("llama.rope.dimension_count", Kv::U32(4)),
        ("tokenizer.ggml.model", Kv::Str("gpt2")),
        ("tokenizer.ggml.tokens", Kv::Strs(&tokens)),
        ("tokenizer.ggml.token_type", Kv::I32s(&types)),
        ("tokenizer.ggml.merges", Kv::Strs(&merges)),
        ("tokenizer.ggml.bos_token_id", Kv::U32(1)),
        ("tokenizer.ggml.eos_token_id", Kv::U32(2)),
        ("tokenizer.ggml.padding_token_id", Kv::U32(2)),
    ];
    let embd = values(n_vocab as usize * 8, 4);
    let row = values(64, 5);
    let tensors = [
        GgufTensor {
            name: "token_embd.weight",
            shape: &[n_vocab, 8],
            ggml_type: 0,
            data: f32_bytes(&embd),
        },
        GgufTensor {
            name: "blk.0.attn_q.weight",
            shape: &[2, 32],
            ggml_type: 8,
            data: q_blocks(8, 2, 1),
        },
        GgufTensor {
            name: "blk.0.attn_k.weight",
            shape: &[2, 32],
            ggml_type: 2,
            data: q_blocks(2, 2, 2),
        },
        GgufTensor {
            name: "blk.0.attn_v.weight",
            shape: &[2, 32],
            ggml_type: 3,
            data: q_blocks(3, 2, 3),
        },
        GgufTensor {
            name: "blk.0.ffn_up.weight",
            shape: &[2, 32],
            ggml_type: 1,
            data: f16_bytes(&row),
        },
        GgufTensor {
            name: "blk.0.ffn_down.weight",
            shape: &[2, 32],
            ggml_type: 30,
            data: bf16_bytes(&row),
        },
        GgufTensor {
            name: "output_norm.weight",
            shape: &[8],
            ggml_type: 0,
            data: f32_bytes(&row[..8]),
        },
    ];
    write("gguf", "smollm2-slice", &gguf_file(&kv, &tensors));
    write("gguf", "metadata-only", &gguf_file(&kv[..12], &[]));

    // config.json: the real ones, and the tiny test models'
    write(
        "model_config",
        "minilm-l6",
        &asset("all-MiniLM-L6-v2/config.json"),
    );
    write(
        "model_config",
        "minilm-l3",
        &asset("paraphrase-MiniLM-L3-v2/config.json"),
    );
    write(
        "model_config",
        "smollm2",
        &asset("SmolLM2-135M-Instruct/config.json"),
    );
    write(
        "model_config",
        "tiny-bert",
        readers::PEFT_BERT_JSON.as_bytes(),
    );

    // tokenizer.json: the real files with their vocabularies cut (ids and structure kept)
    let wordpiece = |k: &str, id: u64| {
        matches!(id, 0 | 100..=103) || (1996..2060).contains(&id) || matches!(k, "##s" | "##ing")
    };
    write(
        "tokenizer",
        "minilm-l6-trimmed",
        &trimmed_tokenizer(&asset("all-MiniLM-L6-v2/tokenizer.json"), wordpiece),
    );
    write(
        "tokenizer",
        "minilm-l3-trimmed",
        &trimmed_tokenizer(&asset("paraphrase-MiniLM-L3-v2/tokenizer.json"), |_, id| {
            matches!(id, 0 | 100..=103) || (1996..2030).contains(&id)
        }),
    );
    write(
        "tokenizer",
        "smollm2-trimmed",
        &trimmed_tokenizer(&asset("SmolLM2-135M-Instruct/tokenizer.json"), |_, id| {
            id < 160
        }),
    );

    // PEFT adapter folders saved by spry
    write("peft", "tiny-bert-adapter", &peft_adapter(20));

    // checkpoints of the tiny network: per epoch (FedYogi, FedAvgM with client states),
    // per iteration
    write(
        "checkpoint",
        "spry-fedyogi",
        &checkpoint(sim_config(
            Method::Spry,
            CommMode::PerEpoch,
            ServerOptimizer::fedyogi(),
        )),
    );
    write(
        "checkpoint",
        "fedfgd-fedavgm-client-states",
        &checkpoint(spry::federated::SimConfig {
            keep_client_state: true,
            ..sim_config(
                Method::FedFgd,
                CommMode::PerEpoch,
                ServerOptimizer::fedavgm(0.8),
            )
        }),
    );
    write(
        "checkpoint",
        "per-iteration",
        &checkpoint(sim_config(
            Method::Spry,
            CommMode::PerIteration,
            ServerOptimizer::fedavg(),
        )),
    );

    // the same checkpoints' bodies behind a `B`: the reader seals them with their checksum
    let body = |file: Vec<u8>| {
        let v: serde_json::Value = serde_json::from_slice(&file).unwrap();
        [&b"B"[..], &serde_json::to_vec(&v["checkpoint"]).unwrap()].concat()
    };
    write(
        "checkpoint",
        "spry-fedyogi-body",
        &body(checkpoint(sim_config(
            Method::Spry,
            CommMode::PerEpoch,
            ServerOptimizer::fedyogi(),
        ))),
    );
    write(
        "checkpoint",
        "per-iteration-body",
        &body(checkpoint(sim_config(
            Method::Spry,
            CommMode::PerIteration,
            ServerOptimizer::fedavg(),
        ))),
    );

    // labelled files: heads of the bundled data (first byte: format and columns)
    let framed = |selector: u8, body: &[u8]| [&[selector][..], body].concat();
    write(
        "labelled",
        "rt-polarity-tsv",
        &framed(8, &head("text/rt_polarity_train.tsv", 8)),
    );
    write(
        "labelled",
        "debates-csv",
        &framed(1 | 2 << 3, &head("text/debates_2016.csv", 4)),
    );
    let jsonl: String = [
        r#"{"text": "A three-hour cinema master class.", "pair": "yes", "label": "pos", "group": "a"}"#,
        r#"{"text": "Dull.", "pair": "no", "label": "neg", "group": "b"}"#,
        r#"{"text": "It's fine\u00e9", "pair": "maybe", "label": "neg", "group": "a", "extra": [1, {"x": null}]}"#,
    ]
    .join("\n");
    write(
        "labelled",
        "pairs-jsonl",
        &framed(2 | 4 | 3 << 3, jsonl.as_bytes()),
    );
    write(
        "labelled",
        "pairs-csv",
        &framed(
            1 | 4,
            b"label,text,pair\n0,\"a, b\",\"c\"\"d\"\n1,e,\"multi\nline\"\n2,f,g\n",
        ),
    );

    // classifier_config.json as spry saves it
    write(
        "classifier_config",
        "binary",
        &classifier_config(&["negative", "positive"], Pooling::Mean, Some(64)),
    );
    write(
        "classifier_config",
        "three-cls",
        &classifier_config(&["a", "b", "c"], Pooling::Cls, None),
    );
}
