//! A native f32 GEMM for frozen linear weights, with the weight packed once.
//!
//! A frozen linear computes `y = x·Wᵀ (+ b)`, `W` `[out, in]` (Hugging Face layout), `x`
//! `[N, in]` (N rows, or K·rows with the K tangents stacked). `B = Wᵀ` never changes, so
//! [`PanelWeight`] packs it once into the microkernel's panel layout (`pack.rs`); each call packs
//! only `x`, a block of rows at a time. The loops are BLIS's (k-blocks, row blocks, column
//! panels, row micro-panels) around a register-blocked microkernel chosen at run time:
//!
//! - [`Kernel::Avx512`]: 8 × 32 tiles, AVX-512F (`avx512.rs`; 8 rows measured faster than 6
//!   or 12);
//! - [`Kernel::Avx2`]: 6 × 16 tiles, AVX2 + FMA (`avx2.rs`).
//!
//! On a CPU with neither, [`PanelWeight::new`] returns `None` and callers keep the
//! `matrixmultiply` path.
//!
//! Determinism: every element of `C` is `(((b +) Σ_{block 0}) + Σ_{block 1}) + …` with each
//! k-block's sum accumulated in `k` order by one FMA chain, whatever tile, row block or thread it
//! falls in (zero-padded rows and columns touch no real element). The rows are split between
//! threads, so the result is bit-identical for any thread count.

mod avx2;
mod avx512;
mod pack;

use std::mem::MaybeUninit;

use ndarray::{Array2, ArrayView1, ArrayView2};

use super::buffer;
use crate::parallel;

/// Values of the inner dimension per k-block. A B micro-panel is `KC·NR` values (24 KiB for
/// NR = 16, 48 KiB for NR = 32, past Zen 4's 32 KiB L1), yet 384 measured faster than 192 and
/// 256 on the MiniLM and 7B shapes (`examples/gemm_backends`), and keeps `in = 384` one block.
const KC: usize = 384;
/// Rows per packed A block (`MC × KC` values, 216 KiB: stays in L2). A multiple of every MR.
const MC: usize = 144;
/// Rows of the AVX-512 tile (16 `zmm` accumulators).
const MR_512: usize = 8;
/// Multiply-adds below which one more thread is not worth starting.
const MIN_MACS_PER_THREAD: usize = 1 << 21;

/// A register-blocked microkernel: `C[MR, NR] (+)= A_panel[kc, MR]ᵀ · B_panel[kc, NR]`.
pub(super) trait Micro {
    /// Rows of the tile.
    const MR: usize;
    /// Columns of the tile.
    const NR: usize;

    /// Computes one tile: `C ← A·B` (`add == false`) or `C ← C + A·B` (`add == true`).
    ///
    /// # Safety
    /// The CPU supports the kernel's instruction set; `a` holds `kc·MR` values (k-major), `b`
    /// holds `kc·NR` values (k-major), and `c` points to an `MR × NR` block with row stride `ldc`
    /// valid for reads (if `add`) and writes, aliasing neither.
    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool);
}

/// Which microkernel a [`PanelWeight`] is packed for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kernel {
    /// 8 × 32 tiles, AVX-512F.
    Avx512,
    /// 6 × 16 tiles, AVX2 + FMA.
    Avx2,
}

impl Kernel {
    /// The best kernel this CPU runs, or `None` (no AVX2 + FMA, or not x86-64).
    pub fn detect() -> Option<Kernel> {
        [Kernel::Avx512, Kernel::Avx2]
            .into_iter()
            .find(|k| k.is_available())
    }

    /// Whether this CPU runs the kernel.
    pub fn is_available(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            match self {
                Kernel::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
                Kernel::Avx2 => {
                    std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Columns per panel.
    fn nr(self) -> usize {
        match self {
            Kernel::Avx512 => <avx512::Avx512<MR_512> as Micro>::NR,
            Kernel::Avx2 => <avx2::Avx2 as Micro>::NR,
        }
    }
}

/// A frozen weight `W` `[out, in]` packed once as `Wᵀ` panels for [`Kernel`]'s tiles.
///
/// Holds only the panels (`in · ⌈out/NR⌉ · NR` values: the weight plus at most `NR − 1` zero
/// columns); rows of `W` are read back with [`PanelWeight::row_into`].
#[derive(Clone, Debug, PartialEq)]
pub struct PanelWeight {
    /// The panels, see `pack::pack_b`.
    panels: Vec<f32>,
    /// Values of the inner dimension per k-block.
    kc: usize,
    /// `(out, in)` of `W`.
    dim: (usize, usize),
    kernel: Kernel,
}

impl PanelWeight {
    /// Packs `w` `[out, in]` for this CPU's best kernel, or `None` if it has none.
    pub fn new(w: ArrayView2<'_, f32>) -> Option<PanelWeight> {
        Kernel::detect().and_then(|k| PanelWeight::with_kernel(w, k))
    }

    /// Packs `w` `[out, in]` for `kernel`, or `None` if this CPU does not run it.
    pub fn with_kernel(w: ArrayView2<'_, f32>, kernel: Kernel) -> Option<PanelWeight> {
        PanelWeight::with_blocking(w, kernel, KC)
    }

    /// [`PanelWeight::with_kernel`] with `kc` values of the inner dimension per k-block (for
    /// measurements; the result does not depend on it beyond f32 rounding).
    #[doc(hidden)]
    pub fn with_blocking(w: ArrayView2<'_, f32>, kernel: Kernel, kc: usize) -> Option<PanelWeight> {
        let kc = kc.max(1);
        kernel.is_available().then(|| PanelWeight {
            panels: pack::pack_b(w, kernel.nr(), kc),
            kc,
            dim: w.dim(),
            kernel,
        })
    }

    /// Packs a `[out, in]` matrix given row by row for `kernel` (`None` if this CPU does not run
    /// it): `row(r, buf)` writes row `r` (`in` values) into `buf`, once per row, so a packed
    /// (quantised) weight is widened straight into panel layout. `storage` becomes the panels'
    /// buffer (resized; pass [`PanelWeight::into_storage`] of an earlier one to reuse it).
    pub fn from_rows(
        kernel: Kernel,
        (out, inn): (usize, usize),
        mut storage: Vec<f32>,
        row: impl FnMut(usize, &mut [f32]),
    ) -> Option<PanelWeight> {
        if !kernel.is_available() {
            return None;
        }
        pack::pack_b_rows(out, inn, kernel.nr(), KC, &mut storage, row);
        Some(PanelWeight {
            panels: storage,
            kc: KC,
            dim: (out, inn),
            kernel,
        })
    }

    /// The panels' buffer, to reuse for the next [`PanelWeight::from_rows`].
    pub fn into_storage(self) -> Vec<f32> {
        self.panels
    }

    /// `(out, in)` of `W`.
    pub fn dim(&self) -> (usize, usize) {
        self.dim
    }

    /// The kernel the panels are laid out for.
    pub fn kernel(&self) -> Kernel {
        self.kernel
    }

    /// Bytes of the panels.
    pub fn n_bytes(&self) -> usize {
        self.panels.len() * size_of::<f32>()
    }

    /// Writes row `r` of `W` (`in` values) into `out`.
    ///
    /// # Panics
    /// If `r ≥ out` or `out.len() ≠ in`.
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        assert!(r < self.dim.0 && out.len() == self.dim.1, "row_into: shape");
        pack::unpack_row(&self.panels, self.dim.0, self.kernel.nr(), self.kc, r, out);
    }

    /// `W` `[out, in]` rebuilt from the panels.
    pub fn to_dense(&self) -> Array2<f32> {
        let (out, inn) = self.dim;
        let mut w = Array2::zeros((out, inn));
        for (r, mut row) in w.outer_iter_mut().enumerate() {
            self.row_into(r, row.as_slice_mut().expect("standard layout"));
        }
        w
    }

    /// `y = x·Wᵀ (+ b)` on up to [`parallel::available_workers`] threads (one inside a worker of
    /// another fan-out).
    ///
    /// # Shapes
    /// - `x`: `[n, in]` (any strides), `bias`: `[out]`, result `[n, out]`
    ///
    /// # Panics
    /// If `x` is not `[_, in]` or `bias` is not `[out]`.
    pub fn matmul_t(
        &self,
        x: ArrayView2<'_, f32>,
        bias: Option<ArrayView1<'_, f32>>,
    ) -> Array2<f32> {
        self.matmul_t_threads(x, bias, parallel::worker_budget())
    }

    /// [`PanelWeight::matmul_t`] on at most `threads` threads (the result does not depend on it).
    ///
    /// # Panics
    /// As [`PanelWeight::matmul_t`].
    pub fn matmul_t_threads(
        &self,
        x: ArrayView2<'_, f32>,
        bias: Option<ArrayView1<'_, f32>>,
        threads: usize,
    ) -> Array2<f32> {
        let (out, inn) = self.dim;
        let n = x.nrows();
        assert_eq!(x.ncols(), inn, "PanelWeight::matmul_t: x is not [_, in]");
        if let Some(b) = &bias {
            assert_eq!(b.len(), out, "PanelWeight::matmul_t: bias is not [out]");
        }
        if inn == 0 {
            return match bias {
                Some(b) => super::gemm::broadcast_rows(b, n),
                None => Array2::zeros((n, out)),
            };
        }
        if let Some(b) = bias {
            // C = bias rows, then every k-block adds onto them
            let mut c = super::gemm::broadcast_rows(b, n);
            let c_slice = c.as_slice_mut().expect("standard layout");
            // SAFETY: `MaybeUninit<f32>` has `f32`'s layout, and `run` only writes initialised
            // values through the slice, so `c` stays initialised.
            let c_uninit = unsafe {
                std::slice::from_raw_parts_mut(
                    c_slice.as_mut_ptr().cast::<MaybeUninit<f32>>(),
                    c_slice.len(),
                )
            };
            self.dispatch(x, true, c_uninit, threads);
            c
        } else {
            // C written by the first k-block (every tile stored), then added onto
            let mut c = buffer::uninit::<f32, _>((n, out));
            self.dispatch(
                x,
                false,
                c.as_slice_mut().expect("standard layout"),
                threads,
            );
            // SAFETY: `run`'s first k-block stored every element of `c`.
            unsafe { c.assume_init() }
        }
    }

    /// [`PanelWeight::run`] with the microkernel the panels were packed for.
    fn dispatch(
        &self,
        x: ArrayView2<'_, f32>,
        has_bias: bool,
        c: &mut [MaybeUninit<f32>],
        threads: usize,
    ) {
        match self.kernel {
            Kernel::Avx512 => self.run::<avx512::Avx512<MR_512>>(x, has_bias, c, threads),
            Kernel::Avx2 => self.run::<avx2::Avx2>(x, has_bias, c, threads),
        }
    }

    /// Splits the rows of `c` `[n, out]` between threads and runs [`PanelWeight::rows`] on each.
    fn run<K: Micro>(
        &self,
        x: ArrayView2<'_, f32>,
        has_bias: bool,
        c: &mut [MaybeUninit<f32>],
        threads: usize,
    ) {
        let (out, inn) = self.dim;
        let n = x.nrows();
        let micro_panels = n.div_ceil(K::MR);
        let by_work = (n * out * inn / MIN_MACS_PER_THREAD).max(1);
        let parts = threads.clamp(1, micro_panels.max(1)).min(by_work);
        // contiguous row ranges, MR-aligned so that each part's tiles start on a full tile
        let per = micro_panels.div_ceil(parts) * K::MR;
        let mut jobs = Vec::with_capacity(parts);
        let mut rest = c;
        for p in 0..parts {
            let r0 = (p * per).min(n);
            let r1 = ((p + 1) * per).min(n);
            let (head, tail) = std::mem::take(&mut rest).split_at_mut((r1 - r0) * out);
            jobs.push((r0..r1, head));
            rest = tail;
        }
        parallel::run(jobs, |(rows, c)| {
            self.rows::<K>(x, rows.start, rows.len(), has_bias, c);
        });
    }

    /// `C[rows r0..r0 + m] (+)= x[r0..r0 + m] · Wᵀ`, all k-blocks, on the calling thread.
    fn rows<K: Micro>(
        &self,
        x: ArrayView2<'_, f32>,
        r0: usize,
        m: usize,
        has_bias: bool,
        c: &mut [MaybeUninit<f32>],
    ) {
        let (out, inn) = self.dim;
        let (mr, nr) = (K::MR, K::NR);
        let n_panels = out.div_ceil(nr);
        let c = c.as_mut_ptr().cast::<f32>();
        let mut a_pack = vec![0.0f32; MC.div_ceil(mr) * mr * self.kc];
        let mut edge = vec![0.0f32; mr * nr];
        // k-blocks p: B block [kc, n_panels·nr], pre-packed
        for p0 in (0..inn).step_by(self.kc) {
            let kc = self.kc.min(inn - p0);
            let b_block = &self.panels[p0 * n_panels * nr..(p0 + kc) * n_panels * nr];
            let add = has_bias || p0 > 0;
            // row blocks i: A block [mc, kc] packed into mr-row micro-panels (L2)
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                pack::pack_a(x, r0 + i0, mc, p0, kc, mr, &mut a_pack);
                // column panels j: B micro-panel [kc, nr] (L1), reused by every micro-panel of A
                for (j, b_panel) in b_block.chunks_exact(kc * nr).enumerate() {
                    let cols = nr.min(out - j * nr);
                    // row micro-panels i: one MR × NR tile of C each
                    for (i, a_panel) in a_pack[..mc.div_ceil(mr) * kc * mr]
                        .chunks_exact(kc * mr)
                        .enumerate()
                    {
                        let rows = mr.min(mc - i * mr);
                        // SAFETY: (i0 + i·mr, j·nr) is inside this part's [m, out] block of C.
                        let c_tile = unsafe { c.add((i0 + i * mr) * out + j * nr) };
                        if rows == mr && cols == nr {
                            // SAFETY: `self.kernel` was checked available when packing (and K is
                            // its Micro); a_panel/b_panel hold kc·mr / kc·nr values; the full
                            // tile lies inside C (row stride `out`), initialised if `add`.
                            unsafe {
                                K::tile(kc, a_panel.as_ptr(), b_panel.as_ptr(), c_tile, out, add)
                            };
                        } else {
                            // SAFETY: as above, into the mr × nr scratch tile `edge`.
                            unsafe {
                                K::tile(
                                    kc,
                                    a_panel.as_ptr(),
                                    b_panel.as_ptr(),
                                    edge.as_mut_ptr(),
                                    nr,
                                    false,
                                );
                            }
                            for r in 0..rows {
                                for (col, &v) in edge[r * nr..r * nr + cols].iter().enumerate() {
                                    // SAFETY: (r, col) < (rows, cols) is inside C's tile.
                                    unsafe {
                                        let dst = c_tile.add(r * out + col);
                                        *dst = if add { *dst + v } else { v };
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
