//! Weights kept in a memory map of their GGUF file (`GgufFile::open_mapped`):
//! - the mapped SmolLM2 GGUF gives bit for bit the logits and loss of the file read into memory,
//!   every packed frozen matrix of the mapped model is a range of the map, and the q/k
//!   projections are un-permuted by a row order over the mapped bytes, not copied;
//! - a reordered (row-permuted) mapped matrix decodes equal to the copied `select_rows` result,
//!   for every packed format, random shapes, permutations and row ranges, and the q/k
//!   un-permutation of a mapped matrix equals the dense one;
//! - loading the mapped SmolLM2 grows the resident anonymous memory by far less than the file's
//!   tensor bytes (measured in a process of its own);
//! - a file broken before it is mapped still gives typed errors.

#[path = "common/assets.rs"]
mod assets;
#[path = "common/gguf_writer.rs"]
mod gguf_writer;
#[path = "common/packed_bytes.rs"]
mod packed_bytes;
#[path = "common/temp_file.rs"]
mod temp_file;

use assets::asset;
use gguf_writer::{build, tensor};
use ndarray::Array2;
use packed_bytes::random_packed_bytes;
use proptest::prelude::*;
use spry::io::{
    GgufFile, LlamaConfig, PackedFormat, PackedMatrix, unpermute_rope_rows,
    unpermute_rope_rows_packed,
};
use spry::kernels::FrozenWeight;
use spry::models::AdaptedModel;
use spry::models::llama::Llama;
use spry::models::pretrained::{load_llama_gguf, no_lora};
use spry::models::source::GgufLlamaSource;
use spry::modules::{Directions, Trainable};
use spry::rng::{Domain, KeyedRng};
use spry::{Error, metrics};
use temp_file::TempFile;

const GGUF: &str = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

/// The packed frozen weights of every projection of a model.
fn packed_weights(model: &Llama<f32>) -> Vec<(String, PackedMatrix)> {
    model
        .linears()
        .into_iter()
        .filter_map(|l| match &l.weight {
            FrozenWeight::Packed(p) => Some((l.path.clone(), p.clone())),
            FrozenWeight::Dense(_) => None,
        })
        .collect()
}

#[test]
fn mapped_smollm2_gives_the_logits_and_loss_of_the_file_read_into_memory() {
    let path = asset(GGUF);
    let (mapped, trainable, tok) = load_llama_gguf(&path, &no_lora(), 0).unwrap();

    let file = GgufFile::open(&path).unwrap();
    assert!(!file.is_mapped());
    let config = LlamaConfig::from_gguf(&file).unwrap();
    let mut source =
        GgufLlamaSource::new(file, config.num_attention_heads, config.num_key_value_heads);
    let mut read_trainable = Trainable::new();
    let read = Llama::load(&config, &mut source, &no_lora(), 0, &mut read_trainable).unwrap();
    drop(source);

    // every projection is packed: in the map for one model, owned by the other
    let (mapped_w, read_w) = (packed_weights(&mapped), packed_weights(&read));
    assert_eq!(mapped_w.len(), 7 * config.num_hidden_layers);
    assert_eq!(mapped_w.len(), read_w.len());
    for ((name, m), (_, r)) in mapped_w.iter().zip(&read_w) {
        assert!(m.is_mapped() && !r.is_mapped(), "{name}");
        assert_eq!(m, r, "{name}");
        let reordered = name.ends_with("q_proj") || name.ends_with("k_proj");
        assert_eq!(m.row_order().is_some(), reordered, "{name}");
        assert_eq!(r.row_order().is_some(), reordered, "{name}");
    }
    assert_eq!(mapped.frozen_bytes(), read.frozen_bytes());

    let ids = tok
        .encode(
            "The capital of France is Paris, and the capital of Italy is",
            true,
        )
        .unwrap()
        .ids;
    let n = ids.len();
    let ids = Array2::from_shape_vec((1, n), ids).unwrap();
    let bits = |a: &Array2<f32>| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let (lm, lr) = (
        mapped.last_logits(ids.view(), &trainable).unwrap(),
        read.last_logits(ids.view(), &read_trainable).unwrap(),
    );
    assert_eq!(lm.dim(), (1, config.vocab_size));
    assert_eq!(bits(&lm), bits(&lr));
    let labels = ids.mapv(i64::from);
    let none = Directions::none(trainable.len());
    let (cm, cr) = (
        mapped
            .loss(ids.view(), labels.view(), None, &trainable, &none, None)
            .unwrap(),
        read.loss(
            ids.view(),
            labels.view(),
            None,
            &read_trainable,
            &none,
            None,
        )
        .unwrap(),
    );
    assert!(cm.loss.is_finite() && cm.loss > 0.0);
    assert_eq!(cm.loss.to_bits(), cr.loss.to_bits());
}

/// Random stored bytes of a `[rows, cols]` matrix with finite values.
fn random_bytes(format: PackedFormat, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    let mut r = KeyedRng::new(seed, Domain::Data, &[0x3a]);
    random_packed_bytes(format, rows, cols, &mut r)
}

const FORMATS: [(PackedFormat, u32); 5] = [
    (PackedFormat::F16, 1),
    (PackedFormat::BF16, 30),
    (PackedFormat::Q8_0, 8),
    (PackedFormat::Q4_0, 2),
    (PackedFormat::Q4_1, 3),
];

/// A mapped matrix `w` of `format`, `[rows, cols]`, taken from a GGUF file that also holds a
/// small tensor before it (so its range does not start at the data section), with the owned
/// matrix of the same bytes. The file is deleted at once: the map keeps it.
fn mapped_matrix(
    format: usize,
    rows: usize,
    cols: usize,
    seed: u64,
) -> (PackedMatrix, PackedMatrix) {
    let (format, tag) = FORMATS[format];
    let bytes = random_bytes(format, rows, cols, seed);
    let owned = PackedMatrix::new(format, rows, cols, bytes.clone()).unwrap();
    let first = random_bytes(PackedFormat::F16, 1, 3, seed ^ 1);
    let file = build(
        3,
        &[],
        &[
            tensor("first", &[3, 1], 1, first),
            tensor("w", &[cols as u64, rows as u64], tag, bytes),
        ],
        32,
    );
    let f = TempFile::new("gguf", file);
    let gguf = GgufFile::open_mapped(&f.0).unwrap();
    drop(f);
    let mapped = gguf.tensor_packed("w").unwrap();
    assert!(mapped.is_mapped());
    (mapped, owned)
}

/// `(format, n_heads, head_dim, cols, seed)`.
type Shape = (usize, usize, usize, usize, u64);

/// A shape, then a permutation of the rows and a row range.
fn case() -> impl Strategy<Value = (Shape, Vec<usize>, (usize, usize))> {
    (0..5usize, 1..4usize, 1..5usize, 1..4usize, any::<u64>()).prop_flat_map(
        |(format, heads, half, col_units, seed)| {
            let head_dim = 2 * half;
            let rows = heads * head_dim;
            let block = FORMATS[format].0.block_layout().0;
            // F16/BF16 rows of odd lengths, quantised rows of 1..3 blocks
            let cols = if block == 1 {
                2 * col_units + 1
            } else {
                block * col_units
            };
            (
                Just((format, heads, head_dim, cols, seed)),
                Just((0..rows).collect::<Vec<_>>()).prop_shuffle(),
                (0..=rows, 0..=rows).prop_map(|(a, b)| (a.min(b), a.max(b))),
            )
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..Default::default() })]

    #[test]
    fn a_reordered_mapped_matrix_decodes_equal_to_the_copied_rows(
        ((format, heads, head_dim, cols, seed), order, (r0, r1)) in case()
    ) {
        let rows = heads * head_dim;
        let (mapped, owned) = mapped_matrix(format, rows, cols, seed);
        prop_assert_eq!(&mapped, &owned);

        let view = mapped.permute_rows(&order).unwrap();
        let copy = owned.select_rows(&order);
        prop_assert!(view.is_mapped() && !copy.is_mapped());
        prop_assert_eq!(view.as_bytes().as_ptr(), mapped.as_bytes().as_ptr());
        prop_assert_eq!(&view, &copy);
        prop_assert_eq!(view.row_bytes(), copy.row_bytes());
        prop_assert_eq!(view.first_non_finite(), None);
        let bits = |a: &[f32]| a.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(view.to_dense::<f32>().as_slice().unwrap()),
            bits(copy.to_dense::<f32>().as_slice().unwrap()));
        let mut a = vec![0.0f64; (r1 - r0) * cols];
        let mut b = a.clone();
        view.decode_rows(r0, &mut a);
        copy.decode_rows(r0, &mut b);
        prop_assert_eq!(&a, &b);
        // copying a view, and viewing a view, honour its order
        let again: Vec<usize> = order.iter().rev().copied().collect();
        prop_assert_eq!(view.select_rows(&again), copy.select_rows(&again));
        prop_assert_eq!(view.permute_rows(&again).unwrap(), copy.select_rows(&again));

        // the q/k un-permutation: a view of the map that widens to the dense un-permutation
        let unperm = unpermute_rope_rows_packed(&mapped, heads).unwrap();
        prop_assert!(unperm.is_mapped());
        let dense = unpermute_rope_rows(owned.to_dense::<f32>(), heads).unwrap();
        prop_assert_eq!(bits(unperm.to_dense::<f32>().as_slice().unwrap()),
            bits(dense.as_slice().unwrap()));
    }
}

/// Set in the child process that measures the resident memory of a load on its own.
const RSS_CHILD: &str = "SPRY_MAPPED_RSS_CHILD";

/// Loading the mapped SmolLM2 must not copy its weights into anonymous memory. The measurement
/// runs in a child process running only this test, so no other test allocates meanwhile.
#[test]
fn a_mapped_load_grows_anonymous_memory_by_far_less_than_the_weights() {
    const NAME: &str = "a_mapped_load_grows_anonymous_memory_by_far_less_than_the_weights";
    let path = asset(GGUF);
    if std::env::var_os(RSS_CHILD).is_none() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
            .env(RSS_CHILD, "1")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "child failed:\n{text}\n{err}");
        // the child ran this test (a filter matching nothing would also succeed)
        assert!(text.contains("1 passed"), "{text}");
        assert!(text.contains("packed tensor bytes"), "{text}");
        return;
    }
    let packed_bytes: usize = GgufFile::open_mapped(&path)
        .unwrap()
        .tensor_infos()
        .iter()
        .filter(|t| PackedFormat::from_ggml(t.ggml_type()).is_some())
        .map(|t| t.n_bytes().unwrap())
        .sum();
    let packed_mib = packed_bytes as f64 / (1 << 20) as f64;
    assert!(packed_mib > 80.0, "{packed_mib} MiB");
    let before = metrics::rss_breakdown_mib().expect("Linux reports RssAnon");
    let (model, _trainable, _tok) = load_llama_gguf(&path, &no_lora(), 0).unwrap();
    let after = metrics::rss_breakdown_mib().unwrap();
    let anon = after.anon - before.anon;
    let file = after.file - before.file;
    println!(
        "packed tensor bytes {packed_mib:.1} MiB; load: anonymous +{anon:.1} MiB, \
         file-backed +{file:.1} MiB"
    );
    // Copied weights would add at least `packed_mib` (~93 MiB) of anonymous memory; what a
    // mapped load allocates is the tokenizer, the norm gains and the row orders (~20 MiB).
    assert!(
        anon < 0.5 * packed_mib,
        "anonymous memory grew by {anon:.1} MiB for {packed_mib:.1} MiB of packed weights"
    );
    assert!(packed_weights(&model).iter().all(|(_, p)| p.is_mapped()));
}

#[test]
fn files_broken_before_they_are_mapped_give_typed_errors() {
    let bytes = build(
        3,
        &[],
        &[tensor(
            "w",
            &[32, 2],
            8,
            random_bytes(PackedFormat::Q8_0, 2, 32, 5),
        )],
        32,
    );
    let whole = TempFile::new("gguf", &bytes);
    let g = GgufFile::open_mapped(&whole.0).unwrap();
    assert!(g.is_mapped());
    assert_eq!(g.tensor_packed("w").unwrap().rows(), 2);
    for cut in [0, 3, 24, g.data_start(), bytes.len() - 1] {
        let f = TempFile::new("gguf", &bytes[..cut]);
        let e = GgufFile::open_mapped(&f.0).unwrap_err();
        assert!(matches!(e, Error::Format { .. }), "cut at {cut}: {e}");
    }
    // trailing bytes (a tensor that would overlap the next one's padding) and a directory
    let mut long = bytes.clone();
    long.extend([1; 40]);
    let f = TempFile::new("gguf", &long);
    assert!(matches!(
        GgufFile::open_mapped(&f.0),
        Err(Error::Format { .. })
    ));
    let dir = std::env::temp_dir();
    assert!(matches!(
        GgufFile::open_mapped(&dir),
        Err(Error::Io { path, .. }) if path == dir
    ));
}
