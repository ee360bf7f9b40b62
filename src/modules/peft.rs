//! Hugging Face PEFT adapters on disk: a folder with `adapter_model.safetensors` and
//! `adapter_config.json`, as `PeftModel.save_pretrained` writes and `PeftModel.from_pretrained`
//! reads them.
//!
//! - Tensors are F32 and named exactly as the [`Trainable`] registry names them, which are PEFT's
//!   names: `base_model.model.<module path>.lora_A.weight` / `.lora_B.weight` for every adapted
//!   layer, and `base_model.model.<module>.weight` / `.bias` for the modules trained in full
//!   (`modules_to_save`, e.g. the classifier). The file's `__metadata__` is `{"format": "pt"}`.
//! - The config is the serde image of [`LoraConfig`] (PEFT's field names) with
//!   `inference_mode: true`, `modules_to_save` listing the registry's non-LoRA units, and PEFT's
//!   switches for the variants spry does not implement written out at their defaults
//!   (`use_rslora`, `use_dora`, `rank_pattern`, `alpha_pattern`, `layers_to_transform`).
//!
//! Loading accepts what PEFT itself writes or reads: keys that carry the adapter name
//! (`.lora_A.default.weight`, `.modules_to_save.default.weight`) are mapped to the plain names,
//! F16/BF16 tensors are widened to f32, and unknown config fields are ignored; config switches
//! that change the arithmetic (rsLoRA, DoRA, per-module ranks, ...) are rejected rather than
//! silently misread.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, ArrayViewD};
use serde_json::Value;

use super::lora::LoraConfig;
use super::trainable::Trainable;
use crate::io::{Weights, load_safetensors, save_safetensors, write_atomic};
use crate::{Error, Float, Result};

/// File name of the adapter weights inside an adapter folder.
pub const ADAPTER_WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// File name of the adapter configuration inside an adapter folder.
pub const ADAPTER_CONFIG_FILE: &str = "adapter_config.json";

const LORA_A_SUFFIX: &str = ".lora_A.weight";
const LORA_B_SUFFIX: &str = ".lora_B.weight";

/// Whether a parameter name is a LoRA factor (`….lora_A.weight` or `….lora_B.weight`).
pub fn is_lora_param(name: &str) -> bool {
    name.ends_with(LORA_A_SUFFIX) || name.ends_with(LORA_B_SUFFIX)
}

/// Names of the registry's units that are not LoRA adapters (every parameter of a LoRA unit is a
/// LoRA factor): the modules trained in full, PEFT's `modules_to_save`.
pub fn modules_to_save<F: Float>(trainable: &Trainable<F>) -> Vec<String> {
    trainable
        .units()
        .iter()
        .filter(|u| {
            !u.params
                .clone()
                .all(|i| is_lora_param(&trainable.names()[i]))
        })
        .map(|u| u.name.clone())
        .collect()
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn config_error(path: &Path, msg: impl Into<String>) -> Error {
    Error::Config {
        path: path.to_path_buf(),
        msg: msg.into(),
    }
}

/// The rank of every LoRA factor of the registry must be `r`: A is `[r, in]`, B is `[out, r]`.
/// Returns the first factor that disagrees, with its shape.
fn rank_disagreement<F: Float>(trainable: &Trainable<F>, r: usize) -> Option<(&str, &[usize])> {
    trainable
        .names()
        .iter()
        .zip(trainable.values())
        .find(|(name, v)| {
            let s = v.shape();
            if name.ends_with(LORA_A_SUFFIX) {
                s.len() != 2 || s[0] != r
            } else if name.ends_with(LORA_B_SUFFIX) {
                s.len() != 2 || s[1] != r
            } else {
                false
            }
        })
        .map(|(name, v)| (name.as_str(), v.shape()))
}

/// The `adapter_config.json` content [`save_peft_adapter`] writes for `lora` and `trainable`:
/// `lora` with `inference_mode = true` and `modules_to_save` set from the registry (`None` when
/// every unit is a LoRA adapter).
///
/// Adapters on some layers only (`layers_to_transform`) are written with `target_modules` listing
/// the adapted modules' full paths (`encoder.layer.4.attention.self.query`, ...) and no
/// `layers_to_transform`: PEFT matches a target against the end of a module's path, so the list
/// names exactly the adapted modules, and PEFT needs no `layers_pattern` for the model's layout.
pub fn adapter_config<F: Float>(lora: &LoraConfig, trainable: &Trainable<F>) -> LoraConfig {
    let heads = modules_to_save(trainable);
    let target_modules = match lora.layers_to_transform {
        Some(_) => trainable
            .units()
            .iter()
            .filter(|u| !heads.contains(&u.name))
            .map(|u| u.name.clone())
            .collect(),
        None => lora.target_modules.clone(),
    };
    LoraConfig {
        inference_mode: true,
        modules_to_save: if heads.is_empty() { None } else { Some(heads) },
        target_modules,
        layers_to_transform: None,
        ..lora.clone()
    }
}

/// Writes `trainable` as a PEFT adapter folder `dir` (created if needed): every registry tensor
/// to `adapter_model.safetensors` as F32 under its registry (PEFT) name, and
/// [`adapter_config`]`(lora, trainable)` to `adapter_config.json`.
///
/// Values are stored as f32 (exact for an f32 registry, rounded for f64). Each file is written to
/// a temporary file and renamed, so an existing adapter is replaced file by file, never left
/// half-written.
///
/// # Errors
/// - [`Error::InvalidArgument`] if `lora` is invalid, or a LoRA factor's rank is not `lora.r`
///   (the config would not describe the tensors).
/// - [`Error::NonFinite`] if a value is NaN or ±∞.
/// - [`Error::Io`] if the folder or a file cannot be written.
pub fn save_peft_adapter<F: Float>(
    dir: &Path,
    lora: &LoraConfig,
    trainable: &Trainable<F>,
) -> Result<()> {
    const OP: &str = "save_peft_adapter";
    lora.validate()?;
    if let Some((name, shape)) = rank_disagreement(trainable, lora.r) {
        return Err(Error::invalid(
            OP,
            format!(
                "`{name}` has shape {shape:?}, which is not a rank-{} LoRA factor",
                lora.r
            ),
        ));
    }
    std::fs::create_dir_all(dir).map_err(|e| io_error(dir, e))?;

    let values: Vec<ArrayD<f32>> = trainable
        .values()
        .iter()
        .map(|v| v.mapv(|x| x.as_f64() as f32))
        .collect();
    let tensors: Vec<(&str, ArrayViewD<'_, f32>)> = trainable
        .names()
        .iter()
        .zip(&values)
        .map(|(n, v)| (n.as_str(), v.view()))
        .collect();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    save_safetensors(dir.join(ADAPTER_WEIGHTS_FILE), &tensors, Some(metadata))?;

    let config = adapter_config(lora, trainable);
    let mut json = serde_json::to_value(&config).expect("LoraConfig serialises");
    let obj = json
        .as_object_mut()
        .expect("a struct serialises to an object");
    // PEFT's switches for the variants spry does not implement, at their defaults, so that the
    // file says what arithmetic the tensors assume.
    for (key, value) in [
        ("use_rslora", Value::Bool(false)),
        ("use_dora", Value::Bool(false)),
        ("rank_pattern", Value::Object(Default::default())),
        ("alpha_pattern", Value::Object(Default::default())),
        ("layers_to_transform", Value::Null),
        ("layers_pattern", Value::Null),
    ] {
        obj.insert(key.to_string(), value);
    }
    let mut text = serde_json::to_string_pretty(&json).expect("a JSON value serialises");
    text.push('\n');
    write_atomic(&dir.join(ADAPTER_CONFIG_FILE), text.as_bytes())
}

/// Whether a config value is absent or at PEFT's "off" default (`null`, `false`, `{}`, `[]`).
fn is_off(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) | Some(Value::Bool(false)) => true,
        Some(Value::Object(m)) => m.is_empty(),
        Some(Value::Array(a)) => a.is_empty(),
        Some(_) => false,
    }
}

/// Reads and checks `dir/adapter_config.json`.
///
/// Unknown fields are ignored (PEFT adds new ones with every release); fields that would change
/// what the tensors mean are rejected: `use_rslora`, `use_dora`, `lora_bias`, a non-empty
/// `rank_pattern` or `alpha_pattern`, `layers_to_transform`, `layer_replication`,
/// `exclude_modules`, `target_parameters`, `trainable_token_indices`, a `bias` other than
/// `"none"`, and `target_modules` given as a regular expression instead of a list.
///
/// # Errors
/// [`Error::Io`] if the file cannot be read; [`Error::Format`] if it is not JSON;
/// [`Error::Config`] (naming the file) for a missing or mistyped field, an unsupported switch,
/// or hyper-parameters [`LoraConfig::validate`] rejects.
pub fn read_peft_config(dir: &Path) -> Result<LoraConfig> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| io_error(&path, e))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| Error::Format {
        path: path.clone(),
        format: "json",
        msg: e.to_string(),
    })?;
    let Some(obj) = json.as_object() else {
        return Err(config_error(&path, "not a JSON object"));
    };
    for key in [
        "use_rslora",
        "use_dora",
        "lora_bias",
        "rank_pattern",
        "alpha_pattern",
        "layers_to_transform",
        "layer_replication",
        "exclude_modules",
        "target_parameters",
        "trainable_token_indices",
    ] {
        if !is_off(obj.get(key)) {
            return Err(config_error(
                &path,
                format!("`{key}` = {} is not supported", obj[key]),
            ));
        }
    }
    if let Some(Value::String(t)) = obj.get("target_modules") {
        return Err(config_error(
            &path,
            format!(
                "target_modules is the pattern {t:?}; only a list of module names is supported"
            ),
        ));
    }
    let config: LoraConfig =
        serde_json::from_value(json).map_err(|e| config_error(&path, e.to_string()))?;
    config
        .validate()
        .map_err(|e| config_error(&path, e.to_string()))?;
    if config.bias != "none" {
        return Err(config_error(
            &path,
            format!("bias = {:?} is not supported (only \"none\")", config.bias),
        ));
    }
    Ok(config)
}

/// The registry name a PEFT file key stands for: the adapter name PEFT uses in memory is
/// dropped (`….lora_A.default.weight` → `….lora_A.weight`,
/// `….modules_to_save.default.weight` → `….weight`).
pub fn canonical_peft_name(key: &str) -> String {
    for factor in [".lora_A.", ".lora_B."] {
        if let Some(pos) = key.rfind(factor) {
            let rest = &key[pos + factor.len()..];
            if let Some(adapter) = rest.strip_suffix(".weight")
                && !adapter.is_empty()
                && !adapter.contains('.')
            {
                return format!("{}{factor}weight", &key[..pos]);
            }
        }
    }
    const MTS: &str = ".modules_to_save.";
    if let Some(pos) = key.find(MTS) {
        let rest = &key[pos + MTS.len()..];
        if let Some((_adapter, tail)) = rest.split_once('.') {
            return format!("{}.{tail}", &key[..pos]);
        }
    }
    key.to_string()
}

/// Loads the tensors of the adapter folder `dir` into `trainable` and returns its config,
/// without comparing its `lora_alpha` with a model's: for reading an adapter's values as data
/// (for example as directions). To load an adapter into a model, use [`load_peft_adapter`],
/// which also checks `r` and `lora_alpha` against the model's.
///
/// Every registry tensor must be in `adapter_model.safetensors` with the registry's shape, and
/// the file must hold nothing else. The config's `r` must be the rank of the registry's LoRA
/// factors. `lora_alpha` cannot be checked against the model here (the registry does not hold
/// it).
///
/// On any error `trainable` is left untouched.
///
/// # Errors
/// - As [`read_peft_config`]; [`Error::Config`] if `r` differs from the registry's rank.
/// - [`load_safetensors`]'s errors (I/O, format, dtype, non-finite values).
/// - [`Error::Format`] if two keys name the same parameter (`.lora_A.weight` and
///   `.lora_A.default.weight`).
/// - [`Error::MissingTensor`] / [`Error::TensorShape`] / [`Error::UnsupportedDtype`] naming the
///   file and the first registry tensor that is absent, mis-shaped or stored as integers.
/// - [`Error::UnexpectedTensor`] naming a tensor of the file the registry does not hold.
pub fn load_peft_tensors<F: Float>(dir: &Path, trainable: &mut Trainable<F>) -> Result<LoraConfig> {
    let config = read_peft_config(dir)?;
    load_with_config(dir, config, trainable)
}

/// Loads the adapter folder `dir` into `trainable`, the registry of a model built with
/// `model_lora`, and returns the adapter's config: [`load_peft_tensors`], and also an error if
/// the adapter's `r` or `lora_alpha` differs from the model's (the model scales the update by
/// its own α/r, so a different α would silently rescale every update).
///
/// # Errors
/// As [`load_peft_tensors`]; [`Error::Config`] naming `adapter_config.json` on an `r` or
/// `lora_alpha` mismatch.
pub fn load_peft_adapter<F: Float>(
    dir: &Path,
    model_lora: &LoraConfig,
    trainable: &mut Trainable<F>,
) -> Result<LoraConfig> {
    let config = read_peft_config(dir)?;
    check_against_model(dir, &config, model_lora)?;
    load_with_config(dir, config, trainable)
}

/// [`Error::Config`] naming `dir/adapter_config.json` if its `r` or `lora_alpha` differs from
/// the model's.
fn check_against_model(dir: &Path, config: &LoraConfig, model_lora: &LoraConfig) -> Result<()> {
    let path = dir.join(ADAPTER_CONFIG_FILE);
    if config.r != model_lora.r {
        return Err(config_error(
            &path,
            format!(
                "r = {} but the model was built with r = {}",
                config.r, model_lora.r
            ),
        ));
    }
    if config.lora_alpha != model_lora.lora_alpha {
        return Err(config_error(
            &path,
            format!(
                "lora_alpha = {} but the model was built with lora_alpha = {}",
                config.lora_alpha, model_lora.lora_alpha
            ),
        ));
    }
    Ok(())
}

fn load_with_config<F: Float>(
    dir: &Path,
    config: LoraConfig,
    trainable: &mut Trainable<F>,
) -> Result<LoraConfig> {
    check_registry_rank(dir, &config, trainable)?;
    let weights = load_safetensors(dir.join(ADAPTER_WEIGHTS_FILE))?;
    install(dir, config, weights, trainable)
}

/// [`Error::Config`] if a LoRA factor of the registry is not of rank `config.r`.
fn check_registry_rank<F: Float>(
    dir: &Path,
    config: &LoraConfig,
    trainable: &Trainable<F>,
) -> Result<()> {
    if let Some((name, shape)) = rank_disagreement(trainable, config.r) {
        return Err(config_error(
            &dir.join(ADAPTER_CONFIG_FILE),
            format!(
                "r = {} but the model's LoRA factor `{name}` has shape {shape:?}",
                config.r
            ),
        ));
    }
    Ok(())
}

/// Moves the adapter's tensors `weights` into `trainable`, checking names and shapes.
fn install<F: Float>(
    dir: &Path,
    config: LoraConfig,
    mut weights: Weights,
    trainable: &mut Trainable<F>,
) -> Result<LoraConfig> {
    let path: PathBuf = dir.join(ADAPTER_WEIGHTS_FILE);

    // canonical name → (key in the file, tensor or dtype of a skipped integer tensor)
    enum Entry {
        Float(ArrayD<f32>),
        Skipped(String),
    }
    let mut by_name: BTreeMap<String, (String, Entry)> = BTreeMap::new();
    let mut insert = |key: String, entry: Entry| -> Result<()> {
        let canon = canonical_peft_name(&key);
        if let Some((other, _)) = by_name.get(&canon) {
            return Err(Error::Format {
                path: path.clone(),
                format: "safetensors",
                msg: format!("tensors `{other}` and `{key}` both hold parameter `{canon}`"),
            });
        }
        by_name.insert(canon, (key, entry));
        Ok(())
    };
    let skipped: Vec<(String, String)> = weights
        .skipped()
        .map(|(n, s)| (n.to_string(), s.dtype.clone()))
        .collect();
    for (key, dtype) in skipped {
        insert(key, Entry::Skipped(dtype))?;
    }
    let keys: Vec<String> = weights.names().map(str::to_string).collect();
    for key in keys {
        let t = weights.take(&key)?;
        insert(key, Entry::Float(t))?;
    }

    let mut new_values = Vec::with_capacity(trainable.len());
    for (name, current) in trainable.names().iter().zip(trainable.values()) {
        let (key, entry) = by_name.remove(name).ok_or_else(|| Error::MissingTensor {
            path: path.clone(),
            name: name.clone(),
        })?;
        let t = match entry {
            Entry::Float(t) => t,
            Entry::Skipped(dtype) => {
                return Err(Error::UnsupportedDtype {
                    path: path.clone(),
                    name: key,
                    dtype,
                });
            }
        };
        if t.shape() != current.shape() {
            return Err(Error::TensorShape {
                path: path.clone(),
                name: key,
                expected: current.shape().to_vec(),
                got: t.shape().to_vec(),
            });
        }
        new_values.push(t.mapv(|x| F::from_f64(x as f64)));
    }
    if let Some((key, _)) = by_name.into_values().next() {
        return Err(Error::UnexpectedTensor { path, name: key });
    }
    for (i, v) in new_values.into_iter().enumerate() {
        *trainable.value_mut(i) = v;
    }
    Ok(config)
}

/// An adapter folder read and checked before the model it adapts is built: its
/// `adapter_config.json` ([`read_peft_config`]) and its `adapter_model.safetensors`, in which
/// every LoRA factor must be a matrix of the config's rank (A `[r, in]`, B `[out, r]`).
///
/// A model allocates `r·(in + out)` values for every layer it adapts; reading the folder first
/// means the `r` it builds with is the rank of tensors the file holds (and the file's bytes
/// bound it), not a number the config alone sets. The one-call loaders with an adapter
/// (`models::pretrained`) read it so; [`PeftAdapter::load_into`] then moves the tensors into the
/// model's registry with every check of [`load_peft_adapter`].
#[derive(Debug)]
pub struct PeftAdapter {
    dir: PathBuf,
    config: LoraConfig,
    weights: Weights,
}

impl PeftAdapter {
    /// Reads and checks the adapter folder `dir`.
    ///
    /// # Errors
    /// As [`read_peft_config`] and [`load_safetensors`]; [`Error::Config`] naming
    /// `adapter_config.json` if a LoRA factor of the file (`….lora_A.weight`,
    /// `….lora_B.weight`, with or without PEFT's adapter name) is not a matrix of rank `r`.
    pub fn read(dir: &Path) -> Result<Self> {
        let config = read_peft_config(dir)?;
        let weights = load_safetensors(dir.join(ADAPTER_WEIGHTS_FILE))?;
        let tensors = weights
            .iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .chain(weights.skipped().map(|(n, s)| (n, s.shape.clone())));
        for (key, shape) in tensors {
            let canon = canonical_peft_name(key);
            let rank = if canon.ends_with(LORA_A_SUFFIX) {
                shape.first()
            } else if canon.ends_with(LORA_B_SUFFIX) {
                shape.get(1)
            } else {
                continue;
            };
            if shape.len() != 2 || rank != Some(&config.r) {
                return Err(config_error(
                    &dir.join(ADAPTER_CONFIG_FILE),
                    format!(
                        "r = {} but `{key}` in {ADAPTER_WEIGHTS_FILE} has shape {shape:?}",
                        config.r
                    ),
                ));
            }
        }
        Ok(PeftAdapter {
            dir: dir.to_path_buf(),
            config,
            weights,
        })
    }

    /// The adapter's configuration (build the model with it).
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The shape of the file's tensor holding parameter `name` (a registry name; keys with
    /// PEFT's adapter name count), if there is one.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.weights
            .iter()
            .map(|(n, t)| (n, t.shape().to_vec()))
            .chain(self.weights.skipped().map(|(n, s)| (n, s.shape.clone())))
            .find(|(n, _)| canonical_peft_name(n) == name)
            .map(|(_, s)| s)
    }

    /// The path of the adapter's weights file (for errors about its tensors).
    pub fn weights_path(&self) -> PathBuf {
        self.dir.join(ADAPTER_WEIGHTS_FILE)
    }

    /// Moves the adapter's tensors into `trainable`, the registry of a model built with
    /// `model_lora`, and returns the adapter's config: what [`load_peft_adapter`] does, without
    /// reading the folder again.
    ///
    /// # Errors
    /// As [`load_peft_adapter`], less the I/O and format errors [`PeftAdapter::read`] reported.
    pub fn load_into<F: Float>(
        self,
        model_lora: &LoraConfig,
        trainable: &mut Trainable<F>,
    ) -> Result<LoraConfig> {
        check_against_model(&self.dir, &self.config, model_lora)?;
        check_registry_rank(&self.dir, &self.config, trainable)?;
        install(&self.dir, self.config, self.weights, trainable)
    }
}
