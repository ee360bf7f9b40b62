//! spry as a dependent sees it: public API only (`spry::...`, no test helpers), on the real
//! MiniLM checkpoint (`spry::io::asset` finds it through `$SPRY_ASSETS`, `./assets` or the
//! per-user cache). (a) Spry trains a 3-class classifier on a labelled file the test writes;
//! (b) a user's own planner and aggregation rule plug into the simulation; (c) a JVP of pooled
//! embeddings along a direction read from a PEFT folder, checked against finite differences.

use std::path::{Path, PathBuf};

use spry::data::{PartitionScheme, holdout, load_labelled_tsv};
use spry::federated::{Aggregator, FederatedTask, Method, Plan, Planner, SimConfig, Simulation};
use spry::models::bert::{BertBatch, BertClassifier, ClassifierOutput, Pooling};
use spry::models::pretrained::load_bert_classifier_dir;
use spry::modules::{
    Directions, DropoutKey, LoraConfig, Trainable, load_peft_tensors, save_peft_adapter,
};
use spry::ndarray::ArrayD;
use spry::tasks::{ClassificationTask, TextClassifier};
use spry::{Result, TextTokenizer, TokenizerOptions};

/// A scratch folder of this test process.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("spry-downstream-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A labelled file with 3 classes of 30 short texts each.
fn write_three_class_tsv(path: &Path) {
    let topics = [
        "sunny warm bright weather",
        "rain storm cold wind",
        "stock market price",
    ];
    let mut tsv = String::from("text\tlabel\n");
    for i in 0..90 {
        tsv.push_str(&format!("{} on day {i}\t{}\n", topics[i % 3], i % 3));
    }
    std::fs::write(path, tsv).unwrap();
}

/// LoRA r = 1 on query/value of MiniLM's top layer.
fn lora() -> LoraConfig {
    LoraConfig {
        layers_to_transform: Some(vec![5]),
        ..LoraConfig::new(1, 1.0, 0.0, &["query", "value"])
    }
}

fn minilm() -> Result<(BertClassifier<f32>, Trainable<f32>, TextTokenizer)> {
    let dir = spry::io::asset("all-MiniLM-L6-v2")?;
    let opts = TokenizerOptions::default().with_max_len(16);
    let (model, initial, tok) = load_bert_classifier_dir(&dir, &lora(), 3, 0, opts)?;
    Ok((model.with_pooling(Pooling::Mean), initial, tok))
}

#[test]
fn a_dependent_trains_spry_on_its_own_three_class_file() -> Result<()> {
    // --- setup as a dependent writes it ---
    let path = scratch("a").join("topics.tsv");
    write_three_class_tsv(&path);
    let (train, test) = holdout(load_labelled_tsv(&path, "text", "label", None)?, 0.2, 0)?;
    let (model, initial, tok) = minilm()?;
    let task = ClassificationTask::new(&model, &tok, train, test, &PartitionScheme::Iid, 6, 0)?;
    let config = SimConfig {
        rounds: 10,
        clients_per_round: 3,
        ..SimConfig::tuned_classifier(model.head_unit())
    };
    let mut sim = Simulation::new(config, initial.clone())?;
    sim.run(&task, None, |_| true)?;
    // --- end of setup ---
    let before = task.evaluate(&initial)?;
    let after = sim.evaluate_last(&task)?;
    assert!(
        after.loss < before.loss && after.accuracy > Some(0.9),
        "{before:?} -> {after:?}"
    );
    assert_eq!(sim.history.len(), 10);
    // the adapters moved (LoRA B of both units), not only the head
    let moved = |name: &str| {
        let i = sim
            .global
            .names()
            .iter()
            .position(|n| n.contains(name))
            .unwrap();
        sim.global.value(i) != initial.value(i)
    };
    assert!(moved("query.lora_B") && moved("value.lora_B") && moved("classifier.weight"));
    Ok(())
}

/// The user's planner: every client trains every unit (no splitting).
struct Everything;

impl Planner for Everything {
    fn name(&self) -> &'static str {
        "everything"
    }
    fn plan(&self, _round: u64, n_clients: usize, n_units: usize) -> Result<Plan> {
        Ok(Plan {
            units: vec![(0..n_units).collect(); n_clients],
        })
    }
}

/// The user's aggregation rule: a step of half the way to the round's averages.
struct HalfStep {
    rounds: u64,
}

impl Aggregator<f32> for HalfStep {
    fn apply(
        &mut self,
        global: &mut Trainable<f32>,
        averages: &[Option<ArrayD<f32>>],
    ) -> Result<()> {
        for (p, avg) in averages.iter().enumerate() {
            if let Some(avg) = avg {
                let next = (global.value(p) + avg) * 0.5;
                global.set_value(p, next)?;
            }
        }
        self.rounds += 1;
        Ok(())
    }
}

#[test]
fn a_dependent_plugs_in_its_own_planner_and_aggregator() -> Result<()> {
    let path = scratch("b").join("topics.tsv");
    write_three_class_tsv(&path);
    let (train, test) = holdout(load_labelled_tsv(&path, "text", "label", None)?, 0.2, 0)?;
    let (model, initial, tok) = minilm()?;
    let task = ClassificationTask::new(&model, &tok, train, test, &PartitionScheme::Iid, 6, 0)?;
    let config = SimConfig {
        method: Method::Spry,
        rounds: 2,
        clients_per_round: 2,
        ..SimConfig::tuned_classifier(model.head_unit())
    };
    let mut sim = Simulation::new(config, initial.clone())?
        .with_planner(Box::new(Everything))?
        .with_aggregator(Box::new(HalfStep { rounds: 0 }))?;
    // every sampled client gets every tensor
    let all: Vec<usize> = (0..initial.len()).collect();
    assert!(sim.assignments(0, 2)?.iter().all(|a| *a == all));
    sim.run(&task, None, |_| true)?;
    assert_eq!(sim.round, 2);
    assert!(sim.global != initial);
    Ok(())
}

#[test]
fn a_dependent_takes_a_jvp_of_pooled_embeddings_along_a_peft_adapter() -> Result<()> {
    let (model, initial, tok) = minilm()?;
    // a PEFT folder with non-zero values: the initial registry with every B set to 0.05
    let mut adapter = initial.clone();
    for i in 0..adapter.len() {
        if adapter.names()[i].contains("lora_B") {
            let b = adapter.value(i).mapv(|_| 0.05f32);
            adapter.set_value(i, b)?;
        }
    }
    let folder = scratch("c").join("adapter");
    save_peft_adapter(&folder, &lora(), &adapter)?;
    // the direction: the folder's tensors, read into a registry of the same model
    let mut direction = initial.clone();
    load_peft_tensors(&folder, &mut direction)?;
    let dirs = Directions::from_trainable(&initial, &direction)?;
    let batch: BertBatch = tok
        .encode_batch(&["a sunny day", "markets fell"], true)?
        .into();
    let pooled = model.bert().mean_pooled(&batch, &initial, &dirs)?;
    let jvp = pooled.direction(0).unwrap().to_owned();
    // central finite difference along the same direction
    let shifted = |h: f32| -> Result<_> {
        let mut t = initial.clone();
        for i in 0..t.len() {
            let v = initial.value(i) + &(direction.value(i) * h);
            t.set_value(i, v)?;
        }
        let none = Directions::none(t.len());
        Ok(model.bert().mean_pooled(&batch, &t, &none)?.into_primal())
    };
    let h = 1e-2;
    let fd = (shifted(h)? - shifted(-h)?) / (2.0 * h);
    let err = (&fd - &jvp).mapv(|x| x * x).sum().sqrt() / fd.mapv(|x| x * x).sum().sqrt();
    assert!(err < 1e-2, "relative error {err}");
    assert!(jvp.iter().any(|x| x.abs() > 1e-4));
    Ok(())
}

/// A user's model that forgets the loss.
struct NoLoss;

impl TextClassifier for NoLoss {
    type Input = BertBatch;
    fn classify(
        &self,
        input: &BertBatch,
        _labels: Option<&[i64]>,
        _params: &Trainable<f32>,
        _dirs: &Directions<f32>,
        _dropout: Option<&DropoutKey>,
    ) -> Result<ClassifierOutput<f32>> {
        let b = input.ids.nrows();
        Ok(ClassifierOutput {
            logits: spry::ndarray::Array2::zeros((b, 3)),
            loss: None,
            features: spry::ndarray::Array2::zeros((b, 4)),
            exact: Vec::new(),
        })
    }
    fn head_params(&self) -> (usize, usize) {
        (0, 1)
    }
}

#[test]
fn a_classifier_without_a_loss_is_a_typed_error() -> Result<()> {
    let path = scratch("d").join("topics.tsv");
    write_three_class_tsv(&path);
    let (train, test) = holdout(load_labelled_tsv(&path, "text", "label", None)?, 0.2, 0)?;
    let (_, initial, tok) = minilm()?;
    let task = ClassificationTask::new(&NoLoss, &tok, train, test, &PartitionScheme::Iid, 6, 0)?;
    assert!(matches!(
        task.evaluate(&initial),
        Err(spry::Error::InvalidArgument { .. })
    ));
    Ok(())
}
