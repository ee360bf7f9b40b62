//! GGUF reading: a tiny independent writer builds files with every metadata value type and
//! tensors of every supported type from known values; the reader's dequantised output is checked
//! against straightforward computations; every corruption gives a typed error (and corrupt
//! lengths neither allocate nor panic). Then the real SmolLM2-135M-Instruct Q4_1 file.

use std::path::PathBuf;

use half::f16;
use ndarray::{Array2, Axis};
use spry::Error;
use spry::io::{
    GgmlType, GgufArray, GgufFile, GgufValue, GgufValueType, LlamaConfig, asset,
    unpermute_rope_rows,
};

#[path = "common/gguf_writer.rs"]
mod gguf_writer;
use gguf_writer::*;

fn parse(bytes: Vec<u8>) -> spry::Result<GgufFile> {
    GgufFile::from_bytes("test.gguf", bytes)
}

fn expect_format(result: spry::Result<GgufFile>, what: &str) -> String {
    match result {
        Err(Error::Format { format, msg, .. }) => {
            assert_eq!(format, "gguf");
            msg
        }
        Err(other) => panic!("{what}: expected a Format error, got {other:?}"),
        Ok(_) => panic!("{what}: expected a Format error, got a parsed file"),
    }
}

// ---- blocks from known values --------------------------------------------------------------

fn q8_0_block(d: u16, q: &[i8; 32]) -> Vec<u8> {
    let mut b = d.to_le_bytes().to_vec();
    b.extend(q.iter().map(|&x| x as u8));
    b
}

/// Element j in the low nibble of byte j, element j + 16 in its high nibble.
fn pack_nibbles(q: &[u8; 32]) -> Vec<u8> {
    (0..16).map(|j| q[j] | (q[j + 16] << 4)).collect()
}

fn q4_0_block(d: u16, q: &[u8; 32]) -> Vec<u8> {
    let mut b = d.to_le_bytes().to_vec();
    b.extend(pack_nibbles(q));
    b
}

fn q4_1_block(d: u16, m: u16, q: &[u8; 32]) -> Vec<u8> {
    let mut b = d.to_le_bytes().to_vec();
    b.extend_from_slice(&m.to_le_bytes());
    b.extend(pack_nibbles(q));
    b
}

fn h(x: f32) -> u16 {
    f16::from_f32(x).to_bits()
}

fn hv(bits: u16) -> f32 {
    f16::from_bits(bits).to_f32()
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Every metadata value type, including nested and empty arrays and non-ASCII strings.
fn all_metadata() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", GgufValue::String("test".into())),
        ("t.u8", GgufValue::U8(200)),
        ("t.i8", GgufValue::I8(-100)),
        ("t.u16", GgufValue::U16(60000)),
        ("t.i16", GgufValue::I16(-30000)),
        ("t.u32", GgufValue::U32(4_000_000_000)),
        ("t.i32", GgufValue::I32(-2_000_000_000)),
        ("t.f32", GgufValue::F32(1.5)),
        ("t.bool_true", GgufValue::Bool(true)),
        ("t.bool_false", GgufValue::Bool(false)),
        ("t.u64", GgufValue::U64(1 << 40)),
        ("t.i64", GgufValue::I64(-(1 << 40))),
        ("t.f64", GgufValue::F64(0.1)),
        ("t.str", GgufValue::String("héllo ✓".into())),
        ("t.empty_str", GgufValue::String(String::new())),
        ("t.arr_u32", GgufValue::Array(GgufArray::U32(vec![1, 2, 3]))),
        (
            "t.arr_str",
            GgufValue::Array(GgufArray::String(vec!["a".into(), "".into(), "ü".into()])),
        ),
        (
            "t.arr_f32",
            GgufValue::Array(GgufArray::F32(vec![0.5, -2.0])),
        ),
        (
            "t.arr_i32",
            GgufValue::Array(GgufArray::I32(vec![1, -1, 3])),
        ),
        (
            "t.arr_bool",
            GgufValue::Array(GgufArray::Bool(vec![true, false])),
        ),
        ("t.arr_u8", GgufValue::Array(GgufArray::U8(vec![7, 8]))),
        ("t.arr_i8", GgufValue::Array(GgufArray::I8(vec![-7]))),
        ("t.arr_u16", GgufValue::Array(GgufArray::U16(vec![65535]))),
        ("t.arr_i16", GgufValue::Array(GgufArray::I16(vec![-1, 2]))),
        (
            "t.arr_u64",
            GgufValue::Array(GgufArray::U64(vec![u64::MAX])),
        ),
        ("t.arr_f64", GgufValue::Array(GgufArray::F64(vec![1e300]))),
        ("t.arr_i64_empty", GgufValue::Array(GgufArray::I64(vec![]))),
        (
            "t.nested",
            GgufValue::Array(GgufArray::Array(vec![
                GgufArray::U8(vec![1, 2]),
                GgufArray::String(vec!["x".into()]),
                GgufArray::Array(vec![GgufArray::F32(vec![3.0])]),
            ])),
        ),
    ]
}

// ---- tests: metadata -----------------------------------------------------------------------

#[test]
fn metadata_of_every_value_type_round_trips() {
    let kv = all_metadata();
    for version in [3, 2] {
        let g = parse(build(version, &kv, &[], 32)).unwrap();
        assert_eq!(g.version(), version);
        assert_eq!(g.alignment(), 32);
        assert!(g.tensor_infos().is_empty());
        let read: Vec<_> = g.metadata_iter().collect();
        assert_eq!(read.len(), kv.len());
        for ((k0, v0), (k1, v1)) in kv.iter().zip(read) {
            assert_eq!(*k0, k1);
            assert_eq!(v0, v1, "{k0}");
            assert_eq!(v1.value_type().tag(), tag(v0));
        }
    }
    let g = parse(build(3, &kv, &[], 32)).unwrap();
    let m = |k: &str| g.metadata(k).unwrap();
    assert_eq!(m("general.architecture").as_str(), Some("test"));
    assert_eq!(m("t.u8").as_u8(), Some(200));
    assert_eq!(m("t.i8").as_i8(), Some(-100));
    assert_eq!(m("t.u16").as_u16(), Some(60000));
    assert_eq!(m("t.i16").as_i16(), Some(-30000));
    assert_eq!(m("t.u32").as_u32(), Some(4_000_000_000));
    assert_eq!(m("t.i32").as_i32(), Some(-2_000_000_000));
    assert_eq!(m("t.f32").as_f32(), Some(1.5));
    assert_eq!(m("t.bool_true").as_bool(), Some(true));
    assert_eq!(m("t.bool_false").as_bool(), Some(false));
    assert_eq!(m("t.u64").as_u64(), Some(1 << 40));
    assert_eq!(m("t.i64").as_i64(), Some(-(1 << 40)));
    assert_eq!(m("t.f64").as_f64(), Some(0.1));
    assert_eq!(m("t.str").as_str(), Some("héllo ✓"));
    assert_eq!(m("t.empty_str").as_str(), Some(""));
    assert_eq!(m("t.arr_u32").as_u32_array(), Some(&[1u32, 2, 3][..]));
    assert_eq!(
        m("t.arr_str").as_string_array().unwrap(),
        &["a".to_owned(), String::new(), "ü".to_owned()]
    );
    assert_eq!(m("t.arr_f32").as_f32_array(), Some(&[0.5f32, -2.0][..]));
    assert_eq!(m("t.arr_i32").as_i32_array(), Some(&[1, -1, 3][..]));
    assert_eq!(m("t.arr_bool").as_bool_array(), Some(&[true, false][..]));
    assert_eq!(m("t.arr_u8").as_u8_array(), Some(&[7u8, 8][..]));
    assert_eq!(m("t.arr_u64").as_u64_array(), Some(&[u64::MAX][..]));
    assert_eq!(m("t.arr_f64").as_f64_array(), Some(&[1e300][..]));
    let empty = m("t.arr_i64_empty").as_array().unwrap();
    assert!(empty.is_empty());
    assert_eq!(empty.element_type(), GgufValueType::I64);
    assert_eq!(m("t.arr_i64_empty").as_i64_array(), Some(&[][..]));
    let nested = m("t.nested").as_array().unwrap();
    assert_eq!(nested.len(), 3);
    assert_eq!(nested.element_type(), GgufValueType::Array);

    // Exact accessors refuse other types; the lenient ones convert without loss.
    assert_eq!(m("t.u8").as_u32(), None);
    assert_eq!(m("t.str").as_u64(), None);
    assert_eq!(m("t.arr_u32").as_string_array(), None);
    assert_eq!(m("t.u8").to_u64(), Some(200));
    assert_eq!(m("t.u32").to_u64(), Some(4_000_000_000));
    assert_eq!(m("t.i8").to_u64(), None);
    assert_eq!(m("t.f32").to_u64(), None);
    assert_eq!(m("t.f32").to_f64(), Some(1.5));
    assert_eq!(m("t.i32").to_f64(), Some(-2e9));
    assert_eq!(m("t.str").to_f64(), None);
    assert!(g.metadata("t.absent").is_none());
}

#[test]
fn value_type_tags_round_trip() {
    for t in 0..13 {
        assert_eq!(GgufValueType::from_tag(t).unwrap().tag(), t);
    }
    assert!(GgufValueType::from_tag(13).is_none());
    for t in 0..64 {
        assert_eq!(GgmlType::from_tag(t).tag(), t);
    }
}

// ---- tests: tensors ------------------------------------------------------------------------

/// Tensors of each supported type, with the values they must dequantise to (row-major).
fn typed_tensors() -> Vec<(T, Vec<usize>, Vec<f32>)> {
    let mut out = Vec::new();

    // F32, dims [3, 2] -> shape [2, 3]; file order is row-major.
    let v: Vec<f32> = (0..6).map(|i| 0.5 * i as f32 - 1.0).collect();
    out.push((
        tensor("f32", &[3, 2], 0, f32_bytes(&v)),
        vec![2, 3],
        v.clone(),
    ));

    // F16 with exactly known values.
    let bits = [0x3C00u16, 0xC100, 0x7BFF, 0x0001];
    let vals = vec![1.0f32, -2.5, 65504.0, 2f32.powi(-24)];
    out.push((
        tensor(
            "f16",
            &[4],
            1,
            bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        ),
        vec![4],
        vals,
    ));

    // BF16: the top half of an f32.
    let bits = [0x3F80u16, 0xC040, 0x4049, 0xBF00];
    let vals = vec![1.0f32, -3.0, 3.140625, -0.5];
    out.push((
        tensor(
            "bf16",
            &[2, 2],
            30,
            bits.iter().flat_map(|b| b.to_le_bytes()).collect(),
        ),
        vec![2, 2],
        vals,
    ));

    // Q8_0: dims [64, 2] -> shape [2, 64], 4 blocks with different scales; q covers -128..127.
    let scales = [0x3800u16, 0x3400, h(0.1), 0xBC00];
    let mut data = Vec::new();
    let mut vals = Vec::new();
    for (b, &d) in scales.iter().enumerate() {
        let q: [i8; 32] = std::array::from_fn(|j| (((b * 32 + j) * 37) % 256) as u8 as i8);
        data.extend(q8_0_block(d, &q));
        vals.extend(q.iter().map(|&x| hv(d) * f32::from(x)));
    }
    out.push((tensor("q8_0", &[64, 2], 8, data), vec![2, 64], vals));

    // Q4_0: dims [32, 3] -> shape [3, 32].
    let scales = [0x4000u16, h(-0.3), 0x3C00];
    let mut data = Vec::new();
    let mut vals = Vec::new();
    for (b, &d) in scales.iter().enumerate() {
        let q: [u8; 32] = std::array::from_fn(|j| ((j * 7 + b) % 16) as u8);
        data.extend(q4_0_block(d, &q));
        vals.extend(q.iter().map(|&x| hv(d) * (f32::from(x) - 8.0)));
    }
    out.push((tensor("q4_0", &[32, 3], 2, data), vec![3, 32], vals));

    // Q4_1: dims [96] -> 3 blocks, each with its own scale and minimum.
    let params = [(0x3400u16, 0xBC00u16), (h(0.07), h(-0.9)), (0x3C00, 0x0000)];
    let mut data = Vec::new();
    let mut vals = Vec::new();
    for (b, &(d, m)) in params.iter().enumerate() {
        let q: [u8; 32] = std::array::from_fn(|j| ((j * 5 + 3 * b + 1) % 16) as u8);
        data.extend(q4_1_block(d, m, &q));
        vals.extend(q.iter().map(|&x| hv(d) * f32::from(x) + hv(m)));
    }
    out.push((tensor("q4_1", &[96], 3, data), vec![96], vals));
    out
}

#[test]
fn tensors_of_every_supported_type_dequantise_to_known_values() {
    for alignment in [32usize, 64] {
        let cases = typed_tensors();
        let mut kv = all_metadata();
        if alignment != 32 {
            kv.push(("general.alignment", GgufValue::U32(alignment as u32)));
        }
        let tensors: Vec<T> = cases
            .iter()
            .map(|(t, _, _)| tensor(&t.name, &t.dims, t.ty, t.data.clone()))
            .collect();
        let g = parse(build(3, &kv, &tensors, alignment)).unwrap();
        assert_eq!(g.alignment(), alignment);
        assert_eq!(g.data_start() % alignment, 0);
        assert_eq!(g.tensor_infos().len(), cases.len());
        for (t, shape, want) in &cases {
            let info = g.tensor_info(&t.name).unwrap();
            assert_eq!(info.shape(), shape.as_slice(), "{}", t.name);
            assert_eq!(info.ggml_type().tag(), t.ty);
            assert_eq!(info.n_elements(), want.len());
            assert_eq!(info.n_bytes(), Some(t.data.len()));
            assert_eq!(info.offset() % alignment as u64, 0);
            let got = g.tensor_f32(&t.name).unwrap();
            assert_eq!(got.shape(), shape.as_slice());
            let got: Vec<f32> = got.iter().copied().collect();
            for (i, (a, b)) in got.iter().zip(want).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "{}[{i}]: {a} vs {b}", t.name);
            }
        }
        assert_eq!(g.n_params(), cases.iter().map(|c| c.2.len()).sum::<usize>());
        let w = g.load_all().unwrap();
        assert_eq!(w.len(), cases.len());
        assert_eq!(w.path(), g.path());
        let q = w.get2("q4_0", [3, 32]).unwrap();
        assert_eq!(q.len_of(Axis(1)), 32);
    }
}

#[test]
fn missing_tensor_is_named() {
    let g = parse(build(
        3,
        &[],
        &[tensor("a", &[1], 0, f32_bytes(&[1.0]))],
        32,
    ))
    .unwrap();
    for err in [
        g.tensor_f32("b").unwrap_err(),
        g.tensor_info("b").unwrap_err(),
    ] {
        assert!(
            matches!(&err, Error::MissingTensor { name, .. } if name == "b"),
            "{err:?}"
        );
    }
}

#[test]
fn unsupported_tensor_types_are_named() {
    // Q4_K has a known block layout (256 elements in 144 bytes) but is not dequantised; tag 99
    // is unknown: both open fine and fail on read, naming the tensor and the type.
    let tensors = [
        tensor("ok", &[2], 0, f32_bytes(&[1.0, 2.0])),
        tensor("k_quant", &[256], 12, vec![0; 144]),
        tensor("mystery", &[32], 99, vec![0; 64]),
    ];
    let g = parse(build(3, &[], &tensors, 32)).unwrap();
    assert_eq!(
        g.tensor_info("k_quant").unwrap().ggml_type(),
        GgmlType::Q4_K
    );
    assert_eq!(
        g.tensor_info("mystery").unwrap().ggml_type(),
        GgmlType::Other(99)
    );
    for (name, dtype) in [("k_quant", "Q4_K"), ("mystery", "ggml type 99")] {
        match g.tensor_f32(name) {
            Err(Error::UnsupportedDtype {
                name: n, dtype: d, ..
            }) => {
                assert_eq!(n, name);
                assert_eq!(d, dtype);
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(matches!(
        g.load_all(),
        Err(Error::UnsupportedDtype { name, .. }) if name == "k_quant"
    ));
}

#[test]
fn integer_tensors_are_skipped_by_load_all() {
    let tensors = [
        tensor("w", &[2], 0, f32_bytes(&[1.0, 2.0])),
        tensor("ids", &[3], 26, vec![0; 12]),
    ];
    let g = parse(build(3, &[], &tensors, 32)).unwrap();
    assert!(matches!(
        g.tensor_f32("ids"),
        Err(Error::UnsupportedDtype { .. })
    ));
    let w = g.load_all().unwrap();
    assert_eq!(w.names().collect::<Vec<_>>(), ["w"]);
    let skipped: Vec<_> = w.skipped().map(|(n, s)| (n, s.dtype.clone())).collect();
    assert_eq!(skipped, [("ids", "I32".to_owned())]);
}

#[test]
fn non_finite_values_are_reported_with_index() {
    // F32 NaN at flat index 4.
    let mut v = vec![1.0f32; 6];
    v[4] = f32::NAN;
    // Q8_0 whose second block has a NaN scale: first bad element is 32.
    let mut q8 = q8_0_block(0x3800, &[1; 32]);
    q8.extend(q8_0_block(0x7E00, &[1; 32]));
    // Q4_1 whose minimum is +inf: index 0.
    let q41 = q4_1_block(0x3C00, 0x7C00, &[0; 32]);
    // Q4_0 scale -inf, q = 8 -> -inf * 0 = NaN: index 0.
    let q40 = q4_0_block(0xFC00, &[8; 32]);
    let tensors = [
        tensor("f", &[3, 2], 0, f32_bytes(&v)),
        tensor("q8", &[64], 8, q8),
        tensor("q41", &[32], 3, q41),
        tensor("q40", &[32], 2, q40),
    ];
    let g = parse(build(3, &[], &tensors, 32)).unwrap();
    for (name, idx) in [("f", 4), ("q8", 32), ("q41", 0), ("q40", 0)] {
        match g.tensor_f32(name) {
            Err(Error::NonFinite { name: n, index, .. }) => {
                assert_eq!(n, name);
                assert_eq!(index, idx, "{name}");
            }
            other => panic!("{name}: expected NonFinite, got {other:?}"),
        }
    }
    assert!(matches!(g.load_all(), Err(Error::NonFinite { .. })));
}

// ---- tests: malformed files ----------------------------------------------------------------

fn small_valid_file() -> Vec<u8> {
    let kv = vec![
        ("general.architecture", GgufValue::String("test".into())),
        (
            "t.tokens",
            GgufValue::Array(GgufArray::String(vec!["ab".into(), "c".into()])),
        ),
        (
            "t.nested",
            GgufValue::Array(GgufArray::Array(vec![GgufArray::I32(vec![1, 2])])),
        ),
        ("t.f", GgufValue::F32(0.5)),
    ];
    let mut q = q8_0_block(0x3800, &[3; 32]);
    q.extend(q8_0_block(0x3400, &[-3; 32]));
    build(
        3,
        &kv,
        &[
            tensor("a", &[4], 0, f32_bytes(&[1.0, 2.0, 3.0, 4.0])),
            tensor("q", &[64], 8, q),
        ],
        32,
    )
}

#[test]
fn every_truncation_is_a_format_error() {
    let full = small_valid_file();
    parse(full.clone()).unwrap();
    for cut in 0..full.len() {
        expect_format(parse(full[..cut].to_vec()), &format!("cut at {cut}"));
    }
}

#[test]
fn bad_magic_and_versions_are_format_errors() {
    let full = small_valid_file();
    let mut bad = full.clone();
    bad[..4].copy_from_slice(b"GGML");
    let msg = expect_format(parse(bad), "magic");
    assert!(msg.contains("magic"), "{msg}");
    for version in [0u32, 1, 4, 0x0300_0000] {
        let mut bad = full.clone();
        bad[4..8].copy_from_slice(&version.to_le_bytes());
        let msg = expect_format(parse(bad), "version");
        assert!(msg.contains("version"), "{msg}");
    }
    let mut v2 = full.clone();
    v2[4..8].copy_from_slice(&2u32.to_le_bytes());
    assert_eq!(parse(v2).unwrap().version(), 2);
}

/// Header with `n_tensors`, `n_kv` then `rest`.
fn header(n_tensors: u64, n_kv: u64, rest: &[u8]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    put_u32(&mut out, 3);
    put_u64(&mut out, n_tensors);
    put_u64(&mut out, n_kv);
    out.extend_from_slice(rest);
    out.resize(out.len() + 64, 0);
    out
}

#[test]
fn corrupt_counts_and_lengths_error_without_allocating() {
    let huge = [u64::MAX, 1 << 62, 1 << 40, 1 << 20];
    for &n in &huge {
        expect_format(parse(header(0, n, &[])), "huge metadata count");
        expect_format(parse(header(n, 0, &[])), "huge tensor count");
        // key length
        let mut kv = Vec::new();
        put_u64(&mut kv, n);
        expect_format(parse(header(0, 1, &kv)), "huge key length");
        // string value length
        let mut kv = Vec::new();
        put_str(&mut kv, "k");
        put_u32(&mut kv, 8);
        put_u64(&mut kv, n);
        expect_format(parse(header(0, 1, &kv)), "huge string length");
        // array counts, for element types of every size
        for elem in [0u32, 4, 10, 8, 9] {
            let mut kv = Vec::new();
            put_str(&mut kv, "k");
            put_u32(&mut kv, 9);
            put_u32(&mut kv, elem);
            put_u64(&mut kv, n);
            expect_format(parse(header(0, 1, &kv)), "huge array count");
        }
        // a string inside an array
        let mut kv = Vec::new();
        put_str(&mut kv, "k");
        put_u32(&mut kv, 9);
        put_u32(&mut kv, 8);
        put_u64(&mut kv, 1);
        put_u64(&mut kv, n);
        expect_format(parse(header(0, 1, &kv)), "huge string in array");
        // tensor name length
        let mut ti = Vec::new();
        put_u64(&mut ti, n);
        expect_format(parse(header(1, 0, &ti)), "huge tensor name");
    }
}

#[test]
fn unknown_value_types_are_format_errors() {
    let mut kv = Vec::new();
    put_str(&mut kv, "k");
    put_u32(&mut kv, 13);
    let msg = expect_format(parse(header(0, 1, &kv)), "value type 13");
    assert!(msg.contains("unknown value type 13"), "{msg}");
    let mut kv = Vec::new();
    put_str(&mut kv, "k");
    put_u32(&mut kv, 9);
    put_u32(&mut kv, 200);
    put_u64(&mut kv, 1);
    expect_format(parse(header(0, 1, &kv)), "array element type 200");
}

#[test]
fn deeply_nested_arrays_are_refused() {
    let mut kv = Vec::new();
    put_str(&mut kv, "k");
    put_u32(&mut kv, 9);
    for _ in 0..100_000 {
        put_u32(&mut kv, 9);
        put_u64(&mut kv, 1);
    }
    let msg = expect_format(parse(header(0, 1, &kv)), "nesting");
    assert!(msg.contains("nested"), "{msg}");
}

#[test]
fn invalid_bools_strings_and_duplicates_are_format_errors() {
    let mut kv = Vec::new();
    put_str(&mut kv, "k");
    put_u32(&mut kv, 7);
    kv.push(2);
    expect_format(parse(header(0, 1, &kv)), "bool byte 2");

    let mut kv = Vec::new();
    put_u64(&mut kv, 2);
    kv.extend_from_slice(&[0xC3, 0x28]);
    put_u32(&mut kv, 0);
    kv.push(0);
    expect_format(parse(header(0, 1, &kv)), "non-UTF-8 key");

    let dup = build(
        3,
        &[("a", GgufValue::U8(1)), ("a", GgufValue::U8(2))],
        &[],
        32,
    );
    expect_format(parse(dup), "duplicate key");
    let dup = build(
        3,
        &[],
        &[
            tensor("t", &[1], 0, f32_bytes(&[1.0])),
            tensor("t", &[1], 0, f32_bytes(&[1.0])),
        ],
        32,
    );
    expect_format(parse(dup), "duplicate tensor");
}

#[test]
fn invalid_alignment_is_format_error() {
    for value in [
        GgufValue::U32(0),
        GgufValue::U32(3),
        GgufValue::U32(48),
        GgufValue::U64(32),
        GgufValue::String("32".into()),
    ] {
        let bytes = build(3, &[("general.alignment", value.clone())], &[], 32);
        expect_format(parse(bytes), &format!("alignment {value:?}"));
    }
}

#[test]
fn bad_tensor_infos_are_format_errors() {
    let one = || tensor("t", &[32], 8, q8_0_block(0x3C00, &[1; 32]));
    let g = parse(build(3, &[], &[one()], 32)).unwrap();
    assert_eq!(g.tensor_f32("t").unwrap().len(), 32);

    // Data beyond the end of the file: a far offset, or data cut short.
    let mut far = one();
    far.offset = Some(1 << 50);
    let msg = expect_format(parse(build(3, &[], &[far], 32)), "far offset");
    assert!(msg.contains("beyond the end"), "{msg}");
    let mut far = one();
    far.offset = Some(u64::MAX - 31);
    expect_format(parse(build(3, &[], &[far], 32)), "overflowing offset");
    let mut short = build(3, &[], &[one()], 32);
    short.pop();
    expect_format(parse(short), "short data");

    // A misaligned offset.
    let mut odd = one();
    odd.offset = Some(8);
    let msg = expect_format(parse(build(3, &[], &[odd], 32)), "misaligned");
    assert!(msg.contains("alignment"), "{msg}");

    // Rows that are not whole blocks.
    for (dims, ty, len) in [
        (vec![48u64, 2], 8u32, 102usize),
        (vec![16], 3, 20),
        (vec![40], 2, 18),
    ] {
        let t = tensor("t", &dims, ty, vec![0; len]);
        let msg = expect_format(parse(build(3, &[], &[t], 32)), "partial block");
        assert!(msg.contains("block size"), "{msg}");
    }

    // Too many dimensions; an element count that overflows.
    let t = tensor("t", &[1, 1, 1, 1, 1], 0, f32_bytes(&[1.0]));
    expect_format(parse(build(3, &[], &[t], 32)), "5 dims");
    let t = tensor("t", &[1 << 32, 1 << 32, 1 << 32], 0, vec![]);
    expect_format(parse(build(3, &[], &[t], 32)), "overflowing dims");
}

// ---- tests: q/k row un-permutation ---------------------------------------------------------

#[test]
fn unpermute_rope_rows_matches_the_reshape_definition() {
    // One head of size 4: rows [0, 1, 2, 3] -> [0, 2, 1, 3].
    let w = Array2::from_shape_fn((4, 2), |(r, c)| (r * 10 + c) as f32);
    let u = unpermute_rope_rows(w, 1).unwrap();
    let rows: Vec<f32> = u.column(0).to_vec();
    assert_eq!(rows, [0.0, 20.0, 10.0, 30.0]);

    // The reference's reshape(n_head, head_dim/2, 2, in) -> swap axes 1, 2 -> reshape(out, in),
    // done with ndarray's reshapes.
    for (n_heads, head_dim, cols) in [(3usize, 8usize, 5usize), (9, 64, 3), (2, 2, 1)] {
        let rows = n_heads * head_dim;
        let w = Array2::from_shape_fn((rows, cols), |(r, c)| (r * cols + c) as f32);
        let want = w
            .clone()
            .into_shape_with_order((n_heads, head_dim / 2, 2, cols))
            .unwrap()
            .permuted_axes([0, 2, 1, 3])
            .as_standard_layout()
            .into_owned()
            .into_shape_with_order((rows, cols))
            .unwrap();
        assert_eq!(unpermute_rope_rows(w, n_heads).unwrap(), want);
    }
}

#[test]
fn unpermute_rope_rows_rejects_bad_head_counts() {
    let w = Array2::<f32>::zeros((12, 2));
    for n_heads in [0, 5, 4] {
        // 4 heads of 3 rows: odd head size
        let err = unpermute_rope_rows(w.clone(), n_heads);
        assert!(
            matches!(err, Err(Error::InvalidArgument { .. })),
            "{n_heads}"
        );
    }
}

// ---- tests: Llama configuration from metadata ----------------------------------------------

fn llama_kv() -> Vec<(&'static str, GgufValue)> {
    vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("llama.embedding_length", GgufValue::U32(16)),
        ("llama.feed_forward_length", GgufValue::U32(40)),
        ("llama.block_count", GgufValue::U32(2)),
        ("llama.attention.head_count", GgufValue::U32(4)),
        ("llama.attention.head_count_kv", GgufValue::U32(2)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("llama.rope.freq_base", GgufValue::F32(500000.0)),
        ("llama.context_length", GgufValue::U32(128)),
        (
            "tokenizer.ggml.tokens",
            GgufValue::Array(GgufArray::String(
                (0..10).map(|i| format!("t{i}")).collect(),
            )),
        ),
        ("tokenizer.ggml.bos_token_id", GgufValue::U32(1)),
        ("tokenizer.ggml.eos_token_id", GgufValue::U32(2)),
        ("tokenizer.ggml.padding_token_id", GgufValue::U32(0)),
    ]
}

fn llama_file(kv: &[(&str, GgufValue)], with_output: bool) -> GgufFile {
    let mut tensors = vec![tensor("token_embd.weight", &[16, 10], 0, vec![0; 640])];
    if with_output {
        tensors.push(tensor("output.weight", &[16, 10], 0, vec![0; 640]));
    }
    parse(build(3, kv, &tensors, 32)).unwrap()
}

/// `llama_kv()` with `key` replaced by `value` (`None` removes it).
fn llama_kv_with(key: &'static str, value: Option<GgufValue>) -> Vec<(&'static str, GgufValue)> {
    let mut kv: Vec<_> = llama_kv().into_iter().filter(|(k, _)| *k != key).collect();
    kv.extend(value.map(|v| (key, v)));
    kv
}

fn config_error_msg(result: spry::Result<LlamaConfig>) -> String {
    match result {
        Err(Error::Config { path, msg }) => {
            assert_eq!(path, PathBuf::from("test.gguf"));
            msg
        }
        other => panic!("expected a Config error, got {other:?}"),
    }
}

#[test]
fn llama_config_from_metadata() {
    let c = LlamaConfig::from_gguf(&llama_file(&llama_kv(), false)).unwrap();
    let want = LlamaConfig::from_json(
        r#"{"vocab_size": 10, "hidden_size": 16, "intermediate_size": 40,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rms_norm_eps": 9.999999747378752e-06, "rope_theta": 500000.0,
            "max_position_embeddings": 128, "tie_word_embeddings": true,
            "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}"#,
    )
    .unwrap();
    assert_eq!(c, want);

    // An output matrix unties the embeddings; a missing KV head count means plain MHA.
    let c = LlamaConfig::from_gguf(&llama_file(&llama_kv(), true)).unwrap();
    assert!(!c.tie_word_embeddings);
    let kv = llama_kv_with("llama.attention.head_count_kv", None);
    assert_eq!(
        LlamaConfig::from_gguf(&llama_file(&kv, false))
            .unwrap()
            .num_key_value_heads,
        4
    );
    // Integer widths other than u32 are accepted; consistent extra keys too.
    let kv = llama_kv_with("llama.block_count", Some(GgufValue::I64(2)));
    assert_eq!(
        LlamaConfig::from_gguf(&llama_file(&kv, false))
            .unwrap()
            .num_hidden_layers,
        2
    );
    let kv = llama_kv_with("llama.rope.dimension_count", Some(GgufValue::U32(4)));
    LlamaConfig::from_gguf(&llama_file(&kv, false)).unwrap();
    let kv = llama_kv_with("llama.vocab_size", Some(GgufValue::U32(10)));
    LlamaConfig::from_gguf(&llama_file(&kv, false)).unwrap();
}

#[test]
fn llama_config_from_bad_metadata() {
    let cases: Vec<(Vec<(&str, GgufValue)>, &str)> = vec![
        (
            llama_kv_with(
                "general.architecture",
                Some(GgufValue::String("gpt2".into())),
            ),
            "gpt2",
        ),
        (
            llama_kv_with("general.architecture", None),
            "general.architecture",
        ),
        (
            llama_kv_with("llama.block_count", None),
            "llama.block_count",
        ),
        (
            llama_kv_with("llama.attention.layer_norm_rms_epsilon", None),
            "layer_norm_rms_epsilon",
        ),
        (
            llama_kv_with("llama.block_count", Some(GgufValue::String("2".into()))),
            "llama.block_count",
        ),
        (
            llama_kv_with("llama.block_count", Some(GgufValue::I32(-2))),
            "llama.block_count",
        ),
        (
            llama_kv_with("llama.rope.dimension_count", Some(GgufValue::U32(2))),
            "dimension_count",
        ),
        (
            llama_kv_with("llama.vocab_size", Some(GgufValue::U32(12))),
            "disagrees",
        ),
        (
            llama_kv_with(
                "llama.rope.scaling.type",
                Some(GgufValue::String("linear".into())),
            ),
            "scaling",
        ),
        (
            llama_kv_with("llama.attention.head_count_kv", Some(GgufValue::U32(3))),
            "divisible",
        ),
        (
            llama_kv_with("tokenizer.ggml.eos_token_id", Some(GgufValue::U32(10))),
            "eos_token_id",
        ),
        (
            llama_kv_with(
                "tokenizer.ggml.tokens",
                Some(GgufValue::Array(GgufArray::U8(vec![1]))),
            ),
            "tokenizer.ggml.tokens",
        ),
    ];
    for (kv, needle) in cases {
        let m = config_error_msg(LlamaConfig::from_gguf(&llama_file(&kv, false)));
        assert!(m.contains(needle), "{needle}: {m}");
    }
}

// ---- tests: the real file ------------------------------------------------------------------

const SMOLLM2: &str = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

fn smollm2_path() -> PathBuf {
    asset(SMOLLM2).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn missing_asset_error_says_how_to_fetch() {
    let err = asset("no-such-model/weights.gguf").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Io { .. }));
    assert!(msg.contains("scripts/fetch_assets.sh"), "{msg}");
    assert!(msg.contains("no-such-model"), "{msg}");
}

/// A tensor, its shape, some `((row, col), value)` entries and the f64 sum of all its values.
type Reference = (
    &'static str,
    [usize; 2],
    &'static [((usize, usize), f32)],
    f64,
);

#[test]
// The reference values are the exact decimal expansions of f32 numbers, as numpy prints them.
#[allow(clippy::excessive_precision)]
fn real_smollm2_gguf_loads() {
    let path = smollm2_path();
    let started = std::time::Instant::now();
    let g = GgufFile::open(&path).unwrap();
    let parsed = started.elapsed();
    assert_eq!(g.version(), 3);
    assert_eq!(g.alignment(), 32);
    assert_eq!(g.tensor_infos().len(), 272);
    assert_eq!(g.n_params(), 134_515_008);
    let types = |t: GgmlType| {
        g.tensor_infos()
            .iter()
            .filter(|i| i.ggml_type() == t)
            .count()
    };
    assert_eq!(
        (
            types(GgmlType::Q8_0),
            types(GgmlType::Q4_1),
            types(GgmlType::F32)
        ),
        (1, 210, 61)
    );
    let emb = g.tensor_info("token_embd.weight").unwrap();
    assert_eq!(emb.ggml_type(), GgmlType::Q8_0);
    assert_eq!(emb.shape(), &[49152, 576]);
    assert_eq!(
        g.tensor_info("blk.0.attn_k.weight").unwrap().shape(),
        &[192, 576]
    );
    assert_eq!(
        g.tensor_info("blk.29.ffn_down.weight").unwrap().shape(),
        &[576, 1536]
    );
    assert!(g.tensor_info("output.weight").is_err(), "tied embeddings");
    let tokens = g
        .metadata("tokenizer.ggml.tokens")
        .unwrap()
        .as_string_array()
        .unwrap();
    assert_eq!(tokens.len(), 49152);
    assert_eq!(
        g.metadata("tokenizer.ggml.merges")
            .unwrap()
            .as_string_array()
            .unwrap()
            .len(),
        48900
    );

    // The configuration from the metadata is the one in config.json (which the asset
    // maintainers rebuilt from the same metadata with the gguf Python package), and the known
    // hyper-parameters of SmolLM2-135M.
    let from_gguf = LlamaConfig::from_gguf(&g).unwrap();
    let from_json =
        LlamaConfig::from_file(asset("SmolLM2-135M-Instruct/config.json").unwrap()).unwrap();
    assert_eq!(from_gguf, from_json);
    let c = &from_gguf;
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.num_attention_heads,
            c.num_key_value_heads
        ),
        (30, 576, 9, 3)
    );
    assert_eq!(
        (c.intermediate_size, c.vocab_size, c.head_dim()),
        (1536, 49152, 64)
    );
    assert_eq!((c.max_position_embeddings, c.rope_theta), (8192, 100000.0));
    assert_eq!(c.rms_norm_eps, f64::from(1e-5f32));
    assert!(c.tie_word_embeddings);
    assert_eq!(
        (c.bos_token_id, c.eos_token_ids.as_slice(), c.pad_token_id),
        (Some(1), &[2][..], Some(2))
    );

    let started = std::time::Instant::now();
    let w = g.load_all().unwrap();
    eprintln!(
        "SmolLM2 GGUF: parse {parsed:?}, dequantise all {:?}",
        started.elapsed()
    );
    assert_eq!(w.len(), 272);
    assert_eq!(w.n_params(), 134_515_008);

    // Values from the gguf Python package's dequantize (gguf 0.x, numpy), at [row, col].
    let checks: [Reference; 4] = [
        (
            "token_embd.weight",
            [49152, 576],
            &[
                ((0, 0), -0.10654449462890625),
                ((0, 1), 0.032978057861328125),
                ((0, 17), 0.08371353149414062),
                ((1, 5), -0.0079345703125),
                ((49151, 575), -0.0417022705078125),
            ],
            -15353.04449415207,
        ),
        (
            "blk.0.attn_q.weight",
            [576, 576],
            &[
                ((0, 0), -0.0963134765625),
                ((0, 1), 0.1573486328125),
                ((0, 17), 0.2841796875),
                ((1, 5), 0.1846923828125),
                ((575, 575), -0.255859375),
            ],
            59.22322082519531,
        ),
        (
            "blk.0.attn_k.weight",
            [192, 576],
            &[
                ((0, 0), -0.1552734375),
                ((0, 1), 0.3402099609375),
                ((0, 17), 0.6705322265625),
                ((1, 5), 0.1484375),
                ((191, 575), 0.3636474609375),
            ],
            26.937057495117188,
        ),
        (
            "blk.29.ffn_down.weight",
            [576, 1536],
            &[
                ((0, 0), -0.2733154296875),
                ((0, 1), 0.186279296875),
                ((0, 17), 0.04840087890625),
                ((1, 5), 0.02496337890625),
                ((575, 1535), 0.056640625),
            ],
            49.83570861816406,
        ),
    ];
    for (name, shape, values, sum) in checks {
        let t = w.get2(name, shape).unwrap();
        for &((r, c), want) in values {
            assert_eq!(t[[r, c]], want, "{name}[{r}, {c}]");
        }
        let got: f64 = t.iter().map(|&x| f64::from(x)).sum();
        assert!(
            (got - sum).abs() <= 1e-9 * sum.abs().max(1.0) * 1e3,
            "{name}: sum {got} vs {sum}"
        );
    }
    let norm = w.get1("output_norm.weight", 576).unwrap();
    assert_eq!(
        (norm[0], norm[1], norm[575]),
        (1.7578125, 1.8203125, 1.984375)
    );
    let norm = w.get1("blk.0.attn_norm.weight", 576).unwrap();
    assert_eq!(
        (norm[0], norm[1], norm[575]),
        (0.01397705078125, 0.0238037109375, -0.038330078125)
    );
}

#[test]
fn packed_tensors_widen_to_the_dequantised_values() {
    let cases = typed_tensors();
    let tensors: Vec<T> = cases
        .iter()
        .map(|(t, _, _)| tensor(&t.name, &t.dims, t.ty, t.data.clone()))
        .collect();
    let g = parse(build(3, &all_metadata(), &tensors, 32)).unwrap();
    for name in ["bf16", "q8_0", "q4_0"] {
        let p = g.tensor_packed(name).unwrap();
        assert_eq!(
            p.as_bytes().len(),
            g.tensor_info(name).unwrap().n_bytes().unwrap()
        );
        let dense = g.tensor_f32(name).unwrap();
        let widened = p.to_dense::<f32>().into_dyn();
        assert_eq!(widened.shape(), dense.shape());
        for (a, b) in widened.iter().zip(dense.iter()) {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}");
        }
        // f64 widening is exact
        let wide = p.to_dense::<f64>();
        for (a, b) in wide.iter().zip(dense.iter()) {
            assert_eq!(*a, f64::from(*b), "{name}");
        }
    }
    // F32 is not a packed format; 1-D tensors are not matrices
    assert!(matches!(
        g.tensor_packed("f32"),
        Err(Error::UnsupportedDtype { name, .. }) if name == "f32"
    ));
    assert!(matches!(
        g.tensor_packed("q4_1"),
        Err(Error::TensorShape { name, .. }) if name == "q4_1"
    ));
    assert!(matches!(
        g.tensor_packed("nope"),
        Err(Error::MissingTensor { .. })
    ));
}

#[test]
fn packed_tensor_with_a_non_finite_scale_is_reported() {
    // Q8_0 [2, 32]: row 1's scale is +inf, so its first element (flat index 32) is the first
    // non-finite value (q = 1 everywhere)
    let mut data = q8_0_block(0x3C00, &[1; 32]);
    data.extend(q8_0_block(0x7C00, &[1; 32]));
    let g = parse(build(3, &[], &[tensor("w", &[32, 2], 8, data)], 32)).unwrap();
    assert!(matches!(
        g.tensor_packed("w"),
        Err(Error::NonFinite { index: 32, .. })
    ));
}

#[test]
fn unpermute_rope_rows_packed_moves_whole_rows_like_the_dense_one() {
    // Q4_0 [8, 64]: 2 heads of 4 rows, every row distinct
    let mut data = Vec::new();
    for r in 0..8u8 {
        for b in 0..2u8 {
            let q: [u8; 32] = std::array::from_fn(|j| (j as u8 + r * 3 + b) % 16);
            data.extend(q4_0_block(h(0.25 + f32::from(r)), &q));
        }
    }
    let g = parse(build(3, &[], &[tensor("w", &[64, 8], 2, data)], 32)).unwrap();
    let p = g.tensor_packed("w").unwrap();
    let dense = g
        .tensor_f32("w")
        .unwrap()
        .into_dimensionality::<ndarray::Ix2>()
        .unwrap();
    let want = unpermute_rope_rows(dense, 2).unwrap();
    let got = spry::io::unpermute_rope_rows_packed(&p, 2).unwrap();
    assert_eq!(got.to_dense::<f32>(), want);
    assert!(matches!(
        spry::io::unpermute_rope_rows_packed(&p, 3),
        Err(Error::InvalidArgument { .. })
    ));
}

#[test]
fn real_smollm2_packed_tensors_match_the_dequantised_ones() {
    let g = GgufFile::open(smollm2_path()).unwrap();
    for name in [
        "token_embd.weight",
        "blk.0.attn_q.weight",
        "blk.29.ffn_down.weight",
    ] {
        let p = g.tensor_packed(name).unwrap();
        let dense = g.tensor_f32(name).unwrap();
        assert_eq!(p.to_dense::<f32>().into_dyn(), dense, "{name}");
        assert_eq!(
            p.as_bytes().len(),
            g.tensor_info(name).unwrap().n_bytes().unwrap()
        );
    }
}

#[test]
fn mapped_files_read_tensors_like_whole_files() {
    let cases = typed_tensors();
    let tensors: Vec<T> = cases
        .iter()
        .map(|(t, _, _)| tensor(&t.name, &t.dims, t.ty, t.data.clone()))
        .collect();
    let bytes = build(3, &all_metadata(), &tensors, 32);
    let path = std::env::temp_dir().join(format!("spry_mapped_{}.gguf", std::process::id()));
    std::fs::write(&path, &bytes).unwrap();
    let whole = GgufFile::open(&path).unwrap();
    let lazy = GgufFile::open_mapped(&path).unwrap();
    assert!(lazy.is_mapped() && !whole.is_mapped());
    assert_eq!(lazy.data_start(), whole.data_start());
    assert_eq!(lazy.tensor_infos(), whole.tensor_infos());
    for (t, _, _) in &cases {
        assert_eq!(
            lazy.tensor_f32(&t.name).unwrap(),
            whole.tensor_f32(&t.name).unwrap()
        );
    }
    let (mapped, read) = (
        lazy.tensor_packed("q8_0").unwrap(),
        whole.tensor_packed("q8_0").unwrap(),
    );
    assert!(mapped.is_mapped() && !read.is_mapped());
    assert_eq!(mapped, read);
    // the file is deleted: the map keeps it, tensors still read (and the matrix outlives the file)
    drop(lazy.tensor_packed("q4_0").unwrap());
    std::fs::remove_file(&path).unwrap();
    assert_eq!(
        lazy.tensor_f32("q4_0").unwrap(),
        whole.tensor_f32("q4_0").unwrap()
    );
    drop(lazy);
    assert_eq!(mapped.to_dense::<f32>(), read.to_dense::<f32>());
}
