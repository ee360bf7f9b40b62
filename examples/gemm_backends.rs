//! GEMM backends side by side on the model's frozen-linear shapes: `y = x·Wᵀ`, `x` `[N, in]`,
//! `W` `[out, in]`, timed in one process with the backends alternated round by round.
//!
//! - `matrixmultiply`: what `kernels::gemm` runs today (both operands packed on every call);
//! - `panel`: `kernels::panel_gemm::PanelWeight`, `W` packed once, only `x` packed per call, with
//!   the CPU's best kernel (AVX-512F on a CPU that has it);
//! - `panel-avx2`: the same with the AVX2 + FMA kernel forced;
//! - `openblas` (built with `--features openblas`): the system's `cblas_sgemm`, the thread count
//!   from `OPENBLAS_NUM_THREADS`.
//!
//! Prints GFLOP/s from wall time and from process CPU time (the median round of each). The CPU
//! figure is FLOPs over CPU seconds times the thread count: what the wall rate would be if the
//! threads had their cores to themselves, so it is the one to read on a loaded machine. Without
//! `--threads`, runs itself once per thread count (1 and 2) in a child process, since
//! matrixmultiply reads its thread count (`MATMUL_NUM_THREADS`) once per process.
//!
//! Another backend is one more entry in [`backends`].
//!
//! ```text
//! cargo run --release --example gemm_backends [-- --rounds 7]
//! cargo run --release --features openblas --example gemm_backends [-- --rounds 7]
//! ```

use std::process::Command;
use std::time::Instant;

use clap::Parser;
use ndarray::{Array2, ArrayView2};
use spry::kernels::panel_gemm::{Kernel, PanelWeight};

/// Command-line options.
#[derive(Parser)]
struct Args {
    /// Threads of this run (without it: one child run per thread count, 1 and 2).
    #[arg(long)]
    threads: Option<usize>,
    /// Timed rounds per shape (each backend once per round, alternated; the median is printed).
    #[arg(long, default_value_t = 7)]
    rounds: usize,
    /// Skip the 7B-sized shapes.
    #[arg(long)]
    small: bool,
}

/// `y = x·Wᵀ` of one backend, prepared for one weight; the argument is the thread count.
type Product = Box<dyn Fn(ArrayView2<'_, f32>, usize) -> Array2<f32>>;

/// A named backend: prepares a product for a weight `[out, in]` (packing it if it wants), or
/// `None` where this CPU cannot run it.
struct Backend {
    name: &'static str,
    prepare: fn(&Array2<f32>) -> Option<Product>,
}

/// The backends compared, in column order.
fn backends() -> Vec<Backend> {
    #[allow(unused_mut)]
    let mut all = vec![
        Backend {
            name: "matrixmultiply",
            // the thread count is the process's MATMUL_NUM_THREADS
            prepare: |w| {
                let w = w.clone();
                Some(Box::new(move |x, _threads| matrixmultiply_nt(x, w.view())))
            },
        },
        Backend {
            name: "panel",
            prepare: |w| {
                let p = PanelWeight::new(w.view())?;
                Some(Box::new(move |x, threads| {
                    p.matmul_t_threads(x, None, threads)
                }))
            },
        },
        Backend {
            name: "panel-avx2",
            prepare: |w| {
                let p = PanelWeight::with_kernel(w.view(), Kernel::Avx2)?;
                Some(Box::new(move |x, threads| {
                    p.matmul_t_threads(x, None, threads)
                }))
            },
        },
    ];
    #[cfg(feature = "openblas")]
    all.push(Backend {
        name: "openblas",
        // `kernels::gemm` with the feature on; the thread count is OPENBLAS_NUM_THREADS
        prepare: |w| {
            let w = w.clone();
            Some(Box::new(move |x, _threads| {
                spry::kernels::gemm::matmul_nt(x, w.view())
            }))
        },
    });
    all
}

/// `x·Wᵀ` by `matrixmultiply::sgemm` itself, whatever backend `kernels::gemm` was built with.
fn matrixmultiply_nt(x: ArrayView2<'_, f32>, w: ArrayView2<'_, f32>) -> Array2<f32> {
    let x = x.as_standard_layout();
    let ((n, k), out) = (x.dim(), w.nrows());
    let mut y = Array2::<f32>::zeros((n, out));
    // SAFETY: x is [n, k] row-major, w is [out, k] with its own strides (read as Wᵀ [k, out]),
    // y is a fresh row-major [n, out].
    unsafe {
        matrixmultiply::sgemm(
            n,
            k,
            out,
            1.0,
            x.as_ptr(),
            k as isize,
            1,
            w.as_ptr(),
            w.strides()[1],
            w.strides()[0],
            0.0,
            y.as_mut_ptr(),
            out as isize,
            1,
        );
    }
    y
}

/// `(N, in, out)`: MiniLM's three products at B·T = 1024, then a 7B model's at 256 rows.
const SHAPES: [(usize, usize, usize); 5] = [
    (1024, 384, 384),
    (1024, 384, 1536),
    (1024, 1536, 384),
    (256, 4096, 4096),
    (256, 4096, 11008),
];

/// Process CPU time in seconds (all threads).
fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write into.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Deterministic values in [-1, 1).
fn filled(rows: usize, cols: usize, seed: u64) -> Array2<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    Array2::from_shape_fn((rows, cols), |_| {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args = Args::parse();
    let Some(threads) = args.threads else {
        let model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        println!("CPU: {model}");
        for t in [1, 2] {
            let mut cmd = Command::new(std::env::current_exe().expect("own path"));
            cmd.env("MATMUL_NUM_THREADS", t.to_string())
                .env("OPENBLAS_NUM_THREADS", t.to_string())
                .args([
                    "--threads",
                    &t.to_string(),
                    "--rounds",
                    &args.rounds.to_string(),
                ]);
            if args.small {
                cmd.arg("--small");
            }
            let status = cmd.status().expect("child run");
            assert!(status.success(), "child run with {t} threads failed");
        }
        return;
    };
    // the backends this CPU runs
    let probe = Array2::zeros((1, 1));
    let backends: Vec<Backend> = backends()
        .into_iter()
        .filter(|b| (b.prepare)(&probe).is_some())
        .collect();
    println!("\n{threads} thread(s), median of {} rounds", args.rounds);
    print!("{:<24}", "shape [N,in]·[in,out]");
    for b in &backends {
        print!(
            " {:>15} {:>15}",
            format!("{} wall", b.name),
            format!("{} cpu", b.name)
        );
    }
    println!("   (GFLOP/s)");
    for (i, &(n, inn, out)) in SHAPES.iter().enumerate() {
        if args.small && n * inn * out > 1 << 30 {
            continue;
        }
        let x = filled(n, inn, 2 * i as u64);
        let w = filled(out, inn, 2 * i as u64 + 1);
        let products: Vec<Product> = backends
            .iter()
            .map(|b| (b.prepare)(&w).expect("probed"))
            .collect();
        let flops = 2.0 * (n * inn * out) as f64;
        // calls per timing: about 0.2 s of work at 100 GFLOP/s
        let calls = ((2e10 / flops) as usize).max(1);
        let mut wall = vec![Vec::new(); products.len()];
        let mut cpu = vec![Vec::new(); products.len()];
        for p in &products {
            std::hint::black_box(p(x.view(), threads)); // warm-up
        }
        for _ in 0..args.rounds {
            for (b, p) in products.iter().enumerate() {
                let (t0, c0) = (Instant::now(), cpu_seconds());
                for _ in 0..calls {
                    std::hint::black_box(p(x.view(), threads));
                }
                let (dt, dc) = (t0.elapsed().as_secs_f64(), cpu_seconds() - c0);
                wall[b].push(flops * calls as f64 / dt / 1e9);
                // CPU time spread over `threads` cores: the rate one core-set would give
                cpu[b].push(flops * calls as f64 * threads as f64 / dc / 1e9);
            }
        }
        print!("{:<24}", format!("[{n},{inn}]·[{inn},{out}]"));
        for b in 0..products.len() {
            print!(
                " {:>15.1} {:>15.1}",
                median(wall[b].clone()),
                median(cpu[b].clone())
            );
        }
        println!();
    }
}
