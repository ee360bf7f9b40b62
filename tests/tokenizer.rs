//! Tokenizers: MiniLM's WordPiece `tokenizer.json` and SmolLM2's byte-level BPE rebuilt from GGUF
//! metadata, against the independent golden ids in `tests/golden/` and the reference
//! `tokenizers::Tokenizer`; padding/truncation overrides; typed errors.

#[path = "common/assets.rs"]
mod assets;

use std::path::PathBuf;

use assets::{asset, golden};
use serde_json::Value;
use spry::tokenizer::{TokenizerOptions, bpe_from_gguf_vocab};
use spry::{Error, TextTokenizer};

const MINILM_TOKENIZER: &str = "all-MiniLM-L6-v2/tokenizer.json";
const SMOLLM2_TOKENIZER: &str = "SmolLM2-135M-Instruct/tokenizer.json";

fn ids_of(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array of ids")
        .iter()
        .map(|x| u32::try_from(x.as_u64().expect("id")).expect("id fits u32"))
        .collect()
}

fn minilm(opts: TokenizerOptions) -> TextTokenizer {
    TextTokenizer::from_file(asset(MINILM_TOKENIZER), opts).expect("MiniLM tokenizer loads")
}

fn minilm_golden() -> (Vec<String>, Vec<Vec<u32>>) {
    let g = golden("golden_minilm.json");
    let sents = g["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    let ids = g["input_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(ids_of)
        .collect();
    (sents, ids)
}

/// The GGUF tokenizer metadata (`tokens`, `token_type`, `merges`) that the shipped SmolLM2
/// `tokenizer.json` was built from, read back from that file.
fn smollm2_gguf_like_vocab() -> (Vec<String>, Vec<i32>, Vec<String>) {
    let path = asset(SMOLLM2_TOKENIZER);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (tok, id) in vocab {
        tokens[usize::try_from(id.as_u64().unwrap()).unwrap()] = tok.clone();
    }
    assert!(tokens.iter().all(|t| !t.is_empty()), "vocab ids are dense");
    let mut types = vec![1i32; tokens.len()];
    for added in json["added_tokens"].as_array().unwrap() {
        if added["special"].as_bool().unwrap() {
            types[usize::try_from(added["id"].as_u64().unwrap()).unwrap()] = 3;
        }
    }
    let merges = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| match m {
            Value::String(s) => s.clone(),
            Value::Array(pair) => format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            ),
            other => panic!("unexpected merge {other}"),
        })
        .collect();
    (tokens, types, merges)
}

fn smollm2() -> TextTokenizer {
    let (tokens, types, merges) = smollm2_gguf_like_vocab();
    bpe_from_gguf_vocab(&tokens, &types, &merges).expect("GGUF-vocab tokenizer builds")
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("spry-tokenizer-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{}-{name}", std::process::id()))
}

// ---- MiniLM (WordPiece tokenizer.json) ---------------------------------------------------------

#[test]
fn minilm_ids_match_golden() {
    let tk = minilm(TokenizerOptions::default());
    let (sents, want) = minilm_golden();
    assert_eq!(tk.vocab_size(), 30522);
    assert_eq!(tk.pad_id(), 0, "pad id taken from the file");
    assert_eq!(tk.max_len(), None);
    for (s, want) in sents.iter().zip(&want) {
        let enc = tk.encode(s, true).unwrap();
        assert_eq!(&enc.ids, want, "{s:?}");
        assert_eq!(enc.type_ids, vec![0; want.len()]);
        assert_eq!(
            enc.attention_mask,
            vec![true; want.len()],
            "no baked-in padding to 128"
        );
    }
    // Without special tokens: the same ids minus [CLS] ... [SEP].
    let enc = tk.encode(&sents[0], false).unwrap();
    assert_eq!(enc.ids, want[0][1..want[0].len() - 1]);
}

#[test]
fn minilm_batch_pads_to_longest() {
    let tk = minilm(TokenizerOptions::default());
    let (sents, want) = minilm_golden();
    let batch = tk.encode_batch(&sents, true).unwrap();
    let t = want.iter().map(Vec::len).max().unwrap();
    assert_eq!(t, 9);
    assert_eq!(batch.ids.dim(), (3, t));
    assert_eq!(batch.type_ids.dim(), (3, t));
    assert_eq!(batch.mask.dim(), (3, t));
    assert_eq!(batch.lengths, want.iter().map(Vec::len).collect::<Vec<_>>());
    for (i, w) in want.iter().enumerate() {
        for j in 0..t {
            if j < w.len() {
                assert_eq!(batch.ids[[i, j]], w[j], "[{i}, {j}]");
                assert!(batch.mask[[i, j]], "[{i}, {j}] is a real token");
            } else {
                assert_eq!(batch.ids[[i, j]], 0, "[{i}, {j}] is [PAD]");
                assert!(!batch.mask[[i, j]], "[{i}, {j}] is padding");
            }
            assert_eq!(batch.type_ids[[i, j]], 0);
        }
    }
    // A given pad id overrides the file's.
    let tk = minilm(TokenizerOptions::default().with_pad_id(100));
    let batch = tk.encode_batch(&sents, true).unwrap();
    assert_eq!(batch.ids[[0, 8]], 100);
    assert_eq!(batch.ids[[1, 8]], want[1][8]);
    // An empty batch is [0, 0].
    let empty: [&str; 0] = [];
    assert_eq!(tk.encode_batch(&empty, true).unwrap().ids.dim(), (0, 0));
}

#[test]
fn minilm_sentence_pairs_have_a_second_segment() {
    let tk = minilm(TokenizerOptions::default());
    // the reference without the file's padding and truncation to 128
    let mut reference = tokenizers::Tokenizer::from_file(asset(MINILM_TOKENIZER)).unwrap();
    reference.with_padding(None).with_truncation(None).unwrap();
    let (a, b) = ("The cat sat.", "A cat was sitting on the mat.");
    let pair = tk.encode_pair(a, b, true).unwrap();
    let want = reference.encode((a, b), true).unwrap();
    assert_eq!(pair.ids, want.get_ids());
    assert_eq!(pair.type_ids, want.get_type_ids());
    // [CLS] a [SEP] b [SEP]: type ids 0 up to the first [SEP], 1 after it
    let (cls, sep) = (101, 102);
    let first_sep = pair.ids.iter().position(|&id| id == sep).unwrap();
    assert_eq!(pair.ids[0], cls);
    assert_eq!(*pair.ids.last().unwrap(), sep);
    assert_eq!(
        &pair.ids[..first_sep],
        &tk.encode(a, true).unwrap().ids[..first_sep]
    );
    assert!(pair.type_ids[..=first_sep].iter().all(|&t| t == 0));
    assert!(pair.type_ids[first_sep + 1..].iter().all(|&t| t == 1));
    assert!(pair.attention_mask.iter().all(|&m| m));

    // a batch mixing a pair and a single text, padded like encode_batch
    let batch = tk
        .encode_pair_batch(&[(a, Some(b)), ("Hello.", None)], true)
        .unwrap();
    let single = tk.encode_batch(&["Hello."], true).unwrap();
    assert_eq!(batch.ids.dim(), (2, pair.len()));
    assert_eq!(batch.lengths, [pair.len(), single.lengths[0]]);
    assert_eq!(batch.ids.row(0).to_vec(), pair.ids);
    assert_eq!(batch.type_ids.row(0).to_vec(), pair.type_ids);
    let n = single.lengths[0];
    assert_eq!(
        batch.ids.row(1).slice(spry::ndarray::s![..n]),
        single.ids.row(0)
    );
    assert!(batch.ids.row(1).iter().skip(n).all(|&id| id == tk.pad_id()));
    assert!(
        batch.type_ids.row(1).iter().all(|&t| t == 0),
        "padding has type 0"
    );
    assert_eq!(batch.mask.row(1).iter().filter(|&&m| m).count(), n);
    // all singles: the very batch of encode_batch
    let texts = ["one", "two words"];
    let singles: Vec<(&str, Option<&str>)> = texts.iter().map(|&t| (t, None)).collect();
    assert_eq!(
        tk.encode_pair_batch(&singles, true).unwrap(),
        tk.encode_batch(&texts, true).unwrap()
    );

    // truncation keeps both [SEP]s and cuts the longer text, the shorter keeping its 4 tokens
    // as they fit in half of the 9 left after the special tokens
    let tk = minilm(TokenizerOptions::default().with_max_len(12));
    let cut = tk.encode_pair(a, b, true).unwrap();
    assert_eq!(cut.len(), 12);
    assert_eq!(cut.ids.iter().filter(|&&id| id == sep).count(), 2);
    assert_eq!(
        &cut.ids[..first_sep],
        &pair.ids[..first_sep],
        "the shorter text is whole"
    );
}

#[test]
fn minilm_truncation_override() {
    let tk = minilm(TokenizerOptions::default().with_max_len(5));
    assert_eq!(tk.max_len(), Some(5));
    let (sents, want) = minilm_golden();
    for (s, w) in sents.iter().zip(&want) {
        let mut expect = w[..4].to_vec();
        expect.push(102); // [SEP] survives truncation
        assert_eq!(tk.encode(s, true).unwrap().ids, expect, "{s:?}");
        assert_eq!(tk.encode(s, false).unwrap().ids, w[1..6], "{s:?}");
    }
    let batch = tk.encode_batch(&sents, true).unwrap();
    assert_eq!(batch.ids.dim(), (3, 5));
    assert!(batch.mask.iter().all(|&m| m));

    // A long text is cut to max_len (the file's own truncation was 128).
    let long = "word ".repeat(300);
    let tk = minilm(TokenizerOptions::default().with_max_len(200));
    assert_eq!(tk.encode(&long, true).unwrap().len(), 200);
    let tk = minilm(TokenizerOptions::default());
    assert_eq!(tk.encode(&long, true).unwrap().len(), 302, "no truncation");

    // Room for nothing but [CLS] [SEP]: rejected up front.
    let err = TextTokenizer::from_file(
        asset(MINILM_TOKENIZER),
        TokenizerOptions::default().with_max_len(2),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    // with_options replaces the settings of a loaded tokenizer.
    let tk = tk
        .with_options(TokenizerOptions::default().with_max_len(3))
        .unwrap();
    assert_eq!(tk.encode(&sents[0], true).unwrap().ids, [101, 1996, 102]);
    assert_eq!(tk.pad_id(), 0, "pad id kept");
}

#[test]
fn minilm_decode_and_vocab() {
    let tk = minilm(TokenizerOptions::default());
    let (_, want) = minilm_golden();
    assert_eq!(
        tk.decode(&want[0], true).unwrap(),
        "the weather is lovely today."
    );
    assert_eq!(
        tk.decode(&want[0], false).unwrap(),
        "[CLS] the weather is lovely today. [SEP]"
    );
    assert_eq!(tk.token_to_id("[PAD]"), Some(0));
    assert_eq!(tk.token_to_id("[CLS]"), Some(101));
    assert_eq!(tk.token_to_id("no-such-token"), None);
    assert_eq!(tk.id_to_token(1996).as_deref(), Some("the"));
    let err = tk.decode(&[101, 30522], true).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = TextTokenizer::from_file(
        asset(MINILM_TOKENIZER),
        TokenizerOptions::default().with_pad_id(30522),
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
}

// ---- SmolLM2 (byte-level BPE from GGUF metadata) -----------------------------------------------

#[test]
fn smollm2_gguf_vocab_matches_golden() {
    let tk = smollm2();
    let g = golden("golden_smollm2.json");
    assert_eq!(tk.vocab_size(), 49152);
    assert_eq!(tk.token_to_id("<|im_start|>"), Some(1));
    assert_eq!(tk.token_to_id("<|im_end|>"), Some(2));

    let prompt = g["chat_prompt"].as_str().unwrap();
    let want = ids_of(&g["chat_prompt_ids"]);
    assert_eq!(tk.encode(prompt, false).unwrap().ids, want);
    assert_eq!(
        tk.encode(prompt, true).unwrap().ids,
        want,
        "no automatic BOS"
    );

    let text = g["nll_text"].as_str().unwrap();
    assert_eq!(
        tk.encode(text, true).unwrap().ids,
        ids_of(&g["nll_text_ids"])
    );

    let greedy = ids_of(&g["greedy_12_ids"]);
    assert_eq!(
        tk.decode(&greedy, true).unwrap(),
        g["greedy_12_text"].as_str().unwrap()
    );
    assert_eq!(
        tk.decode(&want, false).unwrap(),
        prompt,
        "byte-level decoding is lossless"
    );
}

#[test]
fn smollm2_gguf_vocab_agrees_with_reference_on_hamlet() {
    let tk = smollm2();
    let reference = tokenizers::Tokenizer::from_file(asset(SMOLLM2_TOKENIZER)).unwrap();
    let hamlet = std::fs::read_to_string(asset("text/hamlet.txt")).unwrap();
    let lines: Vec<&str> = hamlet.lines().take(2000).collect();
    assert_eq!(lines.len(), 2000);
    let mut n_tokens = 0;
    for (i, line) in lines.iter().enumerate() {
        let ours = tk.encode(line, true).unwrap().ids;
        let theirs = reference.encode(*line, true).unwrap();
        assert_eq!(ours, theirs.get_ids(), "line {}: {line:?}", i + 1);
        n_tokens += ours.len();
    }
    assert!(n_tokens > 10_000, "{n_tokens} tokens");
    // The whole passage as one text (newlines, runs of spaces, digits).
    let chunk = lines.join("\n");
    let ours = tk.encode(&chunk, true).unwrap().ids;
    assert_eq!(
        ours,
        reference.encode(chunk.as_str(), true).unwrap().get_ids()
    );
    assert_eq!(tk.decode(&ours, false).unwrap(), chunk);
    // Batch encoding pads with the given id and agrees row by row.
    let tk = tk
        .with_options(TokenizerOptions::default().with_pad_id(2))
        .unwrap();
    let batch = tk.encode_batch(&lines[..16], false).unwrap();
    for (i, line) in lines[..16].iter().enumerate() {
        let want = reference.encode(*line, false).unwrap();
        let n = want.get_ids().len();
        assert_eq!(batch.lengths[i], n);
        assert_eq!(
            batch.ids.row(i).iter().take(n).copied().collect::<Vec<_>>(),
            want.get_ids()
        );
        assert!(batch.ids.row(i).iter().skip(n).all(|&id| id == 2));
        assert_eq!(batch.mask.row(i).iter().filter(|&&m| m).count(), n);
    }
}

#[test]
fn gguf_vocab_small_synthetic() {
    // A hand-made vocabulary: "Ġ" is the byte-level form of a space.
    let tokens: Vec<String> = ["<|end|>", "a", "b", "ab", "Ġ", "Ġab", "1", "2", "12"]
        .map(String::from)
        .to_vec();
    let types = [3, 1, 1, 1, 1, 1, 1, 1, 1];
    let merges: Vec<String> = ["a b", "Ġ ab", "1 2"].map(String::from).to_vec();
    let tk = bpe_from_gguf_vocab(&tokens, &types, &merges).unwrap();
    assert_eq!(tk.vocab_size(), 9);
    assert_eq!(tk.pad_id(), 0);
    // Digits are split one by one, so the "1 2" merge never applies; the control token is matched
    // in the text.
    let enc = tk.encode("ab ab<|end|>12", true).unwrap();
    assert_eq!(enc.ids, [3, 5, 0, 6, 7]);
    assert_eq!(tk.decode(&enc.ids, true).unwrap(), "ab ab12");
    assert_eq!(tk.decode(&enc.ids, false).unwrap(), "ab ab<|end|>12");
}

// ---- errors ------------------------------------------------------------------------------------

#[test]
fn gguf_vocab_errors_are_typed() {
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let tokens = s(&["a", "b", "ab"]);
    let err = bpe_from_gguf_vocab(&tokens, &[1, 1], &s(&["a b"])).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = bpe_from_gguf_vocab(&[], &[], &[]).unwrap_err();
    assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    let err = bpe_from_gguf_vocab(&tokens, &[1, 1, 1], &s(&["ab"])).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
    let err = bpe_from_gguf_vocab(&tokens, &[1, 1, 1], &s(&["a c"])).unwrap_err();
    assert!(matches!(err, Error::Tokenizer { .. }), "{err}");
    let err = bpe_from_gguf_vocab(&tokens, &[1, 1, 1], &s(&["b a"])).unwrap_err();
    assert!(
        matches!(err, Error::Tokenizer { .. }),
        "merged token `ba` is not in the vocabulary: {err}"
    );
}

#[test]
fn missing_or_corrupt_tokenizer_file_errors() {
    let missing = scratch("does-not-exist.json");
    let err = TextTokenizer::from_file(&missing, TokenizerOptions::default()).unwrap_err();
    match &err {
        Error::Io { path, .. } => assert_eq!(path, &missing),
        other => panic!("expected Error::Io, got {other}"),
    }

    // Truncated copy of a real file, then something that is JSON but not a tokenizer.
    let full = std::fs::read(asset(MINILM_TOKENIZER)).unwrap();
    let cases: [(&str, &[u8]); 3] = [
        ("truncated.json", &full[..full.len() / 2]),
        ("not-a-tokenizer.json", br#"{"hello": "world"}"#),
        ("binary.json", &[0xff, 0xfe, 0x00, 0x12]),
    ];
    for (name, bytes) in cases {
        let path = scratch(name);
        std::fs::write(&path, bytes).unwrap();
        let err = TextTokenizer::from_file(&path, TokenizerOptions::default()).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        match &err {
            Error::Format {
                path: p, format, ..
            } => {
                assert_eq!(p, &path);
                assert_eq!(*format, "tokenizer.json");
            }
            other => panic!("{name}: expected Error::Format, got {other}"),
        }
        assert!(
            err.to_string().contains(name),
            "message names the file: {err}"
        );
    }
}

/// A `tokenizer.json` whose post-processor template names a special token it does not define
/// loads in the `tokenizers` crate and panics on its first encode; spry tries it once at load
/// and returns a typed error instead.
#[test]
fn a_tokenizer_that_panics_when_it_encodes_is_refused_at_load() {
    let path = asset("all-MiniLM-L6-v2/tokenizer.json");
    let mut json: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["post_processor"]["single"][0]["SpecialToken"]["id"] = "[NOPE]".into();
    let dir = std::env::temp_dir().join(format!("spry-tok-probe-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bad = dir.join("tokenizer.json");
    std::fs::write(&bad, json.to_string()).unwrap();
    match TextTokenizer::from_file(&bad, TokenizerOptions::default()) {
        Err(Error::Tokenizer { msg }) => assert!(msg.contains("panics"), "{msg}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a tokenizer that panics on encode was accepted"),
    }
    std::fs::remove_dir_all(&dir).ok();
}
