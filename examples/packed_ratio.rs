//! What keeping frozen weights packed costs in time: at SmolLM2-135M sizes (batch 4 × sequence
//! 256 = 1024 rows, one tangent direction), the median time of a packed product (each tile widened
//! once for the primal and the tangent rows) over the dense product on the widened matrix, for
//! every packed format; and the fused LM-head loss with the Q8_0 head against the dense head.
//! Runs alternate between the two sides, so a busy machine slows both alike.
//!
//! ```text
//! cargo run --release --example packed_ratio [-- --reps 5]
//! ```

use clap::Parser;
use ndarray::{Array2, Array3};
use spry::Dual;
use spry::io::{PackedFormat, PackedMatrix};
use spry::kernels::{FrozenWeight, frozen_linear, lm_head_cross_entropy};
use spry::models::llama::LOSS_CHUNK_ROWS;
use spry::recipes::bundled::median_time;
use spry::rng::{Domain, KeyedRng};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Timed repetitions (median reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

/// Random stored bytes of a `[rows, cols]` matrix (scales in ±0.1, random quants).
fn packed(format: PackedFormat, rows: usize, cols: usize, rng: &mut KeyedRng) -> PackedMatrix {
    let (block, block_bytes) = format.block_layout();
    let scale = |rng: &mut KeyedRng| half::f16::from_f64(rng.uniform_in(-0.1, 0.1));
    let mut bytes = Vec::with_capacity(rows * cols / block * block_bytes);
    for _ in 0..rows * cols / block {
        match format {
            PackedFormat::F16 => bytes.extend(scale(rng).to_bits().to_le_bytes()),
            PackedFormat::BF16 => bytes.extend(
                half::bf16::from_f64(rng.uniform_in(-0.1, 0.1))
                    .to_bits()
                    .to_le_bytes(),
            ),
            _ => {
                bytes.extend(scale(rng).to_bits().to_le_bytes());
                bytes.extend((2..block_bytes).map(|_| rng.below(256) as u8));
            }
        }
    }
    PackedMatrix::new(format, rows, cols, bytes).expect("whole blocks")
}

fn random(shape: (usize, usize), rng: &mut KeyedRng) -> Array2<f32> {
    let mut a = Array2::zeros(shape);
    rng.fill_normal(a.as_slice_mut().expect("standard"));
    a
}

/// Median times of `a` and `b`, runs interleaved.
fn ab(reps: usize, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    a();
    b();
    for _ in 0..reps {
        ta.push(median_time(0, 1, &mut a).as_secs_f64());
        tb.push(median_time(0, 1, &mut b).as_secs_f64());
    }
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    (med(ta), med(tb))
}

fn main() {
    let args = Args::parse();
    let mut rng = KeyedRng::new(0, Domain::Data, &[]);
    let (n, h, ffn, vocab) = (1024, 576, 1536, 49152);
    println!(
        "products at N = {n} rows + K = 1 tangent (ms, median of {})",
        args.reps
    );
    for (name, out, inp) in [("up [1536, 576]", ffn, h), ("down [576, 1536]", h, ffn)] {
        let x = Dual::new(
            random((n, inp), &mut rng),
            random((n, inp), &mut rng)
                .into_shape_with_order((1, n, inp))
                .expect("one direction"),
        )
        .expect("shapes");
        for format in [
            PackedFormat::Q4_1,
            PackedFormat::Q4_0,
            PackedFormat::Q8_0,
            PackedFormat::F16,
            PackedFormat::BF16,
        ] {
            let p = FrozenWeight::Packed(packed(format, out, inp, &mut rng));
            let d = FrozenWeight::Dense(p.to_dense());
            let (tp, td) = ab(
                args.reps,
                || {
                    frozen_linear(&x, &p, None).expect("packed");
                },
                || {
                    frozen_linear(&x, &d, None).expect("dense");
                },
            );
            println!(
                "{name:<18} {format:<5} packed {:>7.2}  dense {:>7.2}  ratio {:.2}",
                tp * 1e3,
                td * 1e3,
                tp / td
            );
        }
    }
    let hidden = Dual::new(
        random((n, h), &mut rng),
        Array3::from_shape_vec(
            (1, n, h),
            random((n, h), &mut rng).into_raw_vec_and_offset().0,
        )
        .expect("one direction"),
    )
    .expect("shapes");
    let targets: Vec<i64> = (0..n).map(|i| (i * 7919 % vocab) as i64).collect();
    let p = FrozenWeight::Packed(packed(PackedFormat::Q8_0, vocab, h, &mut rng));
    let d = FrozenWeight::Dense(p.to_dense());
    for rows in [LOSS_CHUNK_ROWS, 256, n] {
        let (tp, td) = ab(
            args.reps,
            || {
                lm_head_cross_entropy(&hidden, &p, &targets, -100, rows).expect("packed");
            },
            || {
                lm_head_cross_entropy(&hidden, &d, &targets, -100, rows).expect("dense");
            },
        );
        println!(
            "LM head + CE [49152, 576] Q8_0, {rows:>4} rows per GEMM: packed {:>7.1}  dense {:>7.1}  ratio {:.2}",
            tp * 1e3,
            td * 1e3,
            tp / td
        );
    }
}
