//! Real checkpoints against independent golden outputs (`tests/golden/`): sentence embeddings and
//! cosines of two BERT encoders (all-MiniLM-L6-v2, paraphrase-MiniLM-L3-v2), SmolLM2 greedy ids
//! and mean NLL.

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

/// Loads the BERT folder holding the asset `model_file` with spry and checks it against the golden
/// file `golden_name` (written by an independent numpy forward pass): token ids exactly, then
/// token 0's last hidden state, the mean-pooled L2-normalised embeddings and their cosines within
/// 1e-4, all from one padded batch of the golden sentences (padding must not change real tokens).
fn check_encoder_against_golden(model_file: &str, golden_name: &str) {
    let g = golden(golden_name);
    let dir = asset(model_file).parent().unwrap().to_path_buf();
    let (bert, trainable, tok) = load_bert_dir(
        &dir,
        &no_lora(),
        0,
        TokenizerOptions::default().with_max_len(256),
    )
    .unwrap();
    if let Some(arch) = g.get("architecture") {
        let c = bert.config();
        assert_eq!(arch["num_hidden_layers"], c.num_hidden_layers);
        assert_eq!(arch["hidden_size"], c.hidden_size);
        assert_eq!(arch["num_attention_heads"], c.num_attention_heads);
    }
    let sentences: Vec<&str> = g["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    let batch = tok.encode_batch(&sentences, true).unwrap();
    let golden_ids = g["input_ids"].as_array().unwrap();
    assert_eq!(golden_ids.len(), sentences.len());
    for (i, ids) in golden_ids.iter().enumerate() {
        let want: Vec<u32> = ids
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(&batch.ids.row(i).to_vec()[..want.len()], &want[..]);
        let real = batch.mask.row(i).iter().filter(|&&m| m).count();
        assert_eq!(real, want.len(), "sentence {i}: real tokens");
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
    let golden_cos = g["cosine_similarity"].as_array().unwrap();
    assert_eq!(golden_cos.len(), sentences.len());
    for (i, row) in golden_cos.iter().enumerate() {
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
fn minilm_matches_golden_embeddings_and_cosines() {
    check_encoder_against_golden("all-MiniLM-L6-v2/model.safetensors", "golden_minilm.json");
}

/// A second, shallower BERT checkpoint (3 layers instead of 6, other weights, a tokenizer.json
/// written by another `tokenizers` version), against golden values from `scripts/golden_encoder.py`.
#[test]
fn paraphrase_minilm_l3_matches_golden_embeddings_and_cosines() {
    check_encoder_against_golden(
        "paraphrase-MiniLM-L3-v2/model.safetensors",
        "golden_paraphrase_minilm_l3.json",
    );
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
