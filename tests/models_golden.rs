//! Real checkpoints against independent golden outputs (`tests/golden/`): MiniLM sentence
//! embeddings and cosines, SmolLM2 greedy ids and mean NLL.

#[path = "common/assets.rs"]
mod assets;

use assets::{asset, golden};
use ndarray::Array2;
use spry::models::bert::BertBatch;
use spry::models::pretrained::{load_bert_dir, load_llama_gguf, no_lora};
use spry::modules::Directions;
use spry::tokenizer::TokenizerOptions;

fn f64s(v: &serde_json::Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

#[test]
fn minilm_matches_golden_embeddings_and_cosines() {
    let g = golden("golden_minilm.json");
    let dir = asset("all-MiniLM-L6-v2/model.safetensors")
        .parent()
        .unwrap()
        .to_path_buf();
    let (bert, trainable, tok) = load_bert_dir(
        &dir,
        &no_lora(),
        0,
        TokenizerOptions::default().with_max_len(256),
    )
    .unwrap();
    let sentences: Vec<&str> = g["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let batch = tok.encode_batch(&sentences, true).unwrap();
    for (i, ids) in g["input_ids"].as_array().unwrap().iter().enumerate() {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(&batch.ids.row(i).to_vec()[..want.len()], &want[..]);
    }
    let b = BertBatch::new(batch.ids.clone(), batch.mask.clone()).unwrap();
    // last hidden state, token 0 (padding must not change real tokens)
    let h = bert
        .encode(&b, &trainable, &Directions::none(trainable.len()), None)
        .unwrap();
    for (i, want) in g["last_hidden_state_tok0_first8"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (j, w) in f64s(want).iter().enumerate() {
            let got = h.primal()[[i, 0, j]] as f64;
            assert!((got - w).abs() < 1e-4, "hidden[{i},0,{j}] {got} vs {w}");
        }
    }
    let e = bert.sentence_embeddings(&b, &trainable).unwrap();
    for (i, want) in g["embedding_first8"].as_array().unwrap().iter().enumerate() {
        for (j, w) in f64s(want).iter().enumerate() {
            assert!(
                (e[[i, j]] as f64 - w).abs() < 1e-4,
                "embedding[{i},{j}] {} vs {w}",
                e[[i, j]]
            );
        }
    }
    let cos: Array2<f32> = e.dot(&e.t());
    for (i, row) in g["cosine_similarity"]
        .as_array()
        .unwrap()
        .iter()
        .enumerate()
    {
        for (j, w) in f64s(row).iter().enumerate() {
            assert!(
                (cos[[i, j]] as f64 - w).abs() < 1e-4,
                "cosine[{i},{j}] {} vs {w}",
                cos[[i, j]]
            );
        }
    }
}

#[test]
fn smollm2_matches_golden_greedy_ids_and_nll() {
    let g = golden("golden_smollm2.json");
    let path = asset("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (llama, trainable, tok) = load_llama_gguf(&path, &no_lora(), 0).unwrap();
    let prompt = g["chat_prompt"].as_str().unwrap();
    let ids = tok.encode(prompt, true).unwrap().ids;
    let want_prompt: Vec<u32> = g["chat_prompt_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(ids, want_prompt);
    let out = llama.generate_greedy(&ids, 12, &[], &trainable).unwrap();
    let want: Vec<u32> = g["greedy_12_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    assert_eq!(out, want);
    assert_eq!(
        tok.decode(&out, true).unwrap(),
        g["greedy_12_text"].as_str().unwrap()
    );
    // mean next-token NLL of a sentence
    let text_ids: Vec<u32> = tok
        .encode(g["nll_text"].as_str().unwrap(), true)
        .unwrap()
        .ids;
    let n = text_ids.len();
    let ids = Array2::from_shape_vec((1, n), text_ids.clone()).unwrap();
    let labels = ids.mapv(|v| v as i64);
    let ce = llama
        .loss(
            ids.view(),
            labels.view(),
            None,
            &trainable,
            &Directions::none(trainable.len()),
            None,
        )
        .unwrap();
    let want_nll = g["mean_nll_nats"].as_f64().unwrap();
    assert!(
        (ce.loss as f64 - want_nll).abs() < 2e-3,
        "NLL {} vs {want_nll}",
        ce.loss
    );
    assert_eq!(ce.n_valid, n - 1);
}
