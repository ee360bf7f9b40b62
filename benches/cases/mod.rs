//! Kernel workloads at MiniLM sizes (hidden 384, 12 heads, FFN 1536, batch 8, sequence 128),
//! shared by the criterion benches (`benches/kernels.rs`) and the ratio printer
//! (`examples/kernel_ratios.rs`), so both measure exactly the same calls.
#![allow(dead_code)]

use ndarray::{Array, Array1, Array2, Dimension, IxDyn};
use spry::Dual;

/// MiniLM geometry.
pub const BATCH: usize = 8;
/// Sequence length.
pub const SEQ: usize = 128;
/// Hidden size.
pub const HIDDEN: usize = 384;
/// Attention heads.
pub const HEADS: usize = 12;
/// Feed-forward size.
pub const FFN: usize = 1536;
/// LoRA rank used by the LoRA workload.
pub const LORA_RANK: usize = 8;

/// One kernel workload: `prepare(None)` builds inputs with symbolic-zero tangents (the plain
/// forward), `prepare(Some(k))` with K tangent directions; each returns the call to time.
pub struct KernelCase {
    /// Kernel name as printed.
    pub name: &'static str,
    /// Builds the inputs and returns a closure running the kernel once.
    pub prepare: fn(Option<usize>) -> Box<dyn FnMut()>,
}

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG; benches need no statistics).
pub fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// An array of the given shape filled with [`values`].
pub fn array<D: Dimension>(shape: D, seed: u64) -> Array<f32, D> {
    let n = shape.size();
    Array::from_shape_vec(shape, values(n, seed)).expect("size matches")
}

/// A dual activation `[B, T, width]` with K directions (or a symbolic zero).
pub fn activation(width: usize, k: Option<usize>, seed: u64) -> Dual<f32, ndarray::Ix3> {
    let p = array(ndarray::Ix3(BATCH, SEQ, width), seed);
    match k {
        None => Dual::constant(p),
        Some(k) => {
            let t = array(ndarray::Ix4(k, BATCH, SEQ, width), seed + 1);
            Dual::new(p, t).expect("consistent")
        }
    }
}

fn linear_case(k: Option<usize>) -> Box<dyn FnMut()> {
    let x = activation(HIDDEN, k, 1);
    let w: Array2<f32> = array(ndarray::Ix2(HIDDEN, HIDDEN), 3);
    let b: Array1<f32> = array(ndarray::Ix1(HIDDEN), 4);
    Box::new(move || {
        std::hint::black_box(spry::kernels::linear(&x, w.view(), Some(b.view())).unwrap());
    })
}

fn linear_ffn_case(k: Option<usize>) -> Box<dyn FnMut()> {
    let x = activation(HIDDEN, k, 5);
    let w: Array2<f32> = array(ndarray::Ix2(FFN, HIDDEN), 6);
    Box::new(move || {
        std::hint::black_box(spry::kernels::linear(&x, w.view(), None).unwrap());
    })
}

/// Every kernel workload, in the order they are printed.
pub fn all() -> Vec<KernelCase> {
    vec![
        KernelCase {
            name: "linear 384->384 (frozen)",
            prepare: linear_case,
        },
        KernelCase {
            name: "linear 384->1536 (frozen)",
            prepare: linear_ffn_case,
        },
    ]
}

/// Keeps `IxDyn` in scope for workloads that need dynamic shapes.
pub type Dyn = IxDyn;
