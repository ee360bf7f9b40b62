//! Hostile files: every loader of a weight file (safetensors, GGUF), a `config.json` or a PEFT
//! folder, fed a broken or malicious file, returns `Ok` or a typed [`Error`], never a panic, an
//! abort on a huge allocation, a hang, or silently wrong weights.
//!
//! Tiny but complete files are written with the crate's own writers (safetensors) and the test
//! GGUF writer: a 2-layer BERT folder and a 2-block Llama GGUF, whose tensors are the ones the
//! models' loaders take (recorded from a load over random weights). Then targeted cases for
//! each class of bad input (overlapping or misplaced byte ranges, a changed dtype, offsets
//! outside the data, zero-element tensors with 2⁶² dimensions, `u64::MAX` sizes, layer counts
//! that disagree with the file, a 2⁴⁰ context length, LoRA ranks that disagree with the tensors),
//! and properties: any byte string, and any mutation of a valid file (truncation, byte flips,
//! 8-byte fields overwritten with 2⁴⁰, 2⁶², `u64::MAX` or 0, numbers in JSON replaced by absurd
//! ones), run through the whole loader gives `Ok` or an error.

#[path = "common/gguf_writer.rs"]
mod gguf_writer;
#[path = "common/temp_file.rs"]
mod temp_file;

use std::path::Path;

use gguf_writer::{T, build, tensor};
use ndarray::{Array2, ArrayD, ArrayViewD};
use proptest::prelude::*;
use proptest::sample::Index;
use spry::io::{
    BertConfig, GgufArray, GgufFile, GgufValue, LlamaConfig, load_safetensors, save_safetensors,
};
use spry::models::bert::Bert;
use spry::models::llama::Llama;
use spry::models::pretrained::{load_llama_gguf, load_llama_gguf_as, load_llama_gguf_with_adapter};
use spry::models::source::{GgufLlamaSource, RandomWeights};
use spry::models::{WeightFormat, WeightSource};
use spry::modules::peft::{ADAPTER_CONFIG_FILE, ADAPTER_WEIGHTS_FILE};
use spry::modules::{
    Directions, LoraConfig, PeftAdapter, Trainable, load_peft_adapter, save_peft_adapter,
};
use spry::{Error, Result};
use temp_file::{TempDir, TempFile};

// ---- the tiny models -----------------------------------------------------------------------

const BERT_JSON: &str = r#"{"model_type": "bert", "vocab_size": 12, "hidden_size": 8,
    "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 16,
    "max_position_embeddings": 16, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
    "hidden_act": "gelu", "pad_token_id": 0}"#;

/// The Llama GGUF's hyper-parameters (vocabulary 10, hidden 8, 2 heads of 4, FFN 16).
const VOCAB: usize = 10;
const LAYERS: u32 = 2;

/// A source of random weights that records what the loader took, so the tests write exactly the
/// tensors a model needs without spelling their names. `bert.` is not there (no root prefix).
struct Recorder {
    inner: RandomWeights,
    taken: Vec<(String, ArrayD<f32>)>,
}

impl Recorder {
    fn new() -> Self {
        Recorder {
            inner: RandomWeights {
                seed: 3,
                scale: 0.3,
            },
            taken: Vec::new(),
        }
    }
}

impl WeightSource for Recorder {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        let t = self.inner.take(name, shape)?;
        self.taken.push((name.to_owned(), t.clone()));
        Ok(t)
    }

    fn has(&self, name: &str) -> bool {
        !name.starts_with("bert.")
    }
}

fn no_lora() -> LoraConfig {
    spry::models::pretrained::no_lora()
}

/// The tensors of the tiny BERT, by name.
fn bert_tensors() -> Vec<(String, ArrayD<f32>)> {
    let cfg = BertConfig::from_json(BERT_JSON).unwrap();
    let mut rec = Recorder::new();
    Bert::<f32>::load(&cfg, &mut rec, &no_lora(), "", 0, &mut Trainable::new()).unwrap();
    rec.taken
}

fn safetensors_bytes(tensors: &[(String, ArrayD<f32>)]) -> Vec<u8> {
    let file = TempFile::new("safetensors", b"");
    let views: Vec<(&str, ArrayViewD<'_, f32>)> = tensors
        .iter()
        .map(|(n, t)| (n.as_str(), t.view()))
        .collect();
    save_safetensors(&file.0, &views, None).unwrap();
    std::fs::read(&file.0).unwrap()
}

/// The tiny BERT's `model.safetensors`.
fn bert_safetensors() -> Vec<u8> {
    safetensors_bytes(&bert_tensors())
}

/// Loads a BERT from a `config.json` and a `model.safetensors` and runs it on one sequence.
fn load_bert(config: &Path, weights: &Path) -> Result<()> {
    let cfg = BertConfig::from_file(config)?;
    let mut w = load_safetensors(weights)?;
    let mut tr = Trainable::new();
    let bert = Bert::<f32>::load(&cfg, &mut w, &no_lora(), "", 0, &mut tr)?;
    let batch = spry::models::bert::BertBatch::new(
        Array2::from_shape_vec((1, 3), vec![1, 2, 3]).unwrap(),
        Array2::from_elem((1, 3), true),
    )?;
    bert.encode(&batch, &tr, &Directions::none(tr.len()), None)?;
    Ok(())
}

fn llama_kv(block_count: u32, context: u64) -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("llama.embedding_length", GgufValue::U32(8)),
        ("llama.feed_forward_length", GgufValue::U32(16)),
        ("llama.block_count", GgufValue::U32(block_count)),
        ("llama.attention.head_count", GgufValue::U32(2)),
        ("llama.attention.head_count_kv", GgufValue::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("llama.rope.freq_base", GgufValue::F32(10000.0)),
        ("llama.context_length", GgufValue::U64(context)),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(GgufArray::String(
                (0..VOCAB)
                    .map(|i| char::from(b'a' + i as u8).to_string())
                    .collect(),
            )),
        ),
        (
            "tokenizer.ggml.token_type",
            GgufValue::Array(GgufArray::I32(vec![1; VOCAB])),
        ),
        (
            "tokenizer.ggml.merges",
            GgufValue::Array(GgufArray::String(vec![])),
        ),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
    ]
}

/// The tiny Llama's tensors as GGUF tensors (matrices F16, vectors F32), for `layers` blocks.
fn llama_gguf_tensors(layers: usize) -> Vec<T> {
    let json = format!(
        r#"{{"vocab_size": {VOCAB}, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": {layers}, "num_attention_heads": 2, "num_key_value_heads": 2,
        "max_position_embeddings": 64, "tie_word_embeddings": true}}"#
    );
    let cfg = LlamaConfig::from_json(&json).unwrap();
    let mut rec = Recorder::new();
    Llama::<f32>::load(&cfg, &mut rec, &no_lora(), 0, &mut Trainable::new()).unwrap();
    // a source over an empty file, only for its name map
    let empty = GgufFile::from_bytes("names.gguf", build(3, &[], &[], 32)).unwrap();
    let names = GgufLlamaSource::new(empty, 2, 2);
    rec.taken
        .iter()
        .map(|(hf, t)| {
            let (name, _) = names.gguf_name(hf).unwrap();
            let dims: Vec<u64> = t.shape().iter().rev().map(|&d| d as u64).collect();
            if t.ndim() == 2 {
                let data = t
                    .iter()
                    .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                    .collect();
                tensor(&name, &dims, 1, data)
            } else {
                let data = t.iter().flat_map(|x| x.to_le_bytes()).collect();
                tensor(&name, &dims, 0, data)
            }
        })
        .collect()
}

/// A tiny Llama GGUF declaring `block_count` blocks and holding `layers`.
fn llama_gguf_with(block_count: u32, layers: usize, context: u64) -> Vec<u8> {
    build(
        3,
        &llama_kv(block_count, context),
        &llama_gguf_tensors(layers),
        32,
    )
}

fn llama_gguf() -> Vec<u8> {
    llama_gguf_with(LAYERS, LAYERS as usize, 64)
}

/// Runs a loaded Llama's loss on one short sequence.
fn run_llama(model: &Llama<f32>, tr: &Trainable<f32>) -> Result<()> {
    let ids = Array2::from_shape_vec((1, 4), vec![1u32, 2, 3, 4]).unwrap();
    let labels = ids.mapv(i64::from);
    model.loss(
        ids.view(),
        labels.view(),
        None,
        tr,
        &Directions::none(tr.len()),
        None,
    )?;
    Ok(())
}

/// The whole GGUF path: the one-call loader (packed and dense), then a pass.
fn load_llama(path: &Path) -> Result<()> {
    let lora = LoraConfig::new(2, 4.0, 0.0, &["q_proj", "v_proj"]);
    let (model, tr, _) = load_llama_gguf(path, &lora, 0)?;
    run_llama(&model, &tr)?;
    let (model, tr, _) = load_llama_gguf_as(path, &no_lora(), 0, WeightFormat::Dense)?;
    run_llama(&model, &tr)
}

/// A PEFT folder for the tiny Llama (r = 2 on q and v), with random values.
fn llama_adapter(dir: &Path) {
    let lora = LoraConfig::new(2, 4.0, 0.0, &["q_proj", "v_proj"]);
    let file = TempFile::new("gguf", llama_gguf());
    let (_, mut tr, _) = load_llama_gguf(&file.0, &lora, 0).unwrap();
    for i in 0..tr.len() {
        let v = tr.value(i).mapv(|_| 0.1f32);
        tr.set_value(i, v).unwrap();
    }
    save_peft_adapter(dir, &lora, &tr).unwrap();
}

// ---- targeted cases: safetensors -----------------------------------------------------------

/// A safetensors file from a header written by hand and `data`.
fn raw_safetensors(header: &str, data: &[u8]) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(data);
    out
}

fn load_st(bytes: Vec<u8>) -> Result<spry::io::Weights> {
    let f = TempFile::new("safetensors", bytes);
    load_safetensors(&f.0)
}

fn is_format(r: &Result<impl std::fmt::Debug>) -> bool {
    matches!(r, Err(Error::Format { .. }))
}

#[test]
fn safetensors_with_bad_ranges_dtypes_and_sizes_are_format_errors() {
    let data = vec![0u8; 32];
    for (what, header) in [
        (
            "overlapping ranges",
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},
                "b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}"#,
        ),
        (
            "dtype changed (F16 where the bytes are F32)",
            r#"{"a":{"dtype":"F16","shape":[8],"data_offsets":[0,32]}}"#,
        ),
        (
            "offset outside the data",
            r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[1099511627776,1099511627808]}}"#,
        ),
        (
            "u64::MAX dimension",
            r#"{"a":{"dtype":"F32","shape":[18446744073709551615,1],"data_offsets":[0,32]}}"#,
        ),
        (
            "element count overflowing with a zero",
            r#"{"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904,0],
                "data_offsets":[0,0]},"b":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#,
        ),
    ] {
        let r = load_st(raw_safetensors(header, &data));
        assert!(is_format(&r), "{what}: {r:?}");
    }
    // a header length of u64::MAX, 2^62, 2^40
    for n in [u64::MAX, 1 << 62, 1 << 40] {
        let mut bytes = raw_safetensors(
            r#"{"a":{"dtype":"F32","shape":[8],"data_offsets":[0,32]}}"#,
            &data,
        );
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        assert!(is_format(&load_st(bytes)), "header length {n}");
    }
}

#[test]
fn a_zero_element_safetensors_tensor_with_a_huge_dimension_is_never_walked() {
    // [0, 2^62] holds nothing: it loads (as the format allows empty tensors) without walking
    // the 2^62, and a model asking for a real shape gets a shape error.
    let header = r#"{"a":{"dtype":"F32","shape":[0,4611686018427387904],"data_offsets":[0,0]}}"#;
    let w = load_st(raw_safetensors(header, &[])).unwrap();
    assert_eq!(w.get("a").unwrap().len(), 0);
    assert!(matches!(
        w.get2("a", [8, 8]),
        Err(Error::TensorShape { .. })
    ));
}

#[test]
fn bert_layer_counts_must_match_the_checkpoint() {
    let dir = TempDir::new("bert-layers");
    let weights = dir.path().join("model.safetensors");
    std::fs::write(&weights, bert_safetensors()).unwrap();
    let config = dir.path().join("config.json");
    std::fs::write(&config, BERT_JSON).unwrap();
    load_bert(&config, &weights).unwrap();
    for layers in [1usize, 3, 4096] {
        let json = BERT_JSON.replace(
            r#""num_hidden_layers": 2"#,
            &format!(r#""num_hidden_layers": {layers}"#),
        );
        std::fs::write(&config, json).unwrap();
        match load_bert(&config, &weights) {
            Err(Error::Config { path, msg }) => {
                assert_eq!(path, weights);
                assert!(msg.contains(&format!("declares {layers} layers")), "{msg}");
                assert!(msg.contains("holds 2"), "{msg}");
            }
            other => panic!("{layers} layers: {other:?}"),
        }
    }
}

// ---- targeted cases: GGUF ------------------------------------------------------------------

fn open_gguf(bytes: Vec<u8>) -> Result<GgufFile> {
    let f = TempFile::new("gguf", bytes);
    GgufFile::open(&f.0)
}

fn gguf_msg(r: Result<impl std::fmt::Debug>, what: &str) -> String {
    match r {
        Err(Error::Format { format, msg, .. }) => {
            assert_eq!(format, "gguf", "{what}");
            msg
        }
        other => panic!("{what}: expected a GGUF format error, got {other:?}"),
    }
}

#[test]
fn the_tiny_files_load() {
    let f = TempFile::new("gguf", llama_gguf());
    load_llama(&f.0).unwrap();
    let dir = TempDir::new("adapter-ok");
    llama_adapter(dir.path());
    let (model, tr, _) = load_llama_gguf_with_adapter(&f.0, dir.path()).unwrap();
    run_llama(&model, &tr).unwrap();
}

#[test]
fn gguf_ranges_that_overlap_move_or_leave_the_data_are_format_errors() {
    let tensors = || llama_gguf_tensors(LAYERS as usize);
    let kv = llama_kv(LAYERS, 64);
    // the second tensor on top of the first
    let mut t = tensors();
    t[1].offset = Some(0);
    let msg = gguf_msg(open_gguf(build(3, &kv, &t, 32)), "overlap");
    assert!(msg.contains("expected"), "{msg}");
    // a later tensor moved one alignment step further (a gap: its data would be misread)
    let mut t = tensors();
    let placed = open_gguf(build(3, &kv, &t, 32)).unwrap().tensor_infos()[3].offset();
    t[3].offset = Some(placed + 32);
    gguf_msg(open_gguf(build(3, &kv, &t, 32)), "moved");
    // an offset of 2^40, 2^62, u64::MAX (aligned or not)
    for off in [1u64 << 40, 1 << 62, u64::MAX, u64::MAX - 31] {
        let mut t = tensors();
        t[2].offset = Some(off);
        gguf_msg(open_gguf(build(3, &kv, &t, 32)), &format!("offset {off}"));
    }
}

#[test]
fn a_changed_gguf_dtype_is_a_format_error() {
    let kv = llama_kv(LAYERS, 64);
    // every retyping of every tensor among the readable types to one of another size: the bytes
    // no longer match (F16 and BF16 have the same size: such a swap is a valid file, which no
    // structural check can tell from the original)
    let width = |ty: u32| match ty {
        1 | 30 => Some(2),
        0 => Some(4),
        _ => None,
    };
    for i in 0..llama_gguf_tensors(LAYERS as usize).len() {
        for ty in [0u32, 1, 30, 8, 2, 3] {
            let mut t = llama_gguf_tensors(LAYERS as usize);
            if t[i].ty == ty || (width(ty).is_some() && width(ty) == width(t[i].ty)) {
                continue;
            }
            t[i].ty = ty;
            let r = open_gguf(build(3, &kv, &t, 32));
            assert!(is_format(&r), "tensor {i} as type {ty}: {r:?}");
        }
    }
}

#[test]
fn gguf_dims_of_zero_or_huge_sizes_are_format_errors_without_walking_them() {
    let kv = llama_kv(LAYERS, 64);
    for dims in [
        vec![0u64, 1 << 62],
        vec![1 << 62, 0],
        vec![0],
        vec![u64::MAX, 1],
        vec![1 << 40, 1 << 40],
        vec![1 << 62, 1 << 62, 1 << 62, 1 << 62],
        vec![8, 1 << 40],
    ] {
        for ty in [0u32, 1, 8] {
            let mut t = llama_gguf_tensors(LAYERS as usize);
            let last = t.len() - 1;
            t[last].dims = dims.clone();
            t[last].ty = ty;
            gguf_msg(
                open_gguf(build(3, &kv, &t, 32)),
                &format!("dims {dims:?} type {ty}"),
            );
        }
    }
}

#[test]
fn gguf_counts_and_lengths_of_u64_max_are_format_errors() {
    let valid = llama_gguf();
    // tensor count (bytes 8..16), metadata count (16..24), first key length (24..32)
    for at in [8usize, 16, 24] {
        for v in [u64::MAX, 1 << 62, 1 << 40] {
            let mut b = valid.clone();
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
            gguf_msg(open_gguf(b), &format!("{v} at {at}"));
        }
    }
}

#[test]
fn gguf_block_counts_must_match_the_blocks_present() {
    for (declared, present) in [(1u32, 2usize), (2, 1), (3, 2), (4096, 2)] {
        let f = TempFile::new("gguf", llama_gguf_with(declared, present, 64));
        match load_llama(&f.0) {
            Err(Error::Config { path, msg }) => {
                assert_eq!(path, f.0);
                assert!(msg.contains(&format!("block_count is {declared}")), "{msg}");
                assert!(msg.contains(&format!("holds {present} blocks")), "{msg}");
            }
            other => panic!("{declared} declared, {present} present: {other:?}"),
        }
    }
}

#[test]
fn a_huge_context_length_allocates_no_rope_table() {
    // 2^24 positions (the largest a config may declare) with 2 heads of 4: a table sized by the
    // context length would hold 2 × 2^24 × 2 f32s (256 MiB, 67 M sines and cosines) at load;
    // the table grows with the positions used.
    let f = TempFile::new("gguf", llama_gguf_with(LAYERS, LAYERS as usize, 1 << 24));
    let before = spry::metrics::current_rss_mib();
    let (model, tr, _) = load_llama_gguf(&f.0, &no_lora(), 0).unwrap();
    run_llama(&model, &tr).unwrap();
    if let (Some(b), Some(a)) = (before, spry::metrics::current_rss_mib()) {
        assert!(a - b < 128.0, "resident memory grew from {b} to {a} MiB");
    }
    drop(model);
    // past the documented range it is a config error, before anything is allocated
    let f = TempFile::new("gguf", llama_gguf_with(LAYERS, LAYERS as usize, 1 << 40));
    match load_llama(&f.0) {
        Err(Error::Config { msg, .. }) => assert!(msg.contains("max_position_embeddings")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn non_finite_gguf_data_is_reported() {
    let kv = llama_kv(LAYERS, 64);
    for ty in [1u32, 0] {
        let mut t = llama_gguf_tensors(LAYERS as usize);
        let i = t.iter().position(|x| x.ty == ty).unwrap();
        if ty == 1 {
            t[i].data[2..4].copy_from_slice(&0x7e00u16.to_le_bytes());
        } else {
            t[i].data[4..8].copy_from_slice(&f32::INFINITY.to_le_bytes());
        }
        let f = TempFile::new("gguf", build(3, &kv, &t, 32));
        let r = load_llama(&f.0);
        assert!(
            matches!(r, Err(Error::NonFinite { index: 1, .. })),
            "type {ty}: {r:?}"
        );
    }
}

// ---- targeted cases: PEFT folders ----------------------------------------------------------

fn edit_json(path: &Path, f: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>)) {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    f(v.as_object_mut().unwrap());
    std::fs::write(path, v.to_string()).unwrap();
}

#[test]
fn peft_ranks_that_are_absurd_or_disagree_with_the_tensors_are_errors() {
    let gguf = TempFile::new("gguf", llama_gguf());
    for r in [1u64 << 40, 1 << 62, u64::MAX, 0, 65536, 3, 1] {
        let dir = TempDir::new("peft-r");
        llama_adapter(dir.path());
        edit_json(&dir.path().join(ADAPTER_CONFIG_FILE), |o| {
            o.insert("r".into(), r.into());
        });
        match load_llama_gguf_with_adapter(&gguf.0, dir.path()) {
            Err(Error::Config { path, .. }) => {
                assert!(path.ends_with(ADAPTER_CONFIG_FILE), "r = {r}: {path:?}")
            }
            Err(e) => panic!("r = {r}: {e:?}"),
            Ok(_) => panic!("r = {r} loaded"),
        }
        assert!(PeftAdapter::read(dir.path()).is_err(), "r = {r}");
    }
}

#[test]
fn a_model_cannot_be_built_with_a_rank_above_its_layers() {
    // a config alone (no tensors to check it against) still cannot make loading allocate
    // r·(in + out) per layer for an r far beyond the layer
    let f = TempFile::new("gguf", llama_gguf());
    let lora = LoraConfig::new(65536, 4.0, 0.0, &["q_proj"]);
    assert!(matches!(
        load_llama_gguf(&f.0, &lora, 0),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn peft_factors_that_disagree_with_the_base_layer_are_shape_errors() {
    let gguf = TempFile::new("gguf", llama_gguf());
    let dir = TempDir::new("peft-shape");
    llama_adapter(dir.path());
    let path = dir.path().join(ADAPTER_WEIGHTS_FILE);
    let mut w = load_safetensors(&path).unwrap();
    let a = w
        .names()
        .find(|n| n.ends_with("lora_A.weight"))
        .unwrap()
        .to_owned();
    w.take(&a).unwrap();
    let mut tensors: Vec<(String, ArrayD<f32>)> = w
        .iter()
        .map(|(n, t)| (n.to_owned(), t.to_owned()))
        .collect();
    // rank 2 as the config says, but 9 input features where the layer has 8
    tensors.push((a, ArrayD::from_elem(vec![2, 9], 0.1)));
    std::fs::write(&path, safetensors_bytes(&tensors)).unwrap();
    let r = load_llama_gguf_with_adapter(&gguf.0, dir.path());
    assert!(matches!(r, Err(Error::TensorShape { .. })), "{:?}", r.err());
    let lora = LoraConfig::new(2, 4.0, 0.0, &["q_proj", "v_proj"]);
    let (_, mut tr, _) = load_llama_gguf(&gguf.0, &lora, 0).unwrap();
    assert!(matches!(
        load_peft_adapter(dir.path(), &lora, &mut tr),
        Err(Error::TensorShape { .. })
    ));
}

// ---- properties: any bytes, any mutation ---------------------------------------------------

/// One change to a valid file.
#[derive(Clone, Debug)]
enum Mutation {
    /// Keep only the first bytes.
    Truncate(Index),
    /// XOR one byte with a non-zero mask.
    Flip(Index, u8),
    /// Overwrite 8 bytes with a little-endian size (in the header with probability ½, where the
    /// size fields are).
    Overwrite(Index, bool, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        any::<Index>().prop_map(Mutation::Truncate),
        (any::<Index>(), 1u8..=255).prop_map(|(i, m)| Mutation::Flip(i, m)),
        (
            any::<Index>(),
            any::<bool>(),
            prop_oneof![
                Just(1u64 << 40),
                Just(1u64 << 62),
                Just(u64::MAX),
                Just(0u64),
            ],
        )
            .prop_map(|(i, h, v)| Mutation::Overwrite(i, h, v)),
    ]
}

/// `bytes` with the mutations applied; `header` is the length of the part holding the sizes.
fn mutate(bytes: &[u8], header: usize, mutations: &[Mutation]) -> Vec<u8> {
    let mut b = bytes.to_vec();
    for m in mutations {
        if b.is_empty() {
            break;
        }
        match m {
            Mutation::Truncate(i) => b.truncate(i.index(b.len())),
            Mutation::Flip(i, mask) => {
                let at = i.index(b.len());
                b[at] ^= mask;
            }
            Mutation::Overwrite(i, in_header, v) => {
                let span = if *in_header {
                    header.min(b.len())
                } else {
                    b.len()
                };
                let at = i.index(span.max(1));
                let end = (at + 8).min(b.len());
                b[at..end].copy_from_slice(&v.to_le_bytes()[..end - at]);
            }
        }
    }
    b
}

/// Absurd numbers to put in place of a JSON number.
const ABSURD: [&str; 8] = [
    "1099511627776",
    "4611686018427387904",
    "18446744073709551615",
    "0",
    "-1",
    "1e308",
    "3",
    "65536",
];

/// `json` with its `k`-th number (counting modulo the numbers present) replaced by `with`.
fn replace_number(json: &str, k: Index, with: &str) -> String {
    let bytes = json.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_digit() || b".eE-".contains(&bytes[i])) {
                i += 1;
            }
            spans.push((start, i));
        } else {
            i += 1;
        }
    }
    if spans.is_empty() {
        return json.to_owned();
    }
    let (s, e) = spans[k.index(spans.len())];
    format!("{}{with}{}", &json[..s], &json[e..])
}

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(cases(256))]

    #[test]
    fn any_bytes_give_ok_or_an_error(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let f = TempFile::new("bin", &bytes);
        let _ = load_safetensors(&f.0);
        let _ = GgufFile::open(&f.0);
        let _ = GgufFile::open_mapped(&f.0);
        let _ = load_llama(&f.0);
        let _ = BertConfig::from_file(&f.0);
        let _ = LlamaConfig::from_file(&f.0);
        let dir = TempDir::new("bytes");
        std::fs::write(dir.path().join(ADAPTER_CONFIG_FILE), &bytes).unwrap();
        std::fs::write(dir.path().join(ADAPTER_WEIGHTS_FILE), &bytes).unwrap();
        let _ = PeftAdapter::read(dir.path());
    }

    #[test]
    fn mutated_gguf_files_give_ok_or_an_error(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        let valid = llama_gguf();
        let header = GgufFile::from_bytes("x.gguf", valid.clone()).unwrap().data_start();
        let f = TempFile::new("gguf", mutate(&valid, header, &mutations));
        let _ = load_llama(&f.0);
    }

    #[test]
    fn mutated_safetensors_give_ok_or_an_error(
        mutations in prop::collection::vec(mutation(), 1..4)
    ) {
        let valid = bert_safetensors();
        let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
        let dir = TempDir::new("st");
        let weights = dir.path().join("model.safetensors");
        std::fs::write(&weights, mutate(&valid, header, &mutations)).unwrap();
        let config = dir.path().join("config.json");
        std::fs::write(&config, BERT_JSON).unwrap();
        let _ = load_bert(&config, &weights);
    }

    #[test]
    fn mutated_configs_give_ok_or_an_error(
        k in any::<Index>(),
        absurd in prop::sample::select(&ABSURD[..]),
        mutations in prop::collection::vec(mutation(), 0..2),
    ) {
        let dir = TempDir::new("cfg");
        let weights = dir.path().join("model.safetensors");
        std::fs::write(&weights, bert_safetensors()).unwrap();
        let config = dir.path().join("config.json");
        let json = replace_number(BERT_JSON, k, absurd);
        let text = mutate(json.as_bytes(), json.len(), &mutations);
        std::fs::write(&config, &text).unwrap();
        let _ = load_bert(&config, &weights);
        let _ = LlamaConfig::from_file(&config);
    }

    #[test]
    fn mutated_peft_folders_give_ok_or_an_error(
        k in any::<Index>(),
        absurd in prop::sample::select(&ABSURD[..]),
        mutations in prop::collection::vec(mutation(), 0..3),
        which in any::<bool>(),
    ) {
        let gguf = TempFile::new("gguf", llama_gguf());
        let dir = TempDir::new("peft");
        llama_adapter(dir.path());
        if which {
            let path = dir.path().join(ADAPTER_CONFIG_FILE);
            let json = replace_number(&std::fs::read_to_string(&path).unwrap(), k, absurd);
            std::fs::write(&path, mutate(json.as_bytes(), json.len(), &mutations)).unwrap();
        } else {
            let path = dir.path().join(ADAPTER_WEIGHTS_FILE);
            let valid = std::fs::read(&path).unwrap();
            let header = 8 + u64::from_le_bytes(valid[..8].try_into().unwrap()) as usize;
            std::fs::write(&path, mutate(&valid, header, &mutations)).unwrap();
        }
        if let Ok((model, tr, _)) = load_llama_gguf_with_adapter(&gguf.0, dir.path()) {
            run_llama(&model, &tr).unwrap();
        }
    }
}

#[test]
fn gguf_metadata_numbers_replaced_by_absurd_ones_give_ok_or_an_error() {
    // every u32/u64 metadata value of the Llama GGUF set to each absurd size
    let keys: Vec<&str> = llama_kv(LAYERS, 64)
        .iter()
        .filter(|(_, v)| matches!(v, GgufValue::U32(_) | GgufValue::U64(_)))
        .map(|(k, _)| *k)
        .collect();
    for key in keys {
        for v in [1u64 << 40, 1 << 62, u64::MAX, 0, 1 << 24, 65536, 3] {
            let kv: Vec<_> = llama_kv(LAYERS, 64)
                .into_iter()
                .map(|(k, old)| (k, if k == key { GgufValue::U64(v) } else { old }))
                .collect();
            let tensors = llama_gguf_tensors(LAYERS as usize);
            let f = TempFile::new("gguf", build(3, &kv, &tensors, 32));
            let _ = load_llama(&f.0);
        }
    }
}
