//! safetensors loading and saving: round trips, dtype conversion, integer buffers, every kind of
//! malformed file, and the real all-MiniLM-L6-v2 checkpoint.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

use ndarray::{Array, ArrayD, IxDyn, array};
use spry::Error;
use spry::io::{BertConfig, asset, load_safetensors, save_safetensors};

/// A fresh path in the system temp dir, unique per process and call.
fn temp_path(tag: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "spry-io-st-{}-{n}-{tag}.safetensors",
        std::process::id()
    ))
}

/// Writes `bytes` to a fresh temp file.
fn write_temp(tag: &str, bytes: &[u8]) -> PathBuf {
    let path = temp_path(tag);
    std::fs::write(&path, bytes).unwrap();
    path
}

/// A safetensors file built by hand: `(name, dtype, shape, raw bytes)` laid out in order.
fn raw_file(tensors: &[(&str, &str, &[usize], Vec<u8>)]) -> Vec<u8> {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        entries.push(format!(
            "\"{name}\":{{\"dtype\":\"{dtype}\",\"shape\":{shape:?},\"data_offsets\":[{start},{}]}}",
            data.len()
        ));
    }
    raw_with_header(&format!("{{{}}}", entries.join(",")), &data)
}

/// `u64 len` + header (space-padded to 8) + data.
fn raw_with_header(header: &str, data: &[u8]) -> Vec<u8> {
    let mut h = header.as_bytes().to_vec();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(data);
    out
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u16_bytes(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// A valid two-tensor file used by the corruption tests.
fn valid_file() -> Vec<u8> {
    raw_file(&[
        ("a", "F32", &[2, 2], f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
        ("b", "F32", &[3], f32_bytes(&[5.0, 6.0, 7.0])),
    ])
}

fn assert_format(result: spry::Result<spry::io::Weights>, what: &str) {
    match result {
        Err(Error::Format { format, msg, .. }) => {
            assert_eq!(format, "safetensors", "{what}: {msg}");
        }
        other => panic!("{what}: expected a Format error, got {other:?}"),
    }
}

#[test]
fn round_trip_save_load() {
    let a = Array::from_shape_fn((3, 5), |(i, j)| i as f32 * 10.0 + j as f32 - 7.25).into_dyn();
    let b =
        Array::from_shape_fn((2, 3, 4), |(i, j, k)| (i * 12 + j * 4 + k) as f32 * 1e-3).into_dyn();
    let scalar = ArrayD::from_elem(IxDyn(&[]), -3.5f32);
    let empty = ArrayD::<f32>::zeros(IxDyn(&[0, 4]));
    // A transposed (non-contiguous) view must be written in its logical row-major order.
    let t = a.view().reversed_axes();
    let mut meta = HashMap::new();
    meta.insert("format".to_owned(), "pt".to_owned());
    meta.insert("rank".to_owned(), "8".to_owned());
    let path = temp_path("roundtrip");
    save_safetensors(
        &path,
        &[
            ("z.a", a.view()),
            ("b", b.view()),
            ("scalar", scalar.view()),
            ("empty", empty.view()),
            ("a_t", t),
        ],
        Some(meta.clone()),
    )
    .unwrap();
    let w = load_safetensors(&path).unwrap();
    assert_eq!(w.path(), path.as_path());
    assert_eq!(w.len(), 5);
    assert_eq!(
        w.names().collect::<Vec<_>>(),
        ["a_t", "b", "empty", "scalar", "z.a"]
    );
    assert_eq!(w.get("z.a").unwrap(), a.view());
    assert_eq!(w.get("b").unwrap(), b.view());
    assert_eq!(w.get("scalar").unwrap(), scalar.view());
    assert_eq!(w.shape("empty").unwrap(), &[0, 4]);
    let at = w.get2("a_t", [5, 3]).unwrap();
    assert_eq!(at, a.view().reversed_axes().into_dimensionality().unwrap());
    assert_eq!(w.n_params(), 15 + 24 + 1 + 15); // the empty tensor has no element

    // The metadata is in the header, as the reference implementation reads it.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    assert_eq!(header.metadata().as_ref(), Some(&meta));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn save_overwrites_existing_file() {
    let path = temp_path("overwrite");
    let x = array![1.0f32, 2.0].into_dyn();
    let y = array![[3.0f32]].into_dyn();
    save_safetensors(&path, &[("x", x.view())], None).unwrap();
    save_safetensors(&path, &[("y", y.view())], None).unwrap();
    let w = load_safetensors(&path).unwrap();
    assert_eq!(w.names().collect::<Vec<_>>(), ["y"]);
    std::fs::remove_file(&path).unwrap();
}

/// A saved file gets the permissions of any new file in that folder (not a temporary file's
/// owner-only mode), and no temporary file is left beside it.
#[cfg(unix)]
#[test]
fn saved_file_has_ordinary_permissions_and_no_leftovers() {
    use std::os::unix::fs::PermissionsExt;
    let path = temp_path("mode");
    let plain = write_temp("mode-plain", b"x");
    let x = array![1.0f32, 2.0].into_dyn();
    save_safetensors(&path, &[("x", x.view())], None).unwrap();
    let mode = |p: &PathBuf| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&path), mode(&plain));
    let dir = path.parent().unwrap();
    let stem = path.file_name().unwrap().to_string_lossy().into_owned();
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != &stem && n.contains(&stem))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    std::fs::remove_file(&path).unwrap();
    std::fs::remove_file(&plain).unwrap();
}
#[test]
fn save_rejects_non_finite_duplicates_and_reserved_names() {
    let path = temp_path("save-bad");
    let good = array![1.0f32, 2.0].into_dyn();
    let nan = array![1.0f32, 2.0, f32::NAN].into_dyn();
    let err = save_safetensors(&path, &[("ok", good.view()), ("bad", nan.view())], None);
    assert!(
        matches!(&err, Err(Error::NonFinite { name, index: 2, .. }) if name == "bad"),
        "{err:?}"
    );
    let err = save_safetensors(&path, &[("x", good.view()), ("x", good.view())], None);
    assert!(matches!(err, Err(Error::InvalidArgument { .. })), "{err:?}");
    let err = save_safetensors(&path, &[("__metadata__", good.view())], None);
    assert!(matches!(err, Err(Error::InvalidArgument { .. })), "{err:?}");
    assert!(!path.exists());
}

#[test]
fn save_to_missing_directory_is_io_error() {
    let path = temp_path("no-such-dir").join("x.safetensors");
    let x = array![1.0f32].into_dyn();
    let err = save_safetensors(&path, &[("x", x.view())], None);
    assert!(matches!(err, Err(Error::Io { .. })), "{err:?}");
}

#[test]
fn f16_and_bf16_are_converted_exactly() {
    // f16 bit patterns and their exact values.
    let f16_bits = [0x3C00u16, 0xC100, 0x7BFF, 0x0001, 0x3800, 0x8000];
    let f16_vals = [1.0f32, -2.5, 65504.0, 2f32.powi(-24), 0.5, -0.0];
    // bf16 is the top half of an f32.
    let bf16_bits = [0x3F80u16, 0xC040, 0x4049, 0x0080];
    let bf16_vals = [1.0f32, -3.0, 3.140625, f32::MIN_POSITIVE];
    let path = write_temp(
        "half",
        &raw_file(&[
            ("h", "F16", &[2, 3], u16_bytes(&f16_bits)),
            ("b", "BF16", &[4], u16_bytes(&bf16_bits)),
        ]),
    );
    let w = load_safetensors(&path).unwrap();
    let h = w.get2("h", [2, 3]).unwrap();
    for (got, want) in h.iter().zip(f16_vals) {
        assert_eq!(got.to_bits(), want.to_bits(), "{got} vs {want}");
    }
    let b = w.get1("b", 4).unwrap();
    for (got, want) in b.iter().zip(bf16_vals) {
        assert_eq!(got.to_bits(), want.to_bits(), "{got} vs {want}");
    }
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn integer_buffers_are_skipped_but_listed() {
    let ids: Vec<u8> = (0i64..4).flat_map(|i| i.to_le_bytes()).collect();
    let ids32: Vec<u8> = (0i32..3).flat_map(|i| i.to_le_bytes()).collect();
    let path = write_temp(
        "ints",
        &raw_file(&[
            ("w", "F32", &[2], f32_bytes(&[0.5, -0.5])),
            ("position_ids", "I64", &[1, 4], ids),
            ("counts", "I32", &[3], ids32),
        ]),
    );
    let w = load_safetensors(&path).unwrap();
    assert_eq!(w.len(), 1);
    assert!(w.contains("w"));
    assert!(!w.contains("position_ids"));
    let skipped: Vec<_> = w
        .skipped()
        .map(|(n, s)| (n, s.dtype.as_str(), s.shape.clone()))
        .collect();
    assert_eq!(
        skipped,
        [
            ("counts", "I32", vec![3]),
            ("position_ids", "I64", vec![1, 4])
        ]
    );
    let err = w.get("position_ids");
    assert!(
        matches!(&err, Err(Error::UnsupportedDtype { name, .. }) if name == "position_ids"),
        "{err:?}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn unsupported_dtypes_are_named() {
    for (dtype, bytes) in [("F64", 8usize), ("U8", 1), ("I8", 1), ("BOOL", 1)] {
        let path = write_temp(
            "dtype",
            &raw_file(&[
                ("fine", "F32", &[1], f32_bytes(&[1.0])),
                ("odd", dtype, &[2], vec![0u8; 2 * bytes]),
            ]),
        );
        let err = load_safetensors(&path);
        match &err {
            Err(Error::UnsupportedDtype {
                path: p,
                name,
                dtype: d,
            }) => {
                assert_eq!(p, &path);
                assert_eq!(name, "odd");
                assert_eq!(d, dtype);
            }
            other => panic!("{dtype}: expected UnsupportedDtype, got {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn truncated_files_are_format_errors() {
    let full = valid_file();
    let header_end = 8 + u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let cuts = [
        0,
        3,
        7,
        8,
        12,
        header_end / 2,
        header_end - 1,
        header_end,
        header_end + 5,
        full.len() - 1,
    ];
    for cut in cuts {
        let path = write_temp("trunc", &full[..cut]);
        assert_format(load_safetensors(&path), &format!("truncated at {cut}"));
        std::fs::remove_file(&path).unwrap();
    }
    // The untruncated file is fine.
    let path = write_temp("full", &full);
    load_safetensors(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn trailing_bytes_are_format_errors() {
    let mut bytes = valid_file();
    bytes.extend_from_slice(&[0; 4]);
    let path = write_temp("trailing", &bytes);
    assert_format(load_safetensors(&path), "trailing bytes");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn bad_header_json_is_format_error() {
    let data = f32_bytes(&[1.0]);
    for header in [
        "{not json",
        "[1, 2, 3]",
        r#"{"a": {"dtype": "F32", "shape": [1]}}"#,
        r#"{"a": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}"#,
        r#"{"__metadata__": {"x": 1}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}"#,
    ] {
        let path = write_temp("json", &raw_with_header(header, &data));
        assert_format(load_safetensors(&path), header);
        std::fs::remove_file(&path).unwrap();
    }
    // Invalid UTF-8 in the header.
    let mut bytes = raw_with_header("{\"a\":1}", &data);
    bytes[9] = 0xFF;
    let path = write_temp("utf8", &bytes);
    assert_format(load_safetensors(&path), "invalid UTF-8");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn header_length_larger_than_file_is_format_error() {
    for n in [1u64 << 40, u64::MAX, 1000] {
        let mut bytes = valid_file();
        bytes[..8].copy_from_slice(&n.to_le_bytes());
        let path = write_temp("hlen", &bytes);
        match load_safetensors(&path) {
            Err(Error::Format { msg, .. }) => assert!(msg.contains("exceeds"), "{msg}"),
            other => panic!("header length {n}: expected Format, got {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn offsets_out_of_bounds_are_format_errors() {
    let data = f32_bytes(&[1.0, 2.0, 3.0, 4.0]);
    for header in [
        // past the end of the data
        r#"{"a": {"dtype": "F32", "shape": [100], "data_offsets": [0, 400]}}"#,
        // inconsistent with the shape
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 16]}}"#,
        // reversed
        r#"{"a": {"dtype": "F32", "shape": [0], "data_offsets": [16, 0]}}"#,
        // a gap
        r#"{"a": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}"#,
        // element count overflows
        r#"{"a": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 16]}}"#,
    ] {
        let path = write_temp("offsets", &raw_with_header(header, &data));
        assert_format(load_safetensors(&path), header);
        std::fs::remove_file(&path).unwrap();
    }
}

#[test]
fn non_finite_weights_are_rejected_with_name_and_index() {
    for (bad, idx) in [
        (f32::NAN, 3usize),
        (f32::INFINITY, 0),
        (f32::NEG_INFINITY, 5),
    ] {
        let mut v = vec![0.25f32; 6];
        v[idx] = bad;
        let path = write_temp(
            "nan",
            &raw_file(&[
                ("ok", "F32", &[1], f32_bytes(&[1.0])),
                ("layer.weight", "F32", &[2, 3], f32_bytes(&v)),
            ]),
        );
        match load_safetensors(&path) {
            Err(Error::NonFinite {
                path: p,
                name,
                index,
            }) => {
                assert_eq!(p, path);
                assert_eq!(name, "layer.weight");
                assert_eq!(index, idx);
            }
            other => panic!("{bad}: expected NonFinite, got {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
    // An f16 NaN too.
    let path = write_temp(
        "nan16",
        &raw_file(&[("h", "F16", &[2], u16_bytes(&[0x3C00, 0x7E00]))]),
    );
    assert!(matches!(
        load_safetensors(&path),
        Err(Error::NonFinite { index: 1, .. })
    ));
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn accessors_report_missing_tensors_and_wrong_shapes() {
    let path = write_temp("access", &valid_file());
    let w = load_safetensors(&path).unwrap();
    match w.get("nope") {
        Err(Error::MissingTensor { path: p, name }) => {
            assert_eq!(p, path);
            assert_eq!(name, "nope");
        }
        other => panic!("{other:?}"),
    }
    // `shape` and `take` report missing names like `get`.
    assert!(matches!(w.shape("x"), Err(Error::MissingTensor { .. })));
    let mut copy = w.clone();
    assert!(matches!(copy.take("x"), Err(Error::MissingTensor { .. })));
    assert_eq!(copy.take("a").unwrap().shape(), &[2, 2]);
    assert!(!copy.contains("a") && w.contains("a"));
    match w.get2("a", [2, 3]) {
        Err(Error::TensorShape {
            name,
            expected,
            got,
            ..
        }) => {
            assert_eq!(name, "a");
            assert_eq!(expected, [2, 3]);
            assert_eq!(got, [2, 2]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(w.get1("a", 4), Err(Error::TensorShape { .. })));
    assert!(matches!(
        w.get2("b", [3, 1]),
        Err(Error::TensorShape { .. })
    ));
    assert!(matches!(w.get1("b", 2), Err(Error::TensorShape { .. })));
    assert_eq!(w.get1("b", 3).unwrap(), array![5.0f32, 6.0, 7.0].view());
    assert_eq!(
        w.get2("a", [2, 2]).unwrap(),
        array![[1.0f32, 2.0], [3.0, 4.0]].view()
    );
    let msg = w.get2("a", [2, 3]).unwrap_err().to_string();
    assert!(
        msg.contains(&path.display().to_string()) && msg.contains("`a`"),
        "{msg}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn missing_file_is_io_error() {
    let path = temp_path("does-not-exist");
    assert!(matches!(load_safetensors(&path), Err(Error::Io { .. })));
}

#[test]
fn insert_rejects_non_finite() {
    let mut w = spry::io::Weights::new("in-memory");
    w.insert("x", array![1.0f32, 2.0].into_dyn()).unwrap();
    let err = w.insert("y", array![[1.0f32, f32::NAN]].into_dyn());
    assert!(
        matches!(err, Err(Error::NonFinite { index: 1, .. })),
        "{err:?}"
    );
    assert!(!w.contains("y"));
    assert_eq!(w.len(), 1);
}

// ---- the real checkpoint -------------------------------------------------------------------

#[test]
fn real_minilm_loads() {
    let path = asset("all-MiniLM-L6-v2/model.safetensors").unwrap_or_else(|e| panic!("{e}"));
    let config = BertConfig::from_file(path.with_file_name("config.json")).unwrap();
    let started = std::time::Instant::now();
    let w = load_safetensors(&path).unwrap();
    eprintln!("MiniLM load: {:?}", started.elapsed());
    assert_eq!(w.len(), 103);
    assert_eq!(w.n_params(), 22_713_216);
    let skipped: Vec<_> = w.skipped().collect();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].0, "embeddings.position_ids");
    assert_eq!(skipped[0].1.dtype, "I64");
    let h = config.hidden_size;
    assert_eq!(h, 384);
    w.get2("encoder.layer.0.attention.self.query.weight", [h, h])
        .unwrap();
    w.get2("embeddings.word_embeddings.weight", [config.vocab_size, h])
        .unwrap();
    w.get2(
        "embeddings.position_embeddings.weight",
        [config.max_position_embeddings, h],
    )
    .unwrap();
    w.get2(
        "embeddings.token_type_embeddings.weight",
        [config.type_vocab_size, h],
    )
    .unwrap();
    for l in 0..config.num_hidden_layers {
        let p = format!("encoder.layer.{l}.");
        w.get2(
            &format!("{p}intermediate.dense.weight"),
            [config.intermediate_size, h],
        )
        .unwrap();
        w.get1(&format!("{p}output.LayerNorm.bias"), h).unwrap();
    }
    // LayerNorm gains of a trained model sit around 1.
    let g = w.get1("embeddings.LayerNorm.weight", h).unwrap();
    let mean = g.sum() / h as f32;
    assert!((0.2..2.0).contains(&mean), "{mean}");
}
