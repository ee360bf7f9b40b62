//! Kernel workloads at MiniLM sizes (hidden 384, 12 heads, FFN 1536, batch 8, sequence 128),
//! shared by the criterion benches (`benches/kernels.rs`) and the ratio printer
//! (`examples/kernel_ratios.rs`), so both measure exactly the same calls.
#![allow(dead_code)]

pub mod timing;

use ndarray::{Array, Array1, Array2, Dimension, Ix3};
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
pub fn activation(width: usize, k: Option<usize>, seed: u64) -> Dual<f32, Ix3> {
    activation_at(SEQ, width, k, seed)
}

/// A dual activation `[B, seq, width]` with K directions (or a symbolic zero).
pub fn activation_at(seq: usize, width: usize, k: Option<usize>, seed: u64) -> Dual<f32, Ix3> {
    let p = array(Ix3(BATCH, seq, width), seed);
    match k {
        None => Dual::constant(p),
        Some(k) => {
            let t = array(ndarray::Ix4(k, BATCH, seq, width), seed + 1);
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

fn lora_case(k: Option<usize>) -> Box<dyn FnMut()> {
    // Spry's typical case: activation tangents flow in, this layer's adapters are perturbed too
    let x = activation(HIDDEN, k, 7);
    let w: Array2<f32> = array(ndarray::Ix2(HIDDEN, HIDDEN), 8);
    let a_p: Array2<f32> = array(ndarray::Ix2(LORA_RANK, HIDDEN), 9);
    let b_p: Array2<f32> = array(ndarray::Ix2(HIDDEN, LORA_RANK), 10);
    let (a, b) = match k {
        None => (Dual::constant(a_p), Dual::constant(b_p)),
        Some(k) => (
            Dual::new(a_p, array(ndarray::Ix3(k, LORA_RANK, HIDDEN), 11)).expect("shape"),
            Dual::new(b_p, array(ndarray::Ix3(k, HIDDEN, LORA_RANK), 12)).expect("shape"),
        ),
    };
    Box::new(move || {
        std::hint::black_box(
            spry::kernels::lora_linear(&x, w.view(), None, &a, &b, 2.0, None).unwrap(),
        );
    })
}

fn layer_norm_case(k: Option<usize>) -> Box<dyn FnMut()> {
    let x = activation(HIDDEN, k, 13);
    let g: Array1<f32> = array(ndarray::Ix1(HIDDEN), 14);
    let b: Array1<f32> = array(ndarray::Ix1(HIDDEN), 15);
    Box::new(move || {
        std::hint::black_box(
            spry::kernels::layer_norm(&x, g.view(), Some(b.view()), 1e-12).unwrap(),
        );
    })
}

fn gelu_case(k: Option<usize>) -> Box<dyn FnMut()> {
    let x = activation(FFN, k, 16);
    Box::new(move || {
        std::hint::black_box(spry::kernels::gelu(&x, spry::kernels::GeluKind::Erf).unwrap());
    })
}

fn softmax_case(k: Option<usize>) -> Box<dyn FnMut()> {
    let x = activation(SEQ, k, 17);
    Box::new(move || {
        std::hint::black_box(spry::kernels::softmax(&x).unwrap());
    })
}

fn attention_case(k: Option<usize>) -> Box<dyn FnMut()> {
    attention_call(AttentionInputs::new(SEQ, k, false))
}

fn attention_causal_case(k: Option<usize>) -> Box<dyn FnMut()> {
    attention_call(AttentionInputs::new(SEQ, k, true))
}

/// q and v dual, k a symbolic zero: the first perturbed layer of a client with LoRA on query
/// and value (the tangent enters at q and v only).
fn attention_qv_case(k: Option<usize>) -> Box<dyn FnMut()> {
    let mut x = AttentionInputs::new(SEQ, k, false);
    x.k = Dual::constant(x.k.primal().clone());
    attention_call(x)
}

fn attention_call(x: AttentionInputs) -> Box<dyn FnMut()> {
    Box::new(move || {
        std::hint::black_box(x.run());
    })
}

/// MiniLM attention inputs at some sequence length: 12 heads of 32, an all-true key mask.
pub struct AttentionInputs {
    /// Queries `[B, seq, HIDDEN]`.
    pub q: Dual<f32, Ix3>,
    /// Keys `[B, seq, HIDDEN]`.
    pub k: Dual<f32, Ix3>,
    /// Values `[B, seq, HIDDEN]`.
    pub v: Dual<f32, Ix3>,
    /// Key mask `[B, seq]`, all true.
    pub mask: Array2<bool>,
    /// 12 heads of 32.
    pub shape: spry::kernels::AttentionShape,
}

impl AttentionInputs {
    /// q, k, v all dual with K directions (or all symbolic zeros).
    pub fn new(seq: usize, k: Option<usize>, causal: bool) -> Self {
        AttentionInputs {
            q: activation_at(seq, HIDDEN, k, 18),
            k: activation_at(seq, HIDDEN, k, 19),
            v: activation_at(seq, HIDDEN, k, 20),
            mask: Array2::from_elem((BATCH, seq), true),
            shape: spry::kernels::AttentionShape {
                n_heads: HEADS,
                n_kv_heads: HEADS,
                head_dim: HIDDEN / HEADS,
                causal,
            },
        }
    }

    /// One attention call.
    pub fn run(&self) -> Dual<f32, Ix3> {
        spry::kernels::attention(
            &self.q,
            &self.k,
            &self.v,
            Some(self.mask.view()),
            &self.shape,
        )
        .unwrap()
    }
}

fn cross_entropy_case(k: Option<usize>) -> Box<dyn FnMut()> {
    // a vocabulary-sized head: [B·T, 30522] logits would be 125 MB, so use 1024 rows of 4096 classes
    let p: Array2<f32> = array(ndarray::Ix2(1024, 4096), 21);
    let logits = match k {
        None => Dual::constant(p),
        Some(k) => Dual::new(p, array(ndarray::Ix3(k, 1024, 4096), 22)).expect("shape"),
    };
    let targets: Vec<i64> = (0..1024).map(|i| (i * 37 % 4096) as i64).collect();
    Box::new(move || {
        std::hint::black_box(spry::kernels::cross_entropy(&logits, &targets, -100).unwrap());
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
        KernelCase {
            name: "lora r=8 384->384 (dual A,B)",
            prepare: lora_case,
        },
        KernelCase {
            name: "layer_norm 384",
            prepare: layer_norm_case,
        },
        KernelCase {
            name: "gelu erf 1536",
            prepare: gelu_case,
        },
        KernelCase {
            name: "softmax rows of 128",
            prepare: softmax_case,
        },
        KernelCase {
            name: "attention 12 heads (q,k,v dual)",
            prepare: attention_case,
        },
        KernelCase {
            name: "attention 12 heads (q,v dual)",
            prepare: attention_qv_case,
        },
        KernelCase {
            name: "attention causal (q,k,v dual)",
            prepare: attention_causal_case,
        },
        KernelCase {
            name: "cross_entropy 1024x4096",
            prepare: cross_entropy_case,
        },
    ]
}
