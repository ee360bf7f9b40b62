//! `spry_flwr_native`: spry's federated client step and server aggregation for Python.
//!
//! Two classes over one experiment (a `ClassificationRun` config file, the same file the
//! in-process `federated` example reads):
//!
//! - [`Experiment`]: the model with its adapters, the data and the seeded partition, loaded the
//!   way the in-process run loads them; a node's side (the client step on one client's data,
//!   per epoch or per iteration), evaluation and adapter files;
//! - [`Server`]: the same plus a [`Simulation`] whose rounds close from replies gathered
//!   elsewhere: the plan of a round, per-unit validation and aggregation with the server
//!   optimizer's state, the per-iteration replay, and the run's files (`config.json`,
//!   `metrics.csv`, `checkpoint.json`, `adapter/`, `adapter-best/`, `summary.json`).
//!
//! Tensors cross as numpy float32 arrays keyed by their PEFT names: read-only views on the way
//! in (one copy into the model's own storage), arrays that take over the Rust buffer on the way
//! out. Every Rust error is raised as `SpryError` with the core's message.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use numpy::{PyArrayDyn, PyReadonlyArrayDyn};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use spry::data::{Example, Partition};
use spry::federated::{
    ClientStep, ClientUpdate, Evaluation, FederatedTask, IterationRound, JvpReply, OptimizerState,
    RoundPlan, SimConfig, Simulation, client_jvp_step, client_step, iteration_steps, metrics_csv,
    validate_update,
};
use spry::models::bert::{BertClassifier, ClassifierConfig};
use spry::models::pretrained::save_bert_classifier;
use spry::modules::{LoraConfig, Trainable, load_peft_adapter};
use spry::recipes::classification::ClassificationRun;
use spry::recipes::config::{merge_config, record_settings};
use spry::tasks::ClassificationTask;
use spry::{Error, TextTokenizer};

create_exception!(
    spry_flwr_native,
    SpryError,
    PyException,
    "An error of spry's Rust core; the message is the core's own."
);

fn py_err(e: Error) -> PyErr {
    SpryError::new_err(e.to_string())
}

type PyResult2<T> = Result<T, PyErr>;

/// Settings from a config file (TOML or JSON; `None`: the defaults) with JSON overrides on top
/// (`{"rounds": 3}`), unknown keys refused as the file's are.
fn settings(config: Option<&str>, overrides: Option<&str>) -> spry::Result<ClassificationRun> {
    let base = match config {
        Some(path) if !path.is_empty() => {
            merge_config(Path::new(path), &ClassificationRun::default(), |_| false)?
        }
        _ => ClassificationRun::default(),
    };
    let Some(text) = overrides.filter(|t| !t.trim().is_empty()) else {
        return Ok(base);
    };
    let bad = |msg: String| Error::invalid("overrides", msg);
    let extra: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let serde_json::Value::Object(extra) = extra else {
        return Err(bad("a JSON object of settings".into()));
    };
    let mut value = serde_json::to_value(&base).map_err(|e| bad(e.to_string()))?;
    for (k, v) in extra {
        value[k] = v;
    }
    serde_json::from_value(value).map_err(|e| bad(e.to_string()))
}

/// The task's data, kept while no task borrows the model.
struct TaskData {
    train: Vec<Example>,
    test: Vec<Example>,
    client_train: Partition,
    client_test: Partition,
}

/// One experiment loaded: what the in-process run loads, owned.
struct Session {
    settings: ClassificationRun,
    config: SimConfig,
    model: BertClassifier<f32>,
    tokenizer: TextTokenizer,
    lora: LoraConfig,
    saved: ClassifierConfig,
    initial: Trainable<f32>,
    data: TaskData,
}

impl Session {
    fn load(settings: ClassificationRun) -> spry::Result<Self> {
        let loaded = settings.load()?;
        let task = ClassificationTask::new(
            &loaded.model,
            &loaded.tokenizer,
            loaded.train,
            loaded.eval,
            &loaded.scheme,
            settings.clients,
            settings.seed,
        )?;
        let data = TaskData {
            train: task.train,
            test: task.test,
            client_train: task.client_train,
            client_test: task.client_test,
        };
        Ok(Session {
            settings,
            config: loaded.config,
            model: loaded.model,
            tokenizer: loaded.tokenizer,
            lora: loaded.lora,
            saved: loaded.saved,
            initial: loaded.initial,
            data,
        })
    }

    /// Runs `f` with the task over this session's model and data (the data lent, then put
    /// back).
    fn with_task<R>(
        &mut self,
        f: impl FnOnce(&ClassificationTask<'_>, &SimConfig, &Trainable<f32>) -> R,
    ) -> R {
        let data = std::mem::replace(
            &mut self.data,
            TaskData {
                train: Vec::new(),
                test: Vec::new(),
                client_train: Vec::new(),
                client_test: Vec::new(),
            },
        );
        let task = ClassificationTask {
            model: &self.model,
            tokenizer: &self.tokenizer,
            train: data.train,
            test: data.test,
            client_train: data.client_train,
            client_test: data.client_test,
            seed: self.settings.seed,
            eval_batch: ClassificationTask::<BertClassifier<f32>>::EVAL_BATCH,
        };
        let out = f(&task, &self.config, &self.initial);
        self.data = TaskData {
            train: task.train,
            test: task.test,
            client_train: task.client_train,
            client_test: task.client_test,
        };
        out
    }

    fn index(&self, name: &str) -> spry::Result<usize> {
        self.initial
            .index_of(name)
            .ok_or_else(|| Error::invalid("spry_flwr", format!("unknown tensor `{name}`")))
    }

    fn indices(&self, names: &[String]) -> spry::Result<Vec<usize>> {
        names.iter().map(|n| self.index(n)).collect()
    }

    fn names_of(&self, idx: &[usize]) -> Vec<String> {
        idx.iter()
            .map(|&p| self.initial.names()[p].clone())
            .collect()
    }

    /// The initial tensors with `arrays` put in place (every one checked for its shape).
    fn trainable_from(
        &self,
        arrays: Vec<(usize, ndarray_d::ArrayD<f32>)>,
    ) -> spry::Result<Trainable<f32>> {
        let mut t = self.initial.clone();
        for (p, v) in arrays {
            t.set_value(p, v)?;
        }
        Ok(t)
    }
}

use spry::ndarray as ndarray_d;

/// numpy arrays keyed by name → (index, owned array).
fn arrays_in(
    session: &Session,
    arrays: BTreeMap<String, PyReadonlyArrayDyn<'_, f32>>,
) -> spry::Result<Vec<(usize, ndarray_d::ArrayD<f32>)>> {
    arrays
        .into_iter()
        .map(|(name, a)| Ok((session.index(&name)?, a.as_array().to_owned())))
        .collect()
}

/// (index, array) → {name: numpy array}, the buffers handed over without a copy.
fn arrays_out<'py>(
    py: Python<'py>,
    session: &Session,
    arrays: Vec<(usize, ndarray_d::ArrayD<f32>)>,
) -> BTreeMap<String, Bound<'py, PyArrayDyn<f32>>> {
    arrays
        .into_iter()
        .map(|(p, a)| {
            (
                session.initial.names()[p].clone(),
                PyArrayDyn::from_owned_array(py, a),
            )
        })
        .collect()
}

fn eval_json(e: &Evaluation) -> String {
    serde_json::json!({"loss": e.loss, "accuracy": e.accuracy, "n": e.n}).to_string()
}

/// One experiment: model with LoRA, data and partition, loaded from a config file the way the
/// in-process run loads them. A node's side of a round.
#[pyclass(unsendable, module = "spry_flwr_native")]
struct Experiment {
    session: Session,
}

#[pymethods]
impl Experiment {
    /// Loads the experiment of `config` (a TOML or JSON `ClassificationRun` file; `None`: the
    /// defaults) with `overrides` (a JSON object of settings) on top.
    #[new]
    #[pyo3(signature = (config=None, overrides=None))]
    fn new(py: Python<'_>, config: Option<String>, overrides: Option<String>) -> PyResult2<Self> {
        let session = py
            .detach(|| settings(config.as_deref(), overrides.as_deref()).and_then(Session::load))
            .map_err(py_err)?;
        Ok(Experiment { session })
    }

    /// The effective settings as JSON (what `config.json` records).
    #[getter]
    fn settings_json(&self) -> String {
        serde_json::to_string(&self.session.settings).unwrap_or_default()
    }

    /// Number of (logical) clients the data is partitioned into.
    #[getter]
    fn n_clients(&self) -> usize {
        self.session.data.client_train.len()
    }

    /// The trainable tensors' names in registry order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.session.initial.names().to_vec()
    }

    /// The trainable tensors' shapes, by name.
    #[getter]
    fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        let t = &self.session.initial;
        (0..t.len())
            .map(|p| (t.names()[p].clone(), t.value(p).shape().to_vec()))
            .collect()
    }

    /// The units (what the planner assigns): the names of each unit's tensors.
    #[getter]
    fn units(&self) -> Vec<Vec<String>> {
        let t = &self.session.initial;
        t.units()
            .iter()
            .map(|u| u.params.clone().map(|p| t.names()[p].clone()).collect())
            .collect()
    }

    /// Communication mode: `per-epoch` or `per-iteration`.
    #[getter]
    fn comm(&self) -> String {
        self.session.settings.comm.to_string()
    }

    /// The initial trainable tensors (seeded LoRA and head).
    fn initial_arrays<'py>(
        &self,
        py: Python<'py>,
    ) -> BTreeMap<String, Bound<'py, PyArrayDyn<f32>>> {
        let t = &self.session.initial;
        let all = (0..t.len()).map(|p| (p, t.value(p).clone())).collect();
        arrays_out(py, &self.session, all)
    }

    /// The clients a node hosts: those `c` with `c % num_partitions == partition_id`.
    fn shard_clients(&self, partition_id: usize, num_partitions: usize) -> PyResult2<Vec<u64>> {
        if num_partitions == 0 || partition_id >= num_partitions {
            return Err(py_err(Error::invalid(
                "shard_clients",
                format!("partition {partition_id} of {num_partitions}"),
            )));
        }
        Ok((0..self.n_clients() as u64)
            .filter(|c| *c as usize % num_partitions == partition_id)
            .collect())
    }

    /// The per-epoch client step: `client` trains the global tensors `arrays` (every trainable
    /// tensor, by name) on its own batches of `round`, on the tensors `assigned`; returns
    /// `{"arrays": {name: array} (the assigned ones), "n_examples", "loss", "skipped"}`.
    fn client_train<'py>(
        &mut self,
        py: Python<'py>,
        round: u64,
        client: u64,
        assigned: Vec<String>,
        arrays: BTreeMap<String, PyReadonlyArrayDyn<'py, f32>>,
    ) -> PyResult2<Bound<'py, pyo3::types::PyDict>> {
        let s = &mut self.session;
        let params = s.indices(&assigned).map_err(py_err)?;
        let global = arrays_in(s, arrays)
            .and_then(|a| s.trainable_from(a))
            .map_err(py_err)?;
        let n = global.len();
        let step = s
            .with_task(|task, cfg, _| {
                client_step(
                    cfg,
                    task,
                    &global,
                    round,
                    client,
                    &params,
                    OptimizerState::new(n),
                )
            })
            .map_err(py_err)?;
        let out = pyo3::types::PyDict::new(py);
        out.set_item("arrays", arrays_out(py, s, step.update.params))?;
        out.set_item("n_examples", step.update.n_examples)?;
        out.set_item("loss", step.loss)?;
        out.set_item("skipped", step.skipped)?;
        Ok(out)
    }

    /// The per-iteration client step: one dual pass of `client` over the global `arrays` on its
    /// batch of `step` in `round`; `{"jvp": array [K], "exact": {name: gradient},
    /// "n_examples", "loss"}`, or `None` when the client has no data.
    fn client_jvp<'py>(
        &mut self,
        py: Python<'py>,
        round: u64,
        step: u64,
        client: u64,
        assigned: Vec<String>,
        arrays: BTreeMap<String, PyReadonlyArrayDyn<'py, f32>>,
    ) -> PyResult2<Option<Bound<'py, pyo3::types::PyDict>>> {
        let s = &mut self.session;
        let params = s.indices(&assigned).map_err(py_err)?;
        let global = arrays_in(s, arrays)
            .and_then(|a| s.trainable_from(a))
            .map_err(py_err)?;
        let reply = s
            .with_task(|task, cfg, _| {
                client_jvp_step(cfg, task, &global, round, step, client, &params)
            })
            .map_err(py_err)?;
        let Some(r) = reply else { return Ok(None) };
        let out = pyo3::types::PyDict::new(py);
        out.set_item(
            "jvp",
            PyArrayDyn::from_owned_array(
                py,
                ndarray_d::ArrayD::from_shape_vec(vec![r.jvp.len()], r.jvp).expect("1-D"),
            ),
        )?;
        out.set_item("exact", arrays_out(py, s, r.exact))?;
        out.set_item("n_examples", r.n_examples)?;
        out.set_item("loss", r.loss)?;
        Ok(Some(out))
    }

    /// Number of steps of a per-iteration round with these active clients.
    fn iteration_steps(&mut self, round: u64, clients: Vec<u64>) -> PyResult2<usize> {
        self.session
            .with_task(|task, cfg, _| iteration_steps(cfg, task, round, &clients))
            .map_err(py_err)
    }

    /// Loss and accuracy of the global `arrays` on the evaluation set, as JSON.
    fn evaluate(
        &mut self,
        arrays: BTreeMap<String, PyReadonlyArrayDyn<'_, f32>>,
    ) -> PyResult2<String> {
        let s = &mut self.session;
        let global = arrays_in(s, arrays)
            .and_then(|a| s.trainable_from(a))
            .map_err(py_err)?;
        let e = s
            .with_task(|task, _, _| task.evaluate(&global))
            .map_err(py_err)?;
        Ok(eval_json(&e))
    }

    /// Writes `arrays` (every trainable tensor) as a classifier adapter folder (PEFT format plus
    /// `classifier_config.json`), as the in-process run writes `adapter/`.
    fn save_adapter(
        &self,
        dir: PathBuf,
        arrays: BTreeMap<String, PyReadonlyArrayDyn<'_, f32>>,
    ) -> PyResult2<()> {
        let s = &self.session;
        let t = arrays_in(s, arrays)
            .and_then(|a| s.trainable_from(a))
            .map_err(py_err)?;
        save_bert_classifier(&dir, &s.lora, &t, &s.saved).map_err(py_err)
    }

    /// Reads an adapter folder's tensors (checked against this model) by name.
    fn load_adapter<'py>(
        &self,
        py: Python<'py>,
        dir: PathBuf,
    ) -> PyResult2<BTreeMap<String, Bound<'py, PyArrayDyn<f32>>>> {
        let s = &self.session;
        let mut t = s.initial.clone();
        load_peft_adapter(&dir, &s.lora, &mut t).map_err(py_err)?;
        let all = (0..t.len()).map(|p| (p, t.value(p).clone())).collect();
        Ok(arrays_out(py, s, all))
    }
}

/// The server of a run whose clients are elsewhere: plans rounds, validates and aggregates the
/// replies per tensor with the server optimizer (its state kept across rounds and in
/// `checkpoint.json`), evaluates, and writes the in-process run's files into `out_dir`.
#[pyclass(unsendable, module = "spry_flwr_native")]
struct Server {
    session: Session,
    sim: Simulation<f32>,
    out: PathBuf,
    before: Evaluation,
    best: f64,
    plan: Option<RoundPlan<f32>>,
    iteration: Option<IterationRound<f32>>,
    started: std::time::Instant,
}

impl Server {
    /// The pending plan of the current round.
    fn plan_ref(&self) -> spry::Result<&RoundPlan<f32>> {
        self.plan
            .as_ref()
            .or(self.iteration.as_ref().map(|it| &it.plan))
            .ok_or_else(|| Error::invalid("Server", "no round planned: call plan() first"))
    }

    /// A reply dict → a client update (names → indices; an unknown name is a rejection).
    fn update_from(
        &self,
        client: u64,
        round: u64,
        n_examples: u64,
        arrays: BTreeMap<String, PyReadonlyArrayDyn<'_, f32>>,
    ) -> spry::Result<ClientUpdate<f32>> {
        let params = arrays
            .into_iter()
            .map(|(name, a)| {
                let p = self
                    .session
                    .index(&name)
                    .map_err(|_| Error::RejectedUpdate {
                        client,
                        round,
                        reason: format!("unknown parameter `{name}`"),
                    })?;
                Ok((p, a.as_array().to_owned()))
            })
            .collect::<spry::Result<_>>()?;
        Ok(ClientUpdate {
            client,
            round,
            n_examples,
            params,
        })
    }

    /// metrics.csv, checkpoint.json and adapter-best/ after a round.
    fn after_round(&mut self) -> spry::Result<()> {
        let io = |path: PathBuf| move |source| Error::Io { source, path };
        let path = self.out.join("metrics.csv");
        std::fs::write(&path, metrics_csv(&self.sim.history)).map_err(io(path.clone()))?;
        if let Some(a) = self
            .sim
            .history
            .last()
            .and_then(|m| m.test)
            .and_then(|t| t.accuracy)
            && a > self.best
        {
            self.best = a;
            let s = &self.session;
            save_bert_classifier(
                &self.out.join("adapter-best"),
                &s.lora,
                &self.sim.global,
                &s.saved,
            )?;
        }
        self.sim.save_checkpoint(&self.out.join("checkpoint.json"))
    }

    fn wall_s(&self, offset: f64) -> f64 {
        offset + self.started.elapsed().as_secs_f64()
    }
}

#[pymethods]
impl Server {
    /// Loads the experiment as [`Experiment`] does, records its settings in
    /// `out_dir/config.json` (on `resume`, checks them against it and continues from
    /// `out_dir/checkpoint.json`), and evaluates the initial model.
    #[new]
    #[pyo3(signature = (out_dir, config=None, overrides=None, resume=false))]
    fn new(
        py: Python<'_>,
        out_dir: PathBuf,
        config: Option<String>,
        overrides: Option<String>,
        resume: bool,
    ) -> PyResult2<Self> {
        let loaded = py.detach(|| -> spry::Result<Session> {
            let settings = settings(config.as_deref(), overrides.as_deref())?;
            std::fs::create_dir_all(&out_dir).map_err(|source| Error::Io {
                source,
                path: out_dir.clone(),
            })?;
            record_settings(&out_dir, &settings, resume)?;
            Session::load(settings)
        });
        (|| -> spry::Result<Server> {
            let mut session = loaded?;
            let ckpt = out_dir.join("checkpoint.json");
            let sim = if resume && ckpt.is_file() {
                let c = Simulation::<f32>::load_checkpoint(&ckpt)?;
                Simulation::resume(&session.config, session.initial.clone(), c)?
            } else {
                Simulation::new(session.config.clone(), session.initial.clone())?
            };
            let before = session.with_task(|task, _, _| task.evaluate(&sim.global))?;
            let best = sim
                .history
                .iter()
                .filter_map(|m| m.test.and_then(|t| t.accuracy))
                .fold(f64::NEG_INFINITY, f64::max);
            Ok(Server {
                session,
                sim,
                out: out_dir,
                before,
                best,
                plan: None,
                iteration: None,
                started: std::time::Instant::now(),
            })
        })()
        .map_err(py_err)
    }

    /// Rounds completed.
    #[getter]
    fn round(&self) -> u64 {
        self.sim.round
    }

    /// Rounds configured.
    #[getter]
    fn rounds(&self) -> u64 {
        self.sim.config.rounds
    }

    /// `per-epoch` or `per-iteration`.
    #[getter]
    fn comm(&self) -> String {
        self.session.settings.comm.to_string()
    }

    /// Number of (logical) clients.
    #[getter]
    fn n_clients(&self) -> usize {
        self.session.data.client_train.len()
    }

    /// The trainable tensors' names in registry order.
    #[getter]
    fn names(&self) -> Vec<String> {
        self.session.initial.names().to_vec()
    }

    /// The effective settings as JSON.
    #[getter]
    fn settings_json(&self) -> String {
        serde_json::to_string(&self.session.settings).unwrap_or_default()
    }

    /// Seconds of training in earlier segments of a resumed run (0 for a fresh one).
    #[getter]
    fn wall_offset(&self) -> f64 {
        self.sim.history.last().map_or(0.0, |m| m.wall_s)
    }

    /// The global tensors (`names`: only these), by name.
    #[pyo3(signature = (names=None))]
    fn arrays<'py>(
        &self,
        py: Python<'py>,
        names: Option<Vec<String>>,
    ) -> PyResult2<BTreeMap<String, Bound<'py, PyArrayDyn<f32>>>> {
        let g = &self.sim.global;
        let idx = match names {
            Some(n) => self.session.indices(&n).map_err(py_err)?,
            None => (0..g.len()).collect(),
        };
        let all = idx.into_iter().map(|p| (p, g.value(p).clone())).collect();
        Ok(arrays_out(py, &self.session, all))
    }

    /// Plans the next round (sampling, dropouts, assignment, diagnostics' probe) and keeps the
    /// plan: `{"round", "sampled": [client], "dropped": [client], "assigned": {client: [name]}}`
    /// as JSON.
    fn plan(&mut self) -> PyResult2<String> {
        if self.sim.round >= self.sim.config.rounds {
            return Err(py_err(Error::invalid(
                "Server::plan",
                "every round has run",
            )));
        }
        let sim = &self.sim;
        let plan = self
            .session
            .with_task(|task, _, _| sim.plan_round(task))
            .map_err(py_err)?;
        let assigned: BTreeMap<String, Vec<String>> = plan
            .sampled
            .iter()
            .zip(&plan.assigned)
            .map(|(c, a)| (c.to_string(), self.session.names_of(a)))
            .collect();
        let json = serde_json::json!({
            "round": plan.round,
            "sampled": plan.sampled,
            "dropped": plan.dropped,
            "assigned": assigned,
        });
        self.plan = Some(plan);
        self.iteration = None;
        Ok(json.to_string())
    }

    /// Checks one reply of the planned round without keeping it (the core's validation:
    /// round, sampled client, assignment, shapes, finiteness, example count); raises
    /// `SpryError` with the reason.
    fn validate(
        &self,
        client: u64,
        round: u64,
        n_examples: u64,
        arrays: BTreeMap<String, PyReadonlyArrayDyn<'_, f32>>,
    ) -> PyResult2<()> {
        let plan = self.plan_ref().map_err(py_err)?;
        let u = self
            .update_from(client, round, n_examples, arrays)
            .map_err(py_err)?;
        validate_update(
            &u,
            &plan.expectation(),
            &self.sim.global,
            &Default::default(),
        )
        .map_err(py_err)
    }

    /// Closes the planned per-epoch round with the replies that came: a list of
    /// `(client, round, n_examples, loss, skipped, {name: array})`. Each is validated and the
    /// valid ones averaged per tensor over the clients that sent it, then the server optimizer
    /// steps; the rest are dropped with their reason. Evaluates when due and writes
    /// `metrics.csv`, `checkpoint.json`, `adapter-best/`. Returns JSON: `{"metrics": the round's
    /// row, "accepted": [client], "rejected": [[client, reason]], "failed": reason or null}`.
    #[pyo3(signature = (replies, wall_offset=0.0, dropped=Vec::new()))]
    #[allow(clippy::type_complexity)]
    fn close_round<'py>(
        &mut self,
        replies: Vec<(
            u64,
            u64,
            u64,
            f64,
            usize,
            BTreeMap<String, PyReadonlyArrayDyn<'py, f32>>,
        )>,
        wall_offset: f64,
        dropped: Vec<(u64, String)>,
    ) -> PyResult2<String> {
        let plan = self
            .plan
            .take()
            .ok_or_else(|| py_err(Error::invalid("Server::close_round", "no round planned")))?;
        let mut steps = Vec::new();
        let mut malformed = dropped;
        for (client, round, n_examples, loss, skipped, arrays) in replies {
            match self.update_from(client, round, n_examples, arrays) {
                Ok(update) => steps.push(ClientStep {
                    update,
                    state: OptimizerState::new(0),
                    loss,
                    skipped,
                }),
                Err(e) => malformed.push((client, e.to_string())),
            }
        }
        let wall = self.wall_s(wall_offset);
        let sim = &mut self.sim;
        let (m, report) = self
            .session
            .with_task(|task, _, _| sim.close_round(task, plan, steps, wall))
            .map_err(py_err)?;
        if !malformed.is_empty()
            && let Some(last) = self.sim.history.last_mut()
        {
            last.rejected += malformed.len();
        }
        self.after_round().map_err(py_err)?;
        let (accepted, mut rejected) = match report {
            Some(r) => (r.accepted, r.rejected),
            None => (Vec::new(), Vec::new()),
        };
        rejected.extend(malformed);
        let m = self.sim.history.last().cloned().unwrap_or(m);
        Ok(serde_json::json!({
            "metrics": m,
            "accepted": accepted,
            "rejected": rejected,
            "failed": m.failed,
        })
        .to_string())
    }

    /// Starts the planned round in per-iteration mode; returns its number of steps (0 and a
    /// failed round when too few clients are active).
    fn begin_iteration(&mut self, wall_offset: f64) -> PyResult2<usize> {
        let plan = self.plan.take().ok_or_else(|| {
            py_err(Error::invalid(
                "Server::begin_iteration",
                "no round planned",
            ))
        })?;
        let sim = &mut self.sim;
        match self
            .session
            .with_task(|task, _, _| sim.begin_iteration(task, plan))
        {
            Ok(it) => {
                let steps = it.steps;
                self.iteration = Some(it);
                Ok(steps)
            }
            Err(Error::Round { reason, .. }) => {
                let wall = self.wall_s(wall_offset);
                self.sim.fail_round(reason, wall);
                self.after_round().map_err(py_err)?;
                Ok(0)
            }
            Err(e) => Err(py_err(e)),
        }
    }

    /// One per-iteration step from the replies that came: a list of `(client, n_examples, loss,
    /// jvp [K], {name: exact gradient})`. Validated, replayed from the seed, averaged per
    /// tensor, stepped. Returns JSON `{"step", "changed": [name], "rejected": [[client,
    /// reason]]}`: the tensors the nodes must update to follow the global state.
    #[pyo3(signature = (replies, dropped=Vec::new()))]
    #[allow(clippy::type_complexity)]
    fn iteration_step<'py>(
        &mut self,
        replies: Vec<(
            u64,
            usize,
            f64,
            PyReadonlyArrayDyn<'py, f32>,
            BTreeMap<String, PyReadonlyArrayDyn<'py, f32>>,
        )>,
        dropped: Vec<(u64, String)>,
    ) -> PyResult2<String> {
        let mut it = self
            .iteration
            .take()
            .ok_or_else(|| py_err(Error::invalid("Server::iteration_step", "no round begun")))?;
        let mut parsed = Vec::new();
        let mut malformed = dropped;
        for (client, n_examples, loss, jvp, exact) in replies {
            let exact: spry::Result<Vec<_>> = exact
                .into_iter()
                .map(|(n, g)| Ok((self.session.index(&n)?, g.as_array().to_owned())))
                .collect();
            let jvp = jvp.as_array();
            match exact {
                Ok(exact) if jvp.ndim() == 1 => parsed.push(JvpReply {
                    client,
                    jvp: jvp.iter().copied().collect(),
                    exact,
                    n_examples,
                    loss,
                }),
                Ok(_) => malformed.push((client, format!("JVPs of shape {:?}", jvp.shape()))),
                Err(e) => malformed.push((client, e.to_string())),
            }
        }
        let step = it.step;
        let sim = &mut self.sim;
        let out = self
            .session
            .with_task(|task, _, _| sim.iteration_step(task, &mut it, parsed));
        self.iteration = Some(it);
        let (changed, mut rejected) = out.map_err(py_err)?;
        if let Some(it) = self.iteration.as_mut() {
            it.add_rejected(malformed.len());
        }
        rejected.extend(malformed);
        Ok(serde_json::json!({
            "step": step,
            "changed": self.session.names_of(&changed),
            "rejected": rejected,
        })
        .to_string())
    }

    /// Ends the per-iteration round: evaluates when due, writes the files; the round's metrics
    /// as JSON.
    #[pyo3(signature = (wall_offset=0.0))]
    fn close_iteration(&mut self, wall_offset: f64) -> PyResult2<String> {
        let it = self
            .iteration
            .take()
            .ok_or_else(|| py_err(Error::invalid("Server::close_iteration", "no round begun")))?;
        let wall = self.wall_s(wall_offset);
        let sim = &mut self.sim;
        let m = self
            .session
            .with_task(|task, _, _| sim.close_iteration(task, it, wall))
            .map_err(py_err)?;
        self.after_round().map_err(py_err)?;
        Ok(serde_json::to_string(&m).unwrap_or_default())
    }

    /// Ends the run: the last state evaluated, `metrics.csv`, `adapter/` and `summary.json`
    /// written as the in-process run writes them; the summary as JSON.
    fn finish(&mut self) -> PyResult2<String> {
        let out = self.out.clone();
        let before = self.before;
        let started = self.started;
        (|| -> spry::Result<String> {
            let sim = &mut self.sim;
            let s = &mut self.session;
            let last = s.with_task(|task, _, _| sim.evaluate_last(task))?;
            let path = out.join("metrics.csv");
            std::fs::write(&path, metrics_csv(&sim.history))
                .map_err(|source| Error::Io { source, path })?;
            save_bert_classifier(&out.join("adapter"), &s.lora, &sim.global, &s.saved)?;
            let settings = s.settings.clone();
            let summary = s.with_task(|task, _, _| {
                settings.write_summary(&out, task, sim, before, last, started)
            })?;
            Ok(summary.to_string())
        })()
        .map_err(py_err)
    }

    /// Writes the resumable state (the global tensors, the server optimizer's moments, the
    /// history) to `path` (atomically).
    fn save_checkpoint(&self, path: PathBuf) -> PyResult2<()> {
        self.sim.save_checkpoint(&path).map_err(py_err)
    }

    /// Writes the global tensors as an adapter folder.
    fn save_adapter(&self, dir: PathBuf) -> PyResult2<()> {
        let s = &self.session;
        save_bert_classifier(&dir, &s.lora, &self.sim.global, &s.saved).map_err(py_err)
    }
}

/// The process's peak resident memory in MiB (`VmHWM`).
#[pyfunction]
fn peak_rss_mib() -> Option<f64> {
    spry::metrics::peak_rss_mib()
}

/// Reads a `ClassificationRun` config file (TOML or JSON) with JSON overrides; the effective
/// settings as JSON. Raises `SpryError` for an unknown key or a bad value.
#[pyfunction]
#[pyo3(signature = (config=None, overrides=None))]
fn read_settings(config: Option<String>, overrides: Option<String>) -> PyResult2<String> {
    let s = settings(config.as_deref(), overrides.as_deref()).map_err(py_err)?;
    serde_json::to_string(&s).map_err(|e| SpryError::new_err(e.to_string()))
}

/// Runs the whole experiment in process, as `cargo run --example federated -- --config FILE
/// --out OUT_DIR` does (the same `ClassificationRun::run`): writes `config.json`,
/// `metrics.csv`, `checkpoint.json`, `adapter/`, `adapter-best/`, `summary.json`; returns the
/// summary as JSON.
#[pyfunction]
#[pyo3(signature = (out_dir, config=None, overrides=None, resume=false))]
fn run_in_process(
    py: Python<'_>,
    out_dir: PathBuf,
    config: Option<String>,
    overrides: Option<String>,
    resume: bool,
) -> PyResult2<String> {
    py.detach(|| {
        let s = settings(config.as_deref(), overrides.as_deref())?;
        s.run(&out_dir, resume, |_| {})
    })
    .map(|o| o.summary.to_string())
    .map_err(py_err)
}

#[pymodule]
fn spry_flwr_native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("SpryError", m.py().get_type::<SpryError>())?;
    m.add_class::<Experiment>()?;
    m.add_class::<Server>()?;
    m.add_function(wrap_pyfunction!(peak_rss_mib, m)?)?;
    m.add_function(wrap_pyfunction!(read_settings, m)?)?;
    m.add_function(wrap_pyfunction!(run_in_process, m)?)?;
    Ok(())
}
