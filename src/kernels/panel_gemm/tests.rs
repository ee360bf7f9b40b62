//! The panel GEMM against a naive f64 product, across kernels, shapes and thread counts.

use ndarray::{Array1, Array2};
use proptest::prelude::*;

use super::{Kernel, PanelWeight};

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

/// `x·Wᵀ + b` in f64.
fn naive(x: &Array2<f32>, w: &Array2<f32>, b: Option<&Array1<f32>>) -> Array2<f64> {
    let (n, inn) = x.dim();
    let out = w.nrows();
    Array2::from_shape_fn((n, out), |(i, j)| {
        let mut s = b.map_or(0.0, |b| f64::from(b[j]));
        for k in 0..inn {
            s += f64::from(x[[i, k]]) * f64::from(w[[j, k]]);
        }
        s
    })
}

fn kernels() -> Vec<Kernel> {
    [Kernel::Avx512, Kernel::Avx2]
        .into_iter()
        .filter(|k| k.is_available())
        .collect()
}

fn check(n: usize, inn: usize, out: usize, with_bias: bool, seed: u64) {
    let x = filled(n, inn, seed);
    let w = filled(out, inn, seed + 1);
    let b = with_bias.then(|| filled(1, out, seed + 2).into_shape_with_order(out).unwrap());
    let want = naive(&x, &w, b.as_ref());
    for kernel in kernels() {
        let pw = PanelWeight::with_kernel(w.view(), kernel).unwrap();
        assert_eq!(pw.to_dense(), w, "{kernel:?}: panels round-trip");
        let one = pw.matmul_t_threads(x.view(), b.as_ref().map(|b| b.view()), 1);
        for (g, e) in one.iter().zip(&want) {
            // |error| ≤ in · 2⁻²³ · Σ|x·w| ≤ in · in · 2⁻²³ (values in [-1, 1])
            let tol = 1e-6 * (inn as f64 + 1.0) * (inn as f64 + 1.0).sqrt() + 1e-6;
            assert!(
                (f64::from(*g) - e).abs() <= tol,
                "{kernel:?} n={n} in={inn} out={out}: {g} vs {e}"
            );
        }
        // many short k-blocks: the same sums, split differently
        let small = PanelWeight::with_blocking(w.view(), kernel, 7).unwrap();
        assert_eq!(small.to_dense(), w, "{kernel:?}: kc = 7 panels round-trip");
        let blocked = small.matmul_t_threads(x.view(), b.as_ref().map(|b| b.view()), 2);
        for (g, e) in blocked.iter().zip(&want) {
            let tol = 1e-6 * (inn as f64 + 1.0) * (inn as f64 + 1.0).sqrt() + 1e-6;
            assert!(
                (f64::from(*g) - e).abs() <= tol,
                "{kernel:?} kc = 7: {g} vs {e}"
            );
        }
        for threads in [2, 3, 7] {
            let many = pw.matmul_t_threads(x.view(), b.as_ref().map(|b| b.view()), threads);
            assert!(
                one.iter()
                    .zip(&many)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{kernel:?}: {threads} threads differ from 1"
            );
        }
    }
}

#[test]
fn edge_tiles_and_k_blocks() {
    for &(n, inn, out) in &[
        (1, 1, 1),
        (6, 16, 16),
        (7, 17, 33),
        (12, 256, 32),
        (13, 257, 31),
        (145, 300, 50),
        (300, 513, 70),
        (0, 5, 3),
        (4, 0, 3),
        (4, 5, 0),
    ] {
        check(n, inn, out, false, (n * 1000 + inn * 10 + out) as u64);
        check(n, inn, out, true, (n * 1000 + inn * 10 + out) as u64 + 7);
    }
}

#[test]
fn the_avx2_kernel_runs_where_avx512_is_present() {
    // `kernels()` holds every kernel the CPU runs, so on an AVX-512 machine both are checked;
    // this test states it for the record.
    if Kernel::Avx512.is_available() {
        assert!(kernels().contains(&Kernel::Avx2));
    }
    if let Some(k) = Kernel::detect() {
        assert!(kernels().contains(&k));
    }
}

#[test]
fn big_shapes_threads_agree() {
    check(1024, 384, 384, true, 11);
    check(200, 1536, 384, false, 12);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]
    #[test]
    fn matches_naive_f64(n in 1usize..100, inn in 1usize..100, out in 1usize..100, bias in any::<bool>(), seed in 0u64..1000) {
        check(n, inn, out, bias, seed);
    }
}

#[test]
fn panels_from_rows_equal_panels_from_the_matrix() {
    for kernel in kernels() {
        // one k-block and several (in > KC), edge panels (out not a multiple of NR)
        for (out, inn) in [(5, 7), (33, 40), (70, 800)] {
            let w = filled(out, inn, (out * inn) as u64);
            let whole = PanelWeight::with_kernel(w.view(), kernel).unwrap();
            // a reused, dirty buffer of the wrong size
            let storage = vec![f32::NAN; 3];
            let rows = PanelWeight::from_rows(kernel, (out, inn), storage, |r, buf| {
                buf.copy_from_slice(w.row(r).as_slice().unwrap())
            })
            .unwrap();
            assert_eq!(rows, whole, "{kernel:?} [{out}, {inn}]");
            let storage = rows.into_storage();
            let again = PanelWeight::from_rows(kernel, (out, inn), storage, |r, buf| {
                buf.copy_from_slice(w.row(r).as_slice().unwrap())
            })
            .unwrap();
            assert_eq!(again, whole);
        }
    }
}
