//! Where a model's frozen weights come from.

use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2};
use std::any::Any;

use crate::kernels::FrozenWeight;
use crate::{Error, Float, Result};

/// A checkpoint that hands out named f32 tensors of a known shape (safetensors, GGUF, or random
/// weights for tests). Taking moves the tensor out, so a loaded model holds the only copy.
pub trait WeightSource {
    /// Removes and returns the tensor `name`, checking its shape.
    ///
    /// # Errors
    /// [`Error::MissingTensor`] if absent, [`Error::TensorShape`] if the shape differs.
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>>;

    /// Whether the source holds `name`.
    fn has(&self, name: &str) -> bool;

    /// Checks that the checkpoint holds exactly `declared` layers under the module path
    /// `layers` (`model.layers`, `encoder.layer`, with any root such as `bert.`): that the
    /// highest `i` of its tensors `{layers}.{i}.…` is `declared − 1`. A loader calls it before
    /// taking any layer, so a layer count that disagrees with the file is an error whether it is
    /// larger (no layer is loaded first) or smaller (the extra layers are not silently dropped).
    ///
    /// The default accepts any count: a source without a fixed list of tensors (random
    /// weights) cannot tell.
    ///
    /// # Errors
    /// [`Error::Config`] naming the checkpoint, the declared and the present counts.
    fn check_layers(&self, layers: &str, declared: usize) -> Result<()> {
        let _ = (layers, declared);
        Ok(())
    }

    /// Removes and returns the frozen matrix `name` `[rows, cols]`, packed in its stored format
    /// when the source keeps one (a GGUF source, see [`WeightFormat`]); by default dense f32
    /// from [`WeightSource::take`].
    ///
    /// # Errors
    /// As [`WeightSource::take`].
    fn take_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<FrozenWeight<f32>> {
        let a = self.take(name, &[rows, cols])?;
        let a = a
            .into_dimensionality::<Ix2>()
            .map_err(|_| Error::invalid("take_matrix", format!("`{name}` is not a matrix")))?;
        Ok(FrozenWeight::Dense(a))
    }
}

/// How a source hands out frozen matrices.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WeightFormat {
    /// In the checkpoint's storage format where it is packed (f16, bf16, Q8_0, Q4_0, Q4_1),
    /// widened a tile at a time by the kernels; f32 tensors stay dense.
    #[default]
    Stored,
    /// Dense f32 (widened at load), the model's float type after the cast.
    Dense,
}

/// Takes a frozen matrix `[rows, cols]` as [`WeightSource::take_matrix`] gives it: a packed
/// matrix stays packed, a dense one is converted to `F`.
///
/// # Errors
/// As [`WeightSource::take`].
pub fn take_frozen<F: Float>(
    src: &mut dyn WeightSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<FrozenWeight<F>> {
    Ok(match src.take_matrix(name, rows, cols)? {
        FrozenWeight::Dense(a) => FrozenWeight::Dense(cast_array(a)),
        FrozenWeight::Packed(p) => FrozenWeight::Packed(p),
    })
}

/// Converts an f32 array to `F`, moving it (no copy) when `F` is `f32`.
pub fn cast_array<F: Float, D: ndarray::Dimension + 'static>(
    a: ndarray::Array<f32, D>,
) -> ndarray::Array<F, D> {
    let boxed: Box<dyn Any> = Box::new(a);
    match boxed.downcast::<ndarray::Array<F, D>>() {
        Ok(same) => *same,
        Err(boxed) => {
            let a = boxed
                .downcast::<ndarray::Array<f32, D>>()
                .expect("an f32 array");
            a.mapv(|x| F::from_f64(x as f64))
        }
    }
}

/// Takes a matrix `[rows, cols]` as `F`.
///
/// # Errors
/// As [`WeightSource::take`].
pub fn take2<F: Float>(
    src: &mut dyn WeightSource,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<Array2<F>> {
    let a = src.take(name, &[rows, cols])?;
    let a = a
        .into_dimensionality::<Ix2>()
        .map_err(|_| Error::invalid("take2", format!("`{name}` is not a matrix")))?;
    Ok(cast_array(a))
}

/// Takes a vector `[len]` as `F`.
///
/// # Errors
/// As [`WeightSource::take`].
pub fn take1<F: Float>(src: &mut dyn WeightSource, name: &str, len: usize) -> Result<Array1<F>> {
    let a = src.take(name, &[len])?;
    let a = a
        .into_dimensionality::<Ix1>()
        .map_err(|_| Error::invalid("take1", format!("`{name}` is not a vector")))?;
    Ok(cast_array(a))
}

/// The number of layers `names` hold under `layers`: one more than the highest `i` of a name
/// `{layers}.{i}.…` (0 if there is none).
fn layers_present<'a>(names: impl Iterator<Item = &'a str>, layers: &str) -> usize {
    names
        .filter_map(|n| {
            let rest = n.strip_prefix(layers)?.strip_prefix('.')?;
            rest.split_once('.')?.0.parse::<usize>().ok()
        })
        .map(|i| i.saturating_add(1))
        .max()
        .unwrap_or(0)
}

/// [`Error::Config`] unless `present == declared` (see [`WeightSource::check_layers`]).
fn layer_count_matches(
    path: &std::path::Path,
    layers: &str,
    declared: usize,
    present: usize,
) -> Result<()> {
    if present == declared {
        return Ok(());
    }
    Err(Error::Config {
        path: path.to_path_buf(),
        msg: format!(
            "the configuration declares {declared} layers but the checkpoint holds {present} \
             (tensors `{layers}.0.…` to `{layers}.{}.…`)",
            present.saturating_sub(1)
        ),
    })
}

impl WeightSource for crate::io::Weights {
    fn check_layers(&self, layers: &str, declared: usize) -> Result<()> {
        let names = self.names().chain(self.skipped().map(|(n, _)| n));
        layer_count_matches(self.path(), layers, declared, layers_present(names, layers))
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        let got = crate::io::Weights::shape(self, name)?.to_vec();
        if got != shape {
            return Err(Error::TensorShape {
                path: self.path().to_path_buf(),
                name: name.to_string(),
                expected: shape.to_vec(),
                got,
            });
        }
        crate::io::Weights::take(self, name)
    }

    fn has(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// A Llama checkpoint in GGUF form, read through Hugging Face names: `model.layers.{l}.self_attn.
/// q_proj.weight` is GGUF's `blk.{l}.attn_q.weight` with its rows un-permuted from llama.cpp's
/// interleaved-RoPE order back to the rotate-half order, and so on.
///
/// Matrices are handed out one at a time as they are taken: with [`WeightFormat::Stored`] (the
/// default) a packed tensor comes out as a [`PackedMatrix`](crate::io::PackedMatrix) (q/k rows
/// un-permuted by a row order, without a copy), anything else is dequantised to f32. Open the
/// file with [`GgufFile::open_mapped`](crate::io::GgufFile::open_mapped) (the one-call loaders
/// do): the packed matrices are then ranges of the file's map (page cache, no second copy); a
/// file opened whole ([`GgufFile::open`](crate::io::GgufFile::open)) gives copies and keeps its
/// bytes until the source is dropped.
pub struct GgufLlamaSource {
    file: crate::io::GgufFile,
    n_heads: usize,
    n_kv_heads: usize,
    format: WeightFormat,
}

impl GgufLlamaSource {
    /// Wraps an opened GGUF file; head counts are needed to un-permute q and k. Matrices are
    /// handed out in [`WeightFormat::Stored`].
    pub fn new(file: crate::io::GgufFile, n_heads: usize, n_kv_heads: usize) -> Self {
        GgufLlamaSource {
            file,
            n_heads,
            n_kv_heads,
            format: WeightFormat::default(),
        }
    }

    /// The same source handing out matrices in `format`.
    pub fn with_format(mut self, format: WeightFormat) -> Self {
        self.format = format;
        self
    }

    /// The underlying file.
    pub fn file(&self) -> &crate::io::GgufFile {
        &self.file
    }

    /// The GGUF name of a Hugging Face Llama tensor name, and the head count to un-permute its
    /// rows with (q and k only).
    pub fn gguf_name(&self, hf: &str) -> Option<(String, Option<usize>)> {
        let direct = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(d) = direct {
            return Some((d.to_string(), None));
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, tail) = rest.split_once('.')?;
        let (name, heads) = match tail {
            "input_layernorm.weight" => ("attn_norm.weight", None),
            "self_attn.q_proj.weight" => ("attn_q.weight", Some(self.n_heads)),
            "self_attn.k_proj.weight" => ("attn_k.weight", Some(self.n_kv_heads)),
            "self_attn.v_proj.weight" => ("attn_v.weight", None),
            "self_attn.o_proj.weight" => ("attn_output.weight", None),
            "post_attention_layernorm.weight" => ("ffn_norm.weight", None),
            "mlp.gate_proj.weight" => ("ffn_gate.weight", None),
            "mlp.up_proj.weight" => ("ffn_up.weight", None),
            "mlp.down_proj.weight" => ("ffn_down.weight", None),
            _ => return None,
        };
        Some((format!("blk.{layer}.{name}"), heads))
    }
}

impl WeightSource for GgufLlamaSource {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        let path = self.file.path().to_path_buf();
        let (gname, heads) = self.gguf_name(name).ok_or_else(|| Error::MissingTensor {
            path: path.clone(),
            name: name.to_string(),
        })?;
        let t = self.file.tensor_f32(&gname)?;
        if t.shape() != shape {
            return Err(Error::TensorShape {
                path,
                name: gname,
                expected: shape.to_vec(),
                got: t.shape().to_vec(),
            });
        }
        match heads {
            Some(h) => {
                let w = t.into_dimensionality::<Ix2>().expect("checked 2-D shape");
                Ok(crate::io::unpermute_rope_rows(w, h)?.into_dyn())
            }
            None => Ok(t),
        }
    }

    fn has(&self, name: &str) -> bool {
        self.gguf_name(name)
            .is_some_and(|(g, _)| self.file.tensor_info(&g).is_ok())
    }

    /// `model.layers` is GGUF's `blk`; other paths hold no layers in a Llama GGUF.
    fn check_layers(&self, layers: &str, declared: usize) -> Result<()> {
        if layers != "model.layers" {
            return Ok(());
        }
        let names = self.file.tensor_infos().iter().map(|t| t.name());
        let present = layers_present(names, "blk");
        layer_count_matches(self.file.path(), layers, declared, present).map_err(|_| {
            Error::Config {
                path: self.file.path().to_path_buf(),
                msg: format!(
                    "llama.block_count is {declared} but the file holds {present} blocks \
                     (tensors `blk.0.…` to `blk.{}.…`)",
                    present.saturating_sub(1)
                ),
            }
        })
    }

    fn take_matrix(&mut self, name: &str, rows: usize, cols: usize) -> Result<FrozenWeight<f32>> {
        let path = self.file.path().to_path_buf();
        let (gname, heads) = self.gguf_name(name).ok_or_else(|| Error::MissingTensor {
            path: path.clone(),
            name: name.to_string(),
        })?;
        let ty = self.file.tensor_info(&gname)?.ggml_type();
        if self.format == WeightFormat::Dense || crate::io::PackedFormat::from_ggml(ty).is_none() {
            let a = self.take(name, &[rows, cols])?;
            return Ok(FrozenWeight::Dense(
                a.into_dimensionality::<Ix2>().expect("checked 2-D shape"),
            ));
        }
        let p = self.file.tensor_packed(&gname)?;
        if p.dim() != (rows, cols) {
            return Err(Error::TensorShape {
                path,
                name: gname,
                expected: vec![rows, cols],
                got: vec![p.rows(), p.cols()],
            });
        }
        Ok(FrozenWeight::Packed(match heads {
            Some(h) => crate::io::unpermute_rope_rows_packed(&p, h)?,
            None => p,
        }))
    }
}

/// Random weights for tests and examples on small configurations: every tensor is drawn from
/// the `Init` stream keyed by the run seed and a hash of its name, `N(0, scale²)`, except norm
/// gains (names containing `norm` or `LayerNorm` ending in `weight`), which are `1 + N(0, scale²)`.
pub struct RandomWeights {
    /// Seed.
    pub seed: u64,
    /// Standard deviation.
    pub scale: f64,
}

impl WeightSource for RandomWeights {
    fn take(&mut self, name: &str, shape: &[usize]) -> Result<ArrayD<f32>> {
        let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        let mut rng = crate::rng::KeyedRng::new(self.seed, crate::rng::Domain::Init, &[h]);
        let gain =
            (name.contains("norm") || name.contains("LayerNorm")) && name.ends_with("weight");
        let offset = if gain { 1.0 } else { 0.0 };
        Ok(ArrayD::from_shape_simple_fn(shape, || {
            (offset + self.scale * rng.normal()) as f32
        }))
    }

    fn has(&self, _name: &str) -> bool {
        true
    }
}
