//! Labelled files: TSV, CSV and JSON Lines with string or integer labels, sentence pairs and a
//! group column; the label set inferred from a training file and a test file read against it;
//! `id2label` maps; every malformed file as a typed error naming its line; the real Rotten
//! Tomatoes file exactly as the first TSV loader read it; pairs through the task's batches.

#[path = "common/assets.rs"]
mod assets;

#[path = "common/temp_file.rs"]
mod temp_file;

use std::path::Path;

use temp_file::TempFile;

use proptest::prelude::*;
use serde_json::json;
use spry::data::{
    Columns, Example, FileFormat, LabelSet, MAX_CLASSES, PartitionScheme, load_labelled,
    load_labelled_against, load_labelled_tsv,
};
use spry::{Error, TextTokenizer, TokenizerOptions};

// ---- helpers -------------------------------------------------------------------------------------

/// The message of an `Error::Format` about `path` in `format`.
fn format_msg(err: Error, path: &Path, format: &str) -> String {
    match err {
        Error::Format {
            path: p,
            format: f,
            msg,
        } => {
            assert_eq!(p, path);
            assert_eq!(f, format, "{msg}");
            msg
        }
        other => panic!("expected Error::Format, got {other:?}"),
    }
}

/// The `Error::Format` message of loading `content` as a training file with `columns`.
fn load_err(ext: &str, content: &str, columns: &Columns) -> String {
    let f = TempFile::new(ext, content);
    let format = if ext == "ndjson" { "jsonl" } else { ext };
    format_msg(load_labelled(&f.0, columns).unwrap_err(), &f.0, format)
}

fn texts(ex: &[Example]) -> Vec<&str> {
    ex.iter().map(|e| e.text.as_str()).collect()
}

fn labels(ex: &[Example]) -> Vec<usize> {
    ex.iter().map(|e| e.label).collect()
}

// ---- formats -------------------------------------------------------------------------------------

/// Three classes, five rows, a group column: the same data in each format.
const TSV_3: &str = "id\ttext\tlabel\tuser\n\
                     1\tgreat fun\tpos\tu1\n\
                     2\tdull, slow\tneg\tu2\n\
                     3\tit is a film\tneu\tu1\n\
                     4\t\"loved\" it\tpos\tu3\n\
                     5\tmeh\tneu\tu2\n";
const CSV_3: &str = "id,text,label,user\n\
                     1,great fun,pos,u1\n\
                     2,\"dull, slow\",neg,u2\n\
                     3,it is a film,neu,u1\n\
                     4,\"\"\"loved\"\" it\",pos,u3\n\
                     5,meh,neu,u2\n";
const JSONL_3: &str = r#"{"id": 1, "text": "great fun", "label": "pos", "user": "u1"}
{"id": 2, "text": "dull, slow", "label": "neg", "user": "u2"}
{"text": "it is a film", "label": "neu", "user": "u1", "id": 3}
{"id": 4, "text": "\"loved\" it", "label": "pos", "user": "u3"}
{"id": 5, "text": "meh", "label": "neu", "user": "u2", "extra": [1, 2]}
"#;

#[test]
fn each_format_reads_the_same_three_class_data() {
    let columns = Columns::new("text", "label").with_group("user");
    for (ext, content) in [
        ("tsv", TSV_3),
        ("csv", CSV_3),
        ("jsonl", JSONL_3),
        ("ndjson", JSONL_3),
    ] {
        let f = TempFile::new(ext, content);
        let (ex, set) = load_labelled(&f.0, &columns).unwrap();
        assert_eq!(set.names(), ["neg", "neu", "pos"], "{ext}: sorted names");
        assert_eq!(
            texts(&ex),
            [
                "great fun",
                "dull, slow",
                "it is a film",
                "\"loved\" it",
                "meh"
            ],
            "{ext}"
        );
        assert_eq!(labels(&ex), [2, 0, 1, 2, 1], "{ext}");
        let groups: Vec<_> = ex.iter().map(|e| e.group.as_deref().unwrap()).collect();
        assert_eq!(groups, ["u1", "u2", "u1", "u3", "u2"], "{ext}");
        assert!(ex.iter().all(|e| e.text_pair.is_none()));
        // the same file read against its own classes gives the same examples
        assert_eq!(load_labelled_against(&f.0, &columns, &set).unwrap(), ex);
        // and a natural partition over the group column works on them
        let parts = PartitionScheme::Natural.split(&ex, 3, 0).unwrap();
        assert_eq!(parts.iter().map(Vec::len).sum::<usize>(), 5);
    }
}

#[test]
fn the_format_may_be_named_instead_of_the_extension() {
    let f = TempFile::new("txt", CSV_3);
    let columns = Columns::default();
    match load_labelled(&f.0, &columns).unwrap_err() {
        Error::InvalidArgument { msg, .. } => assert!(msg.contains(".csv"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let format: FileFormat = "csv".parse().unwrap();
    let (ex, set) = format.load(&f.0, &columns).unwrap();
    assert_eq!((ex.len(), set.len()), (5, 3));
    let again = format.load_against(&f.0, &columns, &set).unwrap();
    assert_eq!(again, ex);
    // spellings, both ways, and serde's
    for (name, f) in [
        ("tsv", FileFormat::Tsv),
        ("csv", FileFormat::Csv),
        ("jsonl", FileFormat::JsonLines),
    ] {
        assert_eq!(name.parse::<FileFormat>().unwrap(), f);
        assert_eq!(f.to_string(), name);
        assert_eq!(f.name(), name);
        assert_eq!(serde_json::to_value(f).unwrap(), json!(name));
        assert_eq!(
            serde_json::from_value::<FileFormat>(json!(name)).unwrap(),
            f
        );
    }
    assert!(matches!(
        "xlsx".parse::<FileFormat>(),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(
        FileFormat::from_path(Path::new("A.NDJSON")).unwrap(),
        FileFormat::JsonLines
    );
}

#[test]
fn csv_quoting_per_rfc_4180() {
    // commas, doubled quotes, a line break and a CRLF inside quotes, CRLF row ends, an empty
    // quoted group, a quote inside an unquoted field (kept as text)
    let csv = "text,label,g\r\n\
               \"a, b\",x,\"\"\r\n\
               \"she said \"\"hi\"\"\",y,g1\r\n\
               \"two\nlines\",x,g2\r\n\
               \"crlf\r\ninside\",y,g3\r\n\
               5\" tall,x,g4\r\n";
    let f = TempFile::new("csv", csv);
    let (ex, set) = load_labelled(&f.0, &Columns::new("text", "label").with_group("g")).unwrap();
    assert_eq!(
        texts(&ex),
        [
            "a, b",
            "she said \"hi\"",
            "two\nlines",
            "crlf\r\ninside",
            "5\" tall"
        ]
    );
    assert_eq!(set.names(), ["x", "y"]);
    assert_eq!(
        ex[0].group.as_deref(),
        Some(""),
        "an empty group is a group"
    );
}

#[test]
fn tsv_has_no_quoting() {
    let f = TempFile::new(
        "tsv",
        "text\tlabel\n\"quoted\" start\ta\nend \"quote\"\tb\n\"\"\tc\n",
    );
    let (ex, _) = load_labelled(&f.0, &Columns::default()).unwrap();
    assert_eq!(texts(&ex), ["\"quoted\" start", "end \"quote\"", "\"\""]);
}

#[test]
fn jsonl_labels_may_be_numbers_strings_or_booleans() {
    let columns = Columns::new("t", "y").with_group("user");
    // integers (1.0 as pandas writes an integer column with a gap) → classes 0..=max
    let f = TempFile::new(
        "jsonl",
        "{\"t\": \"a\", \"y\": 2, \"user\": 7}\n\n{\"t\": \"b\", \"y\": 0, \"user\": \"7\"}\r\n\
         {\"t\": \"c\", \"y\": 1.0, \"user\": 8}\n{\"t\": \"d\", \"y\": \"2\", \"user\": 9.5}\n",
    );
    let (ex, set) = load_labelled(&f.0, &columns).unwrap();
    assert_eq!(set.names(), ["0", "1", "2"]);
    assert_eq!(labels(&ex), [2, 0, 1, 2]);
    let groups: Vec<_> = ex.iter().map(|e| e.group.as_deref().unwrap()).collect();
    assert_eq!(groups, ["7", "7", "8", "9.5"]);
    // strings, negative numbers and booleans are names, sorted
    let f = TempFile::new(
        "jsonl",
        "{\"t\": \"a\", \"y\": -1, \"user\": true}\n{\"t\": \"b\", \"y\": 1, \"user\": 0}\n",
    );
    let (ex, set) = load_labelled(&f.0, &columns).unwrap();
    assert_eq!(set.names(), ["-1", "1"]);
    assert_eq!(labels(&ex), [0, 1]);
    assert_eq!(ex[0].group.as_deref(), Some("true"));
    let f = TempFile::new(
        "jsonl",
        "{\"t\": \"a\", \"y\": true, \"user\": \"u\"}\n{\"t\": \"b\", \"y\": false, \"user\": \"u\"}\n",
    );
    let (ex, set) = load_labelled(&f.0, &columns).unwrap();
    assert_eq!(set.names(), ["false", "true"]);
    assert_eq!(labels(&ex), [1, 0]);
}

#[test]
fn sentence_pairs_in_every_format() {
    let columns = Columns::new("premise", "label").with_text_pair("hypothesis");
    let tsv = "premise\thypothesis\tlabel\nA man eats.\tSomeone eats.\tentailment\n\
               A cat sleeps.\tA dog barks.\tneutral\n";
    let csv = "label,premise,hypothesis\nentailment,A man eats.,Someone eats.\n\
               neutral,A cat sleeps.,A dog barks.\n";
    let jsonl = "{\"premise\": \"A man eats.\", \"hypothesis\": \"Someone eats.\", \"label\": \"entailment\"}\n\
                 {\"premise\": \"A cat sleeps.\", \"hypothesis\": \"A dog barks.\", \"label\": \"neutral\"}\n";
    for (ext, content) in [("tsv", tsv), ("csv", csv), ("jsonl", jsonl)] {
        let f = TempFile::new(ext, content);
        let (ex, set) = load_labelled(&f.0, &columns).unwrap();
        assert_eq!(set.names(), ["entailment", "neutral"]);
        assert_eq!(
            ex,
            [
                Example::new("A man eats.", 0).with_text_pair("Someone eats."),
                Example::new("A cat sleeps.", 1).with_text_pair("A dog barks."),
            ],
            "{ext}"
        );
    }
    // an empty second text is refused like an empty first one
    let msg = load_err(
        "tsv",
        "premise\thypothesis\tlabel\na\tb\tx\nc\t \ty\n",
        &columns,
    );
    assert!(
        msg.contains("line 3") && msg.contains("hypothesis"),
        "{msg}"
    );
}

// ---- label sets ----------------------------------------------------------------------------------

#[test]
fn integer_labels_are_their_own_class_indices() {
    let f = TempFile::new("tsv", "text\tlabel\na\t3\nb\t0\nc\t 3 \nd\t007\n");
    let (ex, set) = load_labelled(&f.0, &Columns::default()).unwrap();
    assert_eq!(set.names(), ["0", "1", "2", "3", "4", "5", "6", "7"]);
    assert_eq!(labels(&ex), [3, 0, 3, 7], "trimmed; 007 is 7");
    // the largest class index allowed, and one past it
    let top = MAX_CLASSES - 1;
    let f = TempFile::new("csv", format!("text,label\na,{top}\n"));
    let (_, set) = load_labelled(&f.0, &Columns::default()).unwrap();
    assert_eq!(set.len(), MAX_CLASSES);
    for huge in [MAX_CLASSES.to_string(), "99999999999999999999999999".into()] {
        let msg = load_err(
            "csv",
            &format!("text,label\na,0\nb,{huge}\n"),
            &Columns::default(),
        );
        assert!(msg.contains("line 3") && msg.contains(&huge), "{msg}");
    }
}

#[test]
fn any_non_integer_label_makes_every_label_a_name() {
    let (ex, set) = {
        let f = TempFile::new("csv", "text,label\na,1\nb,pos\nc,10\nd,2\ne,-1\n");
        load_labelled(&f.0, &Columns::default()).unwrap()
    };
    assert_eq!(set.names(), ["-1", "1", "10", "2", "pos"], "byte order");
    assert_eq!(labels(&ex), [1, 4, 2, 3, 0]);
    assert_eq!(
        LabelSet::infer(&["b", "a", "b"]).unwrap().names(),
        ["a", "b"]
    );
    assert_eq!(LabelSet::infer(&["2", "0"]).unwrap().len(), 3);
    for bad in [vec![], vec!["a", " "]] {
        assert!(matches!(
            LabelSet::infer(&bad),
            Err(Error::InvalidArgument { .. })
        ));
    }
}

#[test]
fn a_test_file_is_read_against_the_training_classes() {
    let columns = Columns::default();
    let train = TempFile::new("csv", "text,label\na,neg\nb,pos\nc,neu\n");
    let (_, set) = load_labelled(&train.0, &columns).unwrap();
    // fewer classes, other order, other format: the training indices
    let test = TempFile::new(
        "jsonl",
        "{\"text\": \"x\", \"label\": \"pos\"}\n{\"text\": \"y\", \"label\": \" pos \"}\n",
    );
    let ex = load_labelled_against(&test.0, &columns, &set).unwrap();
    assert_eq!(labels(&ex), [2, 2]);
    // an unknown label names its line and the classes
    let test = TempFile::new("tsv", "text\tlabel\nx\tpos\n\ny\tpositive\n");
    let msg = format_msg(
        load_labelled_against(&test.0, &columns, &set).unwrap_err(),
        &test.0,
        "tsv",
    );
    assert!(
        msg.contains("line 4") && msg.contains("positive") && msg.contains("neu"),
        "{msg}"
    );
    // integer classes: a label past them is an error, not a new class
    let set = LabelSet::infer(&["0", "1"]).unwrap();
    let test = TempFile::new("csv", "text,label\nx,1\ny,01\nz,2\n");
    let msg = format_msg(
        load_labelled_against(&test.0, &columns, &set).unwrap_err(),
        &test.0,
        "csv",
    );
    assert!(msg.contains("line 4") && msg.contains("`2`"), "{msg}");
}

#[test]
fn id2label_and_label2id_round_trip() {
    let set = LabelSet::new(vec!["negative".into(), "neutral".into(), "positive".into()]).unwrap();
    let id2label = set.to_id2label();
    assert_eq!(
        id2label,
        json!({"0": "negative", "1": "neutral", "2": "positive"})
    );
    assert_eq!(LabelSet::from_id2label(&id2label).unwrap(), set);
    let label2id = set.to_label2id();
    assert_eq!(
        label2id,
        json!({"negative": 0, "neutral": 1, "positive": 2})
    );
    assert_eq!(LabelSet::from_label2id(&label2id).unwrap(), set);
    // a transformers config.json's maps, keys in any order
    let config = json!({"id2label": {"1": "POSITIVE", "0": "NEGATIVE"}});
    let set = LabelSet::from_id2label(&config["id2label"]).unwrap();
    assert_eq!(set.names(), ["NEGATIVE", "POSITIVE"]);
    assert_eq!(
        (set.id("POSITIVE"), set.name(0)),
        (Some(1), Some("NEGATIVE"))
    );
    // serde: the list of names, validated on the way in
    let set = LabelSet::infer(&["b", "a"]).unwrap();
    assert_eq!(serde_json::to_value(&set).unwrap(), json!(["a", "b"]));
    assert_eq!(
        serde_json::from_value::<LabelSet>(json!(["a", "b"])).unwrap(),
        set
    );
    assert!(serde_json::from_value::<LabelSet>(json!(["a", "a"])).is_err());
}

#[test]
fn malformed_label_maps_are_typed_errors() {
    for bad in [
        json!([]),
        json!({}),
        json!({"0": "a", "2": "b"}),
        json!({"0": "a", "1": 3}),
        json!({"0": "a", "01": "b"}),
        json!({"0": "a", "+1": "b"}),
        json!({"0": "a", "1": "a"}),
        json!({"0": ""}),
        json!({"0": " a"}),
        json!("0"),
    ] {
        assert!(
            matches!(
                LabelSet::from_id2label(&bad),
                Err(Error::InvalidArgument { .. })
            ),
            "{bad}"
        );
    }
    for bad in [
        json!({"a": 0, "b": 2}),
        json!({"a": 0, "b": 0}),
        json!({"a": -1}),
        json!({"a": "0"}),
        json!({"a": 0.5}),
    ] {
        assert!(
            matches!(
                LabelSet::from_label2id(&bad),
                Err(Error::InvalidArgument { .. })
            ),
            "{bad}"
        );
    }
    assert!(LabelSet::new(vec![]).is_err());
}

// ---- errors --------------------------------------------------------------------------------------

#[test]
fn a_missing_column_lists_the_header() {
    for (ext, content) in [("tsv", "text\tlabel\na\tb\n"), ("csv", "text,label\na,b\n")] {
        for columns in [
            Columns::new("sentence", "label"),
            Columns::new("text", "polarity"),
            Columns::default().with_group("movie"),
            Columns::default().with_text_pair("hypothesis"),
        ] {
            let msg = load_err(ext, content, &columns);
            let missing = ["sentence", "polarity", "movie", "hypothesis"]
                .into_iter()
                .find(|m| msg.contains(m))
                .unwrap_or_else(|| panic!("{msg}"));
            assert!(
                msg.contains("line 1") && msg.contains("[\"text\", \"label\"]"),
                "{missing}: {msg}"
            );
        }
    }
    let msg = load_err("csv", "text,label,text\na,b,c\n", &Columns::default());
    assert!(msg.contains("2 times"), "{msg}");
    // JSON Lines: a key missing from one object
    let msg = load_err(
        "jsonl",
        "{\"text\": \"a\", \"label\": 1}\n{\"txt\": \"b\", \"label\": 0}\n",
        &Columns::default(),
    );
    assert!(
        msg.contains("line 2") && msg.contains("`text`") && msg.contains("txt"),
        "{msg}"
    );
}

#[test]
fn a_row_with_too_few_or_too_many_fields_names_its_line() {
    let columns = Columns::default();
    // line 1 header, 2 fine, 3 blank, 4 short
    let msg = load_err("tsv", "label\ttext\n1\tfine\n\n0\n1\tlater\n", &columns);
    assert!(msg.contains("line 4") && msg.contains("1 fields"), "{msg}");
    // an unquoted comma in a CSV text would cut it: refused
    let msg = load_err("csv", "text,label\nfine,1\nnot, fine,0\n", &columns);
    assert!(msg.contains("line 3") && msg.contains("3 fields"), "{msg}");
    // after a record spanning lines 2-4, the short row is on line 5 (CRLF too)
    for nl in ["\n", "\r\n"] {
        let csv = format!("text,label{nl}\"a{nl}b{nl}c\",1{nl}{nl}x{nl}");
        let msg = load_err("csv", &csv, &columns);
        assert!(msg.contains("line 6"), "{nl:?}: {msg}");
        let csv = format!("text,label{nl}\"a{nl}b{nl}c\",1{nl}x{nl}");
        let msg = load_err("csv", &csv, &columns);
        assert!(msg.contains("line 5"), "{nl:?}: {msg}");
    }
}

#[test]
fn empty_and_header_only_files_have_no_examples() {
    let columns = Columns::default();
    for (ext, content) in [
        ("tsv", ""),
        ("csv", ""),
        ("jsonl", ""),
        ("tsv", "\n\n"),
        ("jsonl", "\n  \n"),
        ("tsv", "text\tlabel\n"),
        ("csv", "text,label\r\n\r\n"),
    ] {
        let msg = load_err(ext, content, &columns);
        assert!(
            msg.contains("no examples") || msg.contains("empty file"),
            "{ext} {content:?}: {msg}"
        );
        // read against a label set too
        let f = TempFile::new(ext, content);
        let set = LabelSet::infer(&["0"]).unwrap();
        assert!(matches!(
            load_labelled_against(&f.0, &columns, &set),
            Err(Error::Format { .. })
        ));
    }
    let path = std::env::temp_dir().join("spry-labelled-does-not-exist.csv");
    match load_labelled(&path, &columns).unwrap_err() {
        Error::Io { path: p, .. } => assert_eq!(p, path),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_empty_text_or_label_names_its_line() {
    let columns = Columns::default();
    for (ext, content) in [
        ("tsv", "text\tlabel\na\t1\n\t0\n"),
        ("tsv", "text\tlabel\na\t1\n   \t0\n"),
        ("csv", "text,label\na,1\n\"\",0\n"),
        (
            "jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"\", \"label\": 0}\n",
        ),
        ("tsv", "text\tlabel\na\t1\nb\t \n"),
        ("csv", "text,label\na,1\nb,\n"),
        (
            "jsonl",
            "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": \"\"}\n",
        ),
    ] {
        // (JSON Lines has no header: its second line is the second row)
        let line = if ext == "jsonl" { "line 2" } else { "line 3" };
        let msg = load_err(ext, content, &columns);
        assert!(
            msg.contains(line) && msg.contains("empty value"),
            "{ext} {content:?}: {msg}"
        );
    }
}

#[test]
fn invalid_utf8_names_its_line() {
    let columns = Columns::default();
    for (ext, head) in [
        ("tsv", &b"text\tlabel\na\t1\nb\t0\n"[..]),
        ("csv", b"text,label\na,1\nb,0\n"),
        (
            "jsonl",
            b"{\"text\": \"a\", \"label\": 1}\n\n{\"text\": \"b\", \"label\": 0}\n",
        ),
    ] {
        let mut bytes = head.to_vec();
        bytes.extend_from_slice(b"caf\xe9"); // Latin-1 é
        let f = TempFile::new(ext, &bytes);
        let format = ext;
        let msg = format_msg(load_labelled(&f.0, &columns).unwrap_err(), &f.0, format);
        assert!(
            msg.contains("line 4") && msg.contains("UTF-8"),
            "{ext}: {msg}"
        );
    }
    // a byte-order mark is not part of the first column's name
    let f = TempFile::new("csv", "\u{feff}text,label\na,1\n");
    assert_eq!(load_labelled(&f.0, &columns).unwrap().0.len(), 1);
}

#[test]
fn jsonl_lines_that_are_not_objects_name_their_line() {
    let columns = Columns::default();
    for (bad, why) in [
        ("[1, 2]", "object"),
        ("\"text\"", "object"),
        ("{\"text\": \"a\", \"label\": 1", "JSON"),
        ("text,label", "JSON"),
        ("{\"text\": 5, \"label\": 1}", "string"),
        ("{\"text\": null, \"label\": 1}", "string"),
        ("{\"text\": \"a\", \"label\": null}", "string"),
        ("{\"text\": \"a\", \"label\": [1]}", "string"),
        ("{\"text\": \"a\", \"label\": {\"id\": 1}}", "string"),
    ] {
        let content = format!("{{\"text\": \"ok\", \"label\": 0}}\n\n{bad}\n");
        let msg = load_err("jsonl", &content, &columns);
        assert!(msg.contains("line 3") && msg.contains(why), "{bad}: {msg}");
    }
}

// ---- the first loader ----------------------------------------------------------------------------

#[test]
fn load_labelled_tsv_keeps_integer_labels_and_its_callers() {
    let f = TempFile::new("tsv", "label\ttext\n1\thi\n0\tyo\textra\n");
    let ex = load_labelled_tsv(&f.0, "text", "label", None).unwrap();
    assert_eq!(ex, [Example::new("hi", 1), Example::new("yo", 0)]);
    // a label that is not an index is an error, not a class name
    let f = TempFile::new("tsv", "label\ttext\n1\thi\npos\tyo\n");
    let msg = format_msg(
        load_labelled_tsv(&f.0, "text", "label", None).unwrap_err(),
        &f.0,
        "tsv",
    );
    assert!(msg.contains("line 3"), "{msg}");
    // nor a table the size of a huge label
    let f = TempFile::new("tsv", "label\ttext\n4000000000\thi\n");
    assert!(load_labelled_tsv(&f.0, "text", "label", None).is_err());
}

// ---- the real file -------------------------------------------------------------------------------

/// The first TSV loader (as on main before the labelled-file readers), kept here as the
/// reference the new readers must reproduce on the real file.
fn first_tsv_loader(content: &str) -> Vec<(String, usize, String)> {
    let mut lines = content.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |n: &str| header.iter().position(|h| *h == n).unwrap();
    let (ti, li, gi) = (col("text"), col("label"), col("movie"));
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (
                f[ti].to_owned(),
                f[li].trim().parse().unwrap(),
                f[gi].to_owned(),
            )
        })
        .collect()
}

#[test]
fn rotten_tomatoes_loads_exactly_as_the_first_loader_read_it() {
    let columns = Columns::default().with_group("movie");
    let train = assets::asset("text/rt_polarity_train.tsv");
    let (ex, set) = load_labelled(&train, &columns).unwrap();
    assert_eq!(set.names(), ["0", "1"], "class ids 0/1 kept");
    let want = first_tsv_loader(&std::fs::read_to_string(&train).unwrap());
    let got: Vec<(String, usize, String)> = ex
        .iter()
        .map(|e| (e.text.clone(), e.label, e.group.clone().unwrap()))
        .collect();
    assert_eq!(got.len(), 11_348);
    assert!(got == want, "the new reader differs from the first loader");
    assert_eq!(
        ex[0],
        Example::new("A three-hour cinema master class.", 1).with_group("a_grin_without_a_cat")
    );
    // and the wrapper gives the very same examples
    assert_eq!(
        load_labelled_tsv(&train, "text", "label", Some("movie")).unwrap(),
        ex
    );
    // the test split, read against the training classes
    let test = assets::asset("text/rt_polarity_test.tsv");
    let tex = load_labelled_against(&test, &columns, &set).unwrap();
    let want = first_tsv_loader(&std::fs::read_to_string(&test).unwrap());
    assert_eq!((tex.len(), want.len()), (1_404, 1_404));
    assert!(
        tex.iter()
            .zip(&want)
            .all(|(e, w)| (&e.text, e.label, e.group.as_ref().unwrap()) == (&w.0, w.1, &w.2))
    );
}

// ---- pairs through the task ----------------------------------------------------------------------

/// A model that never runs: the task's batches are all this test looks at.
struct Unused;

impl spry::tasks::TextClassifier for Unused {
    type Input = spry::tokenizer::TokenBatch;

    fn classify(
        &self,
        _input: &Self::Input,
        _labels: Option<&[i64]>,
        _params: &spry::modules::Trainable<f32>,
        _dirs: &spry::modules::Directions<f32>,
        _dropout: Option<&spry::modules::DropoutKey>,
    ) -> spry::Result<spry::models::bert::ClassifierOutput<f32>> {
        Err(Error::invalid("Unused", "not a model"))
    }

    fn head_params(&self) -> (usize, usize) {
        (0, 1)
    }
}

#[test]
fn pairs_reach_the_model_as_two_segments() {
    let tok = TextTokenizer::from_file(
        assets::asset("all-MiniLM-L6-v2/tokenizer.json"),
        TokenizerOptions::default(),
    )
    .unwrap();
    let train = vec![
        Example::new("a man eats", 0).with_text_pair("someone eats food"),
        Example::new("a cat sleeps", 1),
    ];
    let task = spry::tasks::ClassificationTask::new(
        &Unused,
        &tok,
        train.clone(),
        Vec::new(),
        &PartitionScheme::Iid,
        1,
        0,
    )
    .unwrap();
    let b = task.batch(&train, &[0, 1]).unwrap();
    assert_eq!(b.labels, [0, 1]);
    let pair = tok
        .encode_pair("a man eats", "someone eats food", true)
        .unwrap();
    let single = tok.encode("a cat sleeps", true).unwrap();
    let row = |r: usize, n: usize| {
        b.input
            .ids
            .row(r)
            .iter()
            .take(n)
            .copied()
            .collect::<Vec<_>>()
    };
    assert_eq!(row(0, pair.len()), pair.ids);
    assert_eq!(row(1, single.len()), single.ids);
    // [CLS] a man eats [SEP] | someone eats food [SEP]
    let types: Vec<u32> = b.input.type_ids.row(0).to_vec();
    assert_eq!(types, [0, 0, 0, 0, 0, 1, 1, 1, 1]);
    assert!(b.input.type_ids.row(1).iter().all(|&t| t == 0));
}

// ---- properties ----------------------------------------------------------------------------------

/// A text with something besides whitespace in it.
fn text() -> impl Strategy<Value = String> {
    "[ -~\t\n\r\"',é中]{0,20}[a-z][ -~\t\n\r\"',é中]{0,20}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any texts, quoted by hand as RFC 4180 says, come back exactly from a CSV file.
    #[test]
    fn csv_round_trips_any_text(
        rows in proptest::collection::vec((text(), text(), 0usize..3), 1..12)
    ) {
        let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
        let mut csv = String::from("\"text\",label,pair\r\n");
        for (t, p, l) in &rows {
            csv.push_str(&format!("{},{},{}\r\n", quote(t), ["a", "b", "c"][*l], quote(p)));
        }
        let f = TempFile::new("csv", csv);
        let columns = Columns::new("text", "label").with_text_pair("pair");
        let (ex, set) = load_labelled(&f.0, &columns).unwrap();
        prop_assert_eq!(ex.len(), rows.len());
        for (e, (t, p, l)) in ex.iter().zip(&rows) {
            prop_assert_eq!(&e.text, t);
            prop_assert_eq!(e.text_pair.as_ref(), Some(p));
            prop_assert_eq!(set.name(e.label), Some(["a", "b", "c"][*l]));
        }
    }

    /// Texts without tabs or line breaks come back exactly from a TSV file, quotes and all.
    #[test]
    fn tsv_round_trips_texts_without_tabs_or_line_breaks(
        rows in proptest::collection::vec(("[ -~é]{0,10}[a-z\"][ -~é]{0,10}", 0usize..5), 1..12)
    ) {
        let mut tsv = String::from("label\ttext\n");
        for (t, l) in &rows {
            tsv.push_str(&format!("{l}\t{t}\n"));
        }
        let f = TempFile::new("tsv", tsv);
        let (ex, set) = load_labelled(&f.0, &Columns::default()).unwrap();
        let max = rows.iter().map(|r| r.1).max().unwrap();
        prop_assert_eq!(set.len(), max + 1);
        for (e, (t, l)) in ex.iter().zip(&rows) {
            prop_assert_eq!(&e.text, t);
            prop_assert_eq!(e.label, *l);
        }
    }
}
