//! A frozen linear layer that may carry a LoRA adapter; its weight may be dense or packed
//! ([`FrozenWeight`]).

use ndarray::{Array, Array1, Array2, ArrayView2, Dimension, Ix2};

use super::lora::LoraConfig;
use super::pass::Pass;
use super::trainable::{ParamGrads, Trainable, param_dual};
use crate::kernels::reverse::{frozen_linear_backward, lora_backward};
use crate::kernels::{FrozenWeight, PanelCache, frozen_linear_panels, lora_frozen_linear_panels};
use crate::rng::{Domain, KeyedRng};
use crate::{Dual, Error, Float, Result};

/// Where a LoRA adapter's tensors live in the [`Trainable`] registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdapterSlot {
    /// Index of `lora_A.weight` (`[r, in]`).
    pub a: usize,
    /// Index of `lora_B.weight` (`[out, r]`).
    pub b: usize,
    /// Index of the adapter's unit.
    pub unit: usize,
}

/// Keys the dropout masks of one forward pass: masks come from the `Dropout` stream keyed by
/// `(seed, parts.., unit)`, so a pass can be replayed exactly.
#[derive(Clone, Debug, PartialEq)]
pub struct DropoutKey {
    /// Run seed.
    pub seed: u64,
    /// Position of the pass, e.g. `[round, client, step]`.
    pub parts: Vec<u64>,
}

/// A linear layer `y = xWᵀ + b` with a frozen weight `[out, in]` (Hugging Face layout), optionally
/// adapted by LoRA: `y = xWᵀ + b + s·(drop(x)Aᵀ)Bᵀ`.
///
/// The weight is dense in `F` or packed in its stored format (f16, bf16, Q8_0, Q4_0, Q4_1); a
/// packed weight is widened a tile at a time by [`frozen_linear()`](crate::kernels::frozen_linear())
/// and never held whole. A dense `f32` weight is also kept as panels for the pre-packed GEMM
/// ([`FrozenLinear::panels`]): the weight's memory twice over, for a faster forward.
#[derive(Clone, Debug)]
pub struct FrozenLinear<F: Float> {
    /// Dotted module path, e.g. `encoder.layer.0.attention.self.query`.
    pub path: String,
    /// Weight `[out, in]`, dense or packed.
    pub weight: FrozenWeight<F>,
    /// Bias `[out]`.
    pub bias: Option<Array1<F>>,
    /// The LoRA adapter, if this module is targeted.
    pub adapter: Option<AdapterSlot>,
    /// A dense `f32` weight's panels for the pre-packed GEMM (`kernels::panel_gemm`), packed by
    /// the first forward and used by every later one (`PanelCache::default()` when building a
    /// layer). After changing `weight` in place, [`PanelCache::clear`] it; [`merge_adapter`]
    /// does.
    ///
    /// [`merge_adapter`]: FrozenLinear::merge_adapter
    pub panels: PanelCache,
}

impl<F: Float> FrozenLinear<F> {
    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.nrows()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.ncols()
    }

    /// Bytes held by the weight (its elements or its packed blocks) and the bias.
    pub fn n_bytes(&self) -> usize {
        self.weight.n_bytes() + self.bias.as_ref().map_or(0, |b| b.len() * size_of::<F>())
    }

    /// Registers a LoRA adapter for this layer in `trainable` if `lora` targets its path.
    /// Parameter names follow PEFT: `{prefix}{path}.lora_A.weight` / `.lora_B.weight`.
    ///
    /// The rank may not exceed the smaller side of the layer, `min(in, out)`: a larger rank adds
    /// parameters (`r·(in + out)`) but no expressiveness, and it is how a config with a huge `r`
    /// would make loading allocate without bound.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if `lora.r > min(in, out)`; as [`Trainable::push_unit`].
    pub fn attach_lora(
        &mut self,
        lora: &LoraConfig,
        prefix: &str,
        seed: u64,
        trainable: &mut Trainable<F>,
    ) -> Result<()> {
        if !lora.targets(&self.path) {
            return Ok(());
        }
        let (inp, out) = (self.in_features(), self.out_features());
        if lora.r > inp.min(out) {
            return Err(Error::invalid(
                "FrozenLinear::attach_lora",
                format!(
                    "LoRA rank r = {} exceeds min(in, out) of `{}` [{out}, {inp}]",
                    lora.r, self.path
                ),
            ));
        }
        let index = trainable.len() as u64;
        let (a, b) = lora.init_pair::<F>(inp, out, seed, index);
        let base = format!("{prefix}{}", self.path);
        let unit = trainable.push_unit(
            self.path.clone(),
            vec![
                (format!("{base}.lora_A.weight"), a),
                (format!("{base}.lora_B.weight"), b),
            ],
        )?;
        let params = trainable.units()[unit].params.clone();
        self.adapter = Some(AdapterSlot {
            a: params.start,
            b: params.start + 1,
            unit,
        });
        Ok(())
    }

    /// Applies the layer (with its adapter, if any) to a dual activation, reading the adapter's
    /// factors and their tangents from `pass` (with `pass.lora`'s scale and dropout).
    ///
    /// Without an adapter this is [`frozen_linear_panels`]; with one,
    /// [`lora_frozen_linear_panels`], the same LoRA path for a dense and a packed weight:
    /// `y = x·Wᵀ + b + s·(x̃·Aᵀ)·Bᵀ`, `ẏ = ẋ·Wᵀ + s·[(x̃̇·Aᵀ + x̃·Ȧᵀ)·Bᵀ + (x̃·Aᵀ)·Ḃᵀ]`,
    /// `x̃ = x ⊙ mask`. A dense `f32` weight's products `x·Wᵀ`, `ẋ·Wᵀ` go through its panels
    /// ([`FrozenLinear::panels`], packed by the first call); a packed `W` is widened a tile at a
    /// time (so a packed layer equals its widened twin bit for bit).
    ///
    /// # Shapes
    /// - `x`: `[.., in]` → `[.., out]`
    ///
    /// # Errors
    /// Shape and tangent-count errors of the kernels.
    pub fn forward<D: Dimension>(&self, x: &Dual<F, D>, pass: &Pass<'_, F>) -> Result<Dual<F, D>> {
        let bias = self.bias.as_ref().map(|b| b.view());
        let Some(slot) = self.adapter else {
            return frozen_linear_panels(x, &self.weight, self.panels.get(&self.weight), bias);
        };
        let lora = pass.lora;
        let a = param_dual::<F, Ix2>(pass.trainable, pass.dirs, slot.a)?;
        let b = param_dual::<F, Ix2>(pass.trainable, pass.dirs, slot.b)?;
        let mask = match pass.dropout {
            Some(key) if lora.lora_dropout > 0.0 => Some(dropout_mask::<F, D>(
                x.primal().raw_dim(),
                lora.lora_dropout,
                key,
                slot.unit,
            )),
            _ => None,
        };
        let scale = F::from_f64(lora.scale());
        let mask = mask.as_ref().map(|m| m.view());
        lora_frozen_linear_panels(
            x,
            &self.weight,
            self.panels.get(&self.weight),
            bias,
            &a,
            &b,
            scale,
            mask,
        )
    }

    /// The reverse pass of [`FrozenLinear::forward`] at the primal point of `pass`: given the
    /// layer's input `x` and `dy = ∂L/∂y`, the input gradient and, if the layer carries an
    /// adapter, the gradients of its factors (registry indices `A`, `B`):
    ///
    /// ```text
    /// dx = dy·W + s·(dy·B)·A,   dA = s·(dy·B)ᵀ·x,   dB = s·dyᵀ·(x·Aᵀ)
    /// ```
    ///
    /// (`kernels::reverse::frozen_linear_backward`, a packed `W` widened a tile at a time, and
    /// `kernels::reverse::lora_backward`). `pass.dirs` is not read.
    ///
    /// # Shapes
    /// - `x`: `[N, in]`, `dy`: `[N, out]` → `dx` `[N, in]`; `A` `[r, in]`, `B` `[out, r]`
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if the layer carries an adapter and `pass` applies LoRA
    /// dropout (a dropout key and `lora_dropout > 0`): the reverse rule has no mask;
    /// [`Error::ShapeMismatch`] for inputs or factors of the wrong shape.
    pub fn backward(
        &self,
        x: ArrayView2<'_, F>,
        dy: ArrayView2<'_, F>,
        pass: &Pass<'_, F>,
    ) -> Result<(Array2<F>, ParamGrads<F>)> {
        const OP: &str = "FrozenLinear::backward";
        let mut dx = frozen_linear_backward(dy, &self.weight)?;
        let Some(slot) = self.adapter else {
            return Ok((dx, Vec::new()));
        };
        if pass.lora_dropout_active() {
            return Err(Error::invalid(
                OP,
                format!(
                    "`{}`: LoRA dropout is active in the pass and the reverse rule has no mask",
                    self.path
                ),
            ));
        }
        let factor = |i: usize| {
            let v = pass.trainable.value(i);
            v.view()
                .into_dimensionality::<Ix2>()
                .map_err(|_| Error::shape(OP, "a matrix", v.shape()))
        };
        let (a, b) = (factor(slot.a)?, factor(slot.b)?);
        let scale = F::from_f64(pass.lora.scale());
        let g = lora_backward(x, a, b, scale, dy, Some(dx.view_mut()))?;
        Ok((dx, vec![(slot.a, g.a.into_dyn()), (slot.b, g.b.into_dyn())]))
    }

    /// Checks that the adapter's tensors in `trainable` are matrices `A: [r, in]`, `B: [out, r]`
    /// with `r = lora.r` (what [`FrozenLinear::merged_weight`] assumes).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] if a slot index is outside the registry;
    /// [`Error::ShapeMismatch`] if a factor has the wrong shape.
    pub fn check_adapter(&self, trainable: &Trainable<F>, lora: &LoraConfig) -> Result<()> {
        const OP: &str = "FrozenLinear::check_adapter";
        let Some(slot) = self.adapter else {
            return Ok(());
        };
        let r = lora.r;
        for (i, want) in [
            (slot.a, [r, self.in_features()]),
            (slot.b, [self.out_features(), r]),
        ] {
            let v = trainable.values().get(i).ok_or_else(|| {
                Error::invalid(
                    OP,
                    format!(
                        "`{}`: adapter parameter {i} is not in a registry of {}",
                        self.path,
                        trainable.len()
                    ),
                )
            })?;
            if v.shape() != want {
                return Err(Error::shape(OP, format!("{want:?}"), v.shape()));
            }
        }
        Ok(())
    }

    /// Folds the adapter into the frozen weight, `W ← W + s·B·A`, and detaches it: the layer
    /// then computes the adapted function without reading `trainable` (dropout aside, which
    /// inference does not use). A layer without an adapter is unchanged.
    ///
    /// A packed weight is widened to a dense one first: `W + s·B·A` is not representable in the
    /// block format without re-quantising, which would change the function. Only the layers that
    /// carry an adapter grow (to `out·in` floats); the others stay packed.
    ///
    /// # Errors
    /// As [`FrozenLinear::check_adapter`]; the layer is unchanged then.
    pub fn merge_adapter(&mut self, trainable: &Trainable<F>, lora: &LoraConfig) -> Result<()> {
        self.check_adapter(trainable, lora)?;
        if self.adapter.is_some() {
            self.weight = FrozenWeight::Dense(self.merged_weight(trainable, lora));
            self.panels.clear();
            self.adapter = None;
        }
        Ok(())
    }

    /// The weight with the adapter merged in: `W + s·B·A` (for inference without the adapter), in
    /// `F` (a packed weight is widened).
    ///
    /// # Shapes
    /// - `[out, in]`
    pub fn merged_weight(&self, trainable: &Trainable<F>, lora: &LoraConfig) -> Array2<F> {
        let Some(slot) = self.adapter else {
            return self.weight.to_dense();
        };
        let view2 = |i: usize| {
            trainable
                .value(i)
                .view()
                .into_dimensionality::<Ix2>()
                .expect("adapters are matrices")
        };
        let mut w = self.weight.to_dense();
        ndarray::linalg::general_mat_mul(
            F::from_f64(lora.scale()),
            &view2(slot.b),
            &view2(slot.a),
            F::one(),
            &mut w,
        );
        w
    }
}

/// An inverted-dropout mask shaped like the activation: entries 0 with probability `p`, else
/// `1/(1−p)`; drawn from the `Dropout` stream keyed by `key` and the adapter's unit.
pub fn dropout_mask<F: Float, D: Dimension>(
    shape: D,
    p: f64,
    key: &DropoutKey,
    unit: usize,
) -> Array<F, D> {
    let mut parts = key.parts.clone();
    parts.push(unit as u64);
    let mut rng = KeyedRng::new(key.seed, Domain::Dropout, &parts);
    let keep = F::from_f64(1.0 / (1.0 - p));
    Array::from_shape_simple_fn(shape, || if rng.uniform() < p { F::zero() } else { keep })
}

/// Folds the adapters of all `linears` into their weights, checking every one first so that a
/// mismatched registry leaves all of them unchanged.
///
/// # Errors
/// As [`FrozenLinear::check_adapter`].
pub fn merge_all_adapters<F: Float>(
    linears: Vec<&mut FrozenLinear<F>>,
    trainable: &Trainable<F>,
    lora: &LoraConfig,
) -> Result<()> {
    for lin in &linears {
        lin.check_adapter(trainable, lora)?;
    }
    for lin in linears {
        lin.merge_adapter(trainable, lora)?;
    }
    Ok(())
}
