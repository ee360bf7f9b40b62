//! [`WeightPath`]: a [`WeightSource`] seen from one module of the model, after candle's
//! `VarBuilder`. A loader scopes the path a segment at a time (`vb.pp("encoder.layer")`, then
//! `.pp(l)` for layer l) and takes its tensors by their last name (`vb.vector("bias", h)`), so no
//! loader spells a full tensor name, and every layer loads itself from the path it is handed.
//!
//! ```text
//! tensor name = root + path + "." + leaf  "bert." + "encoder.layer.0.output.dense" + ".weight"
//! module path = path                      what LoRA targets match and PEFT names adapters after
//! ```

use std::fmt::Display;

use ndarray::{Array1, Array2};

use super::source::{WeightSource, take_frozen, take1, take2};
use crate::kernels::{FrozenWeight, PanelCache};
use crate::modules::norm::{LayerNorm, RmsNorm};
use crate::modules::{FrozenLinear, LoraConfig, Trainable};
use crate::{Float, Result};

/// A [`WeightSource`] scoped to one module: tensors are named relative to its dotted path.
///
/// The path has two parts: a `root` that only the checkpoint's tensor names carry (`bert.` in a
/// `BertForSequenceClassification` file) and the module path below it, which is also what LoRA
/// targets match and what PEFT names adapters after.
pub struct WeightPath<'a> {
    src: &'a mut dyn WeightSource,
    root: String,
    path: String,
}

impl<'a> WeightPath<'a> {
    /// The whole of `src`: an empty path, tensor names as they are.
    pub fn new(src: &'a mut dyn WeightSource) -> Self {
        WeightPath {
            src,
            root: String::new(),
            path: String::new(),
        }
    }

    /// The same source with every tensor name prefixed by `root` (e.g. `bert.`), which is not part
    /// of the module path.
    pub fn with_root(mut self, root: &str) -> Self {
        self.root = root.to_string();
        self
    }

    /// The sub-module `segment` (a name, or a layer index): `encoder` scoped by `layer` is
    /// `encoder.layer`. The segment may itself hold dots (`attention.output`).
    pub fn pp(&mut self, segment: impl Display) -> WeightPath<'_> {
        let path = self.join(&segment.to_string());
        WeightPath {
            src: &mut *self.src,
            root: self.root.clone(),
            path,
        }
    }

    /// The dotted module path (without the root), e.g. `encoder.layer.0.attention.self.query`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The full tensor name of `leaf`: `root + path + "." + leaf`.
    pub fn name(&self, leaf: &str) -> String {
        format!("{}{}", self.root, self.join(leaf))
    }

    /// Checks that the source holds exactly `declared` layers under this path (a list of
    /// layers such as `encoder.layer`), before any is taken ([`WeightSource::check_layers`]).
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) naming the checkpoint if the counts differ.
    pub fn check_layers(&self, declared: usize) -> Result<()> {
        self.src
            .check_layers(&format!("{}{}", self.root, self.path), declared)
    }

    /// Whether the source holds the tensor `leaf` of this module.
    pub fn has(&self, leaf: &str) -> bool {
        self.src.has(&self.name(leaf))
    }

    /// Takes the vector `leaf` `[len]` as `F`.
    ///
    /// # Errors
    /// [`Error::MissingTensor`](crate::Error::MissingTensor) if absent,
    /// [`Error::TensorShape`](crate::Error::TensorShape) if it is not `[len]`.
    pub fn vector<F: Float>(&mut self, leaf: &str, len: usize) -> Result<Array1<F>> {
        let name = self.name(leaf);
        take1(self.src, &name, len)
    }

    /// Takes the matrix `leaf` `[rows, cols]` as dense `F` (a table the model reads row by row
    /// and adds to, such as BERT's embeddings).
    ///
    /// # Errors
    /// As [`WeightPath::vector`].
    pub fn matrix<F: Float>(&mut self, leaf: &str, rows: usize, cols: usize) -> Result<Array2<F>> {
        let name = self.name(leaf);
        take2(self.src, &name, rows, cols)
    }

    /// Takes the frozen matrix `leaf` `[rows, cols]` as the source hands it out
    /// ([`WeightSource::take_matrix`]): packed in its stored format, or dense `F`.
    ///
    /// # Errors
    /// As [`WeightPath::vector`].
    pub fn frozen<F: Float>(
        &mut self,
        leaf: &str,
        rows: usize,
        cols: usize,
    ) -> Result<FrozenWeight<F>> {
        let name = self.name(leaf);
        take_frozen(self.src, &name, rows, cols)
    }

    /// Takes this module as a linear layer `[out, in]` without adapter: its `weight` (frozen,
    /// possibly packed) and, when `bias`, its `bias` `[out]`. The layer's path is this module's.
    /// A dense `f32` weight's panels (`FrozenLinear::panels`) are packed here.
    ///
    /// # Errors
    /// As [`WeightPath::vector`].
    pub fn linear<F: Float>(
        &mut self,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<FrozenLinear<F>> {
        let layer = FrozenLinear {
            weight: self.frozen("weight", out, inp)?,
            bias: if bias {
                Some(self.vector("bias", out)?)
            } else {
                None
            },
            adapter: None,
            path: self.path.clone(),
            panels: PanelCache::default(),
        };
        // a dense f32 weight's panels are packed now, at load, so that they count with the
        // resident weights rather than with the first forward's working memory
        let _ = layer.panels.get(&layer.weight);
        Ok(layer)
    }

    /// Takes this module as a LayerNorm over `h` features: `weight` then `bias`, both `[h]`.
    ///
    /// # Errors
    /// As [`WeightPath::vector`].
    pub fn layer_norm<F: Float>(&mut self, h: usize, eps: f64) -> Result<LayerNorm<F>> {
        Ok(LayerNorm {
            weight: self.vector("weight", h)?,
            bias: Some(self.vector("bias", h)?),
            eps,
        })
    }

    /// Takes this module as an RMSNorm over `h` features: `weight` `[h]`.
    ///
    /// # Errors
    /// As [`WeightPath::vector`].
    pub fn rms_norm<F: Float>(&mut self, h: usize, eps: f64) -> Result<RmsNorm<F>> {
        Ok(RmsNorm {
            weight: self.vector("weight", h)?,
            eps,
        })
    }

    fn join(&self, leaf: &str) -> String {
        if self.path.is_empty() {
            leaf.to_string()
        } else {
            format!("{}.{leaf}", self.path)
        }
    }
}

/// Where a loader registers the LoRA adapters of the layers it builds: the LoRA configuration,
/// the PEFT name prefix (`base_model.model.` plus the model's own prefix), the seed of the
/// initial values and the registry.
pub struct Adapters<'a, F: Float> {
    /// Which modules get an adapter, of what rank and scale.
    pub lora: &'a LoraConfig,
    /// Prefix of every PEFT parameter name, e.g. `base_model.model.bert.`.
    pub prefix: String,
    /// Seed of the initial `A` values.
    pub seed: u64,
    /// The registry the adapters' tensors are appended to, in loading order.
    pub trainable: &'a mut Trainable<F>,
}

impl<F: Float> Adapters<'_, F> {
    /// `linear` with a LoRA adapter registered if the configuration targets its path
    /// ([`FrozenLinear::attach_lora`]); unchanged otherwise.
    ///
    /// # Errors
    /// As [`FrozenLinear::attach_lora`].
    pub fn adapt(&mut self, mut linear: FrozenLinear<F>) -> Result<FrozenLinear<F>> {
        linear.attach_lora(self.lora, &self.prefix, self.seed, self.trainable)?;
        Ok(linear)
    }
}
