//! SmolLM2-135M with its weights kept packed (Q8_0 embeddings, Q4_1 projections, as stored in the
//! GGUF file) against the same model dequantised to dense f32 at load: the goldens hold for both
//! (greedy ids equal, NLL within the golden tolerance), the LM loss and its JVP along LoRA
//! directions agree to f32 rounding, the packed model is about 5× smaller, and merging adapters
//! widens only the adapted projections.

#[path = "common/assets.rs"]
mod assets;

use assets::{asset, golden};
use ndarray::{Array2, ArrayD, IxDyn};
use spry::models::WeightFormat;
use spry::models::pretrained::{load_llama_gguf_as, no_lora};
use spry::modules::{Directions, LoraConfig};
use spry::rng::{Domain, KeyedRng};

const GGUF: &str = "SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf";

#[test]
fn packed_and_dense_smollm2_match_the_goldens_and_each_other() {
    let g = golden("golden_smollm2.json");
    let path = asset(GGUF);
    let (packed, trainable, tok) =
        load_llama_gguf_as(&path, &no_lora(), 0, WeightFormat::Stored).unwrap();
    let (dense, _, _) = load_llama_gguf_as(&path, &no_lora(), 0, WeightFormat::Dense).unwrap();
    assert!(
        packed.frozen_bytes() * 4 < dense.frozen_bytes(),
        "packed {} vs dense {} bytes",
        packed.frozen_bytes(),
        dense.frozen_bytes()
    );

    let prompt = tok
        .encode(g["chat_prompt"].as_str().unwrap(), true)
        .unwrap()
        .ids;
    let want: Vec<u32> = g["greedy_12_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    for model in [&packed, &dense] {
        let out = model.generate_greedy(&prompt, 12, &[], &trainable).unwrap();
        assert_eq!(out, want);
    }

    let ids = tok
        .encode(g["nll_text"].as_str().unwrap(), true)
        .unwrap()
        .ids;
    let n = ids.len();
    let ids = Array2::from_shape_vec((1, n), ids).unwrap();
    let labels = ids.mapv(|v| v as i64);
    let none = Directions::none(trainable.len());
    let want_nll = g["mean_nll_nats"].as_f64().unwrap();
    let mut nll = Vec::new();
    for model in [&packed, &dense] {
        let ce = model
            .loss(ids.view(), labels.view(), None, &trainable, &none, None)
            .unwrap();
        assert!(
            (f64::from(ce.loss) - want_nll).abs() < 2e-3,
            "NLL {} vs {want_nll}",
            ce.loss
        );
        nll.push(ce.loss);
    }
    // the same products bit for bit; only the loss sums may round differently
    assert!((nll[0] - nll[1]).abs() <= 1e-5, "{nll:?}");
}

#[test]
fn packed_smollm2_jvp_equals_the_dense_one() {
    let path = asset(GGUF);
    let lora = LoraConfig::new(2, 4.0, 0.0, &["q_proj", "v_proj", "down_proj"]);
    let (packed, mut trainable, _) =
        load_llama_gguf_as(&path, &lora, 3, WeightFormat::Stored).unwrap();
    let (mut dense, _, _) = load_llama_gguf_as(&path, &lora, 3, WeightFormat::Dense).unwrap();
    // B = 0 at init: give every adapter values so that all LoRA terms are live
    let mut rng = KeyedRng::new(1, Domain::Data, &[]);
    for i in 0..trainable.len() {
        let mut v = trainable.value(i).clone();
        rng.fill_normal(v.as_slice_mut().unwrap());
        v *= 0.02;
        trainable.set_value(i, v).unwrap();
    }
    let k = 2;
    let per_param = (0..trainable.len())
        .map(|i| {
            let mut shape = vec![k];
            shape.extend_from_slice(trainable.value(i).shape());
            let mut d = ArrayD::<f32>::zeros(IxDyn(&shape));
            rng.fill_normal(d.as_slice_mut().unwrap());
            Some(d)
        })
        .collect();
    let dirs = Directions::new(&trainable, k, per_param).unwrap();
    let (b, t) = (2, 40);
    let ids = Array2::from_shape_fn((b, t), |(i, j)| (100 + 37 * i + 911 * j) as u32 % 49000);
    let mut labels = ids.mapv(i64::from);
    labels[[1, 5]] = -100;
    let run = |m: &spry::models::llama::Llama<f32>| {
        m.loss(ids.view(), labels.view(), None, &trainable, &dirs, None)
            .unwrap()
    };
    let (p, d) = (run(&packed), run(&dense));
    assert!(
        (p.loss - d.loss).abs() <= 1e-5 * d.loss.abs(),
        "{} vs {}",
        p.loss,
        d.loss
    );
    let (pj, dj) = (p.jvp.unwrap(), d.jvp.unwrap());
    let scale = dj.iter().fold(0.0f32, |a, x| a.max(x.abs()));
    for (a, b) in pj.iter().zip(&dj) {
        assert!((a - b).abs() <= 1e-3 * scale, "jvp {pj} vs {dj}");
    }

    // merging: the packed model widens its adapted projections and computes what the dense
    // merged model computes
    let mut packed = packed;
    let before = packed.frozen_bytes();
    packed.merge_adapters(&trainable).unwrap();
    dense.merge_adapters(&trainable).unwrap();
    assert!(!packed.has_adapters());
    assert!(packed.frozen_bytes() > before);
    let none = Directions::none(trainable.len());
    let pm = packed
        .loss(ids.view(), labels.view(), None, &trainable, &none, None)
        .unwrap();
    let dm = dense
        .loss(ids.view(), labels.view(), None, &trainable, &none, None)
        .unwrap();
    assert!((pm.loss - dm.loss).abs() <= 1e-5 * dm.loss.abs());
    assert!((pm.loss - p.loss).abs() <= 1e-4 * p.loss.abs());
}
