//! What the `embed` and `generate` examples print, through the library functions they call, on
//! the real assets: MiniLM cosines against the golden file, SmolLM2's greedy answer, and a PEFT
//! adapter applied before generating.

#[path = "common/assets.rs"]
mod assets;

use assets::{asset, golden};
use spry::Error;
use spry::models::pretrained::{
    BERT_DIR_FILES, cosine_matrix, load_llama_gguf, load_llama_gguf_with_adapter, no_lora,
    require_files,
};
use spry::modules::{LoraConfig, save_peft_adapter};
use spry::recipes::bundled::{chat_complete, chat_prompt, load_sentence_encoder};

#[test]
fn embed_prints_the_golden_cosines() {
    let g = golden("golden_minilm.json");
    let dir = asset("all-MiniLM-L6-v2/model.safetensors")
        .parent()
        .unwrap()
        .to_path_buf();
    let (bert, trainable, tok) = load_sentence_encoder(&dir).unwrap();
    let sentences: Vec<String> = g["sentences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect();
    let cos = cosine_matrix(&bert, &trainable, &tok, &sentences).unwrap();
    let want = g["cosine_similarity"].as_array().unwrap();
    assert_eq!(cos.dim(), (want.len(), want.len()));
    for (i, row) in want.iter().enumerate() {
        for (j, w) in row.as_array().unwrap().iter().enumerate() {
            let w = w.as_f64().unwrap();
            let got = cos[[i, j]] as f64;
            assert!((got - w).abs() < 1e-4, "cosine[{i},{j}] {got} vs {w}");
        }
    }
    // one sentence alone gives the same similarity to itself; none is an error
    let one = cosine_matrix(&bert, &trainable, &tok, &sentences[..1]).unwrap();
    assert!((one[[0, 0]] - 1.0).abs() < 1e-5);
    assert!(cosine_matrix::<&str>(&bert, &trainable, &tok, &[]).is_err());
}

#[test]
fn missing_assets_say_how_to_fetch_them() {
    let dir = std::env::temp_dir().join(format!("spry-no-assets-{}", std::process::id()));
    let Err(err) = load_sentence_encoder(&dir) else {
        panic!("loaded a model from an empty folder");
    };
    let msg = err.to_string();
    assert!(matches!(err, Error::Io { .. }), "{msg}");
    assert!(msg.contains("scripts/fetch_assets.sh"), "{msg}");
    assert!(msg.contains("config.json"), "{msg}");
    assert!(require_files(&dir, &BERT_DIR_FILES).is_err());
}

#[test]
fn generate_answers_the_golden_text_with_and_without_an_adapter() {
    let g = golden("golden_smollm2.json");
    let question = "What is the capital of France?";
    assert_eq!(chat_prompt(question), g["chat_prompt"].as_str().unwrap());
    let path = asset("SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf");
    let (model, trainable, tok) = load_llama_gguf(&path, &no_lora(), 0).unwrap();
    let out = chat_complete(&model, &trainable, &tok, question, 64).unwrap();
    // the golden greedy ids up to and including the first <|im_end|>
    let golden_ids: Vec<u32> = g["greedy_12_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let im_end = tok.token_to_id("<|im_end|>").unwrap();
    let stop = golden_ids.iter().position(|&t| t == im_end).unwrap();
    assert_eq!(out.ids, golden_ids[..=stop]);
    assert_eq!(out.prompt_tokens, 16);
    assert!(
        out.text.starts_with("The capital of France is Paris"),
        "{:?}",
        out.text
    );
    let golden_text = g["greedy_12_text"].as_str().unwrap();
    assert!(golden_text.starts_with(&out.text), "{golden_text:?}");
    drop(model);

    // a freshly initialised PEFT adapter (B = 0) on q_proj/v_proj changes nothing
    let dir = std::env::temp_dir().join(format!("spry-smollm2-adapter-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let lora = LoraConfig {
        task_type: Some("CAUSAL_LM".into()),
        ..LoraConfig::new(2, 4.0, 0.0, &["q_proj", "v_proj"])
    };
    let (adapted, fresh, _) = load_llama_gguf(&path, &lora, 5).unwrap();
    assert_eq!(fresh.units().len(), 2 * 30);
    save_peft_adapter(&dir, &lora, &fresh).unwrap();
    drop(adapted);
    let (mut model, trainable, tok) = load_llama_gguf_with_adapter(&path, &dir).unwrap();
    assert_eq!(model.lora().target_modules, ["q_proj", "v_proj"]);
    assert_eq!(trainable.values(), fresh.values());
    assert_eq!(
        trainable.names()[0],
        "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    );
    model.merge_adapters(&trainable).unwrap();
    let with_adapter = chat_complete(&model, &trainable, &tok, question, 64).unwrap();
    assert_eq!(with_adapter, out);
    let _ = std::fs::remove_dir_all(&dir);
}
