//! The AVX-512F microkernel: an `MR` × 32 tile of `C` in `2·MR` `zmm` accumulators.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m512, _mm512_add_ps, _mm512_fmadd_ps, _mm512_loadu_ps, _mm512_set1_ps, _mm512_setzero_ps,
    _mm512_storeu_ps,
};

use super::Micro;

/// `MR` rows × 32 columns (two `zmm` per row), AVX-512F.
pub(super) struct Avx512<const MR: usize>;

impl<const MR: usize> Micro for Avx512<MR> {
    const MR: usize = MR;
    const NR: usize = 32;

    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
        // SAFETY: the caller guarantees AVX-512F and the buffers (`Micro::tile`'s contract).
        unsafe { tile_mrx32::<MR>(kc, a, b, c, ldc, add) }
    }
}

/// `C[MR, 32] (+)= A_panel · B_panel` over `kc` steps.
///
/// # Safety
/// The CPU supports AVX-512F; `a` holds `kc·MR` values, `b` holds `kc·32` values, and `c`
/// points to an `MR` × 32 block with row stride `ldc` valid for reads (if `add`) and writes.
#[target_feature(enable = "avx512f")]
unsafe fn tile_mrx32<const MR: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    add: bool,
) {
    const NR: usize = 32;
    let mut acc: [[__m512; 2]; MR] = [[_mm512_setzero_ps(); 2]; MR];
    // SAFETY: every offset stays inside the extents the caller guarantees.
    unsafe {
        // k steps: acc[r][h] += A[r, k] · B[k, 16h..16h + 16]
        for k in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(k * NR));
            let b1 = _mm512_loadu_ps(b.add(k * NR + 16));
            let ak = a.add(k * MR);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ak.add(r));
                acc_r[0] = _mm512_fmadd_ps(av, b0, acc_r[0]);
                acc_r[1] = _mm512_fmadd_ps(av, b1, acc_r[1]);
            }
        }
        // rows r of C: store, or add onto what is there
        for (r, acc_r) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            for (h, &v) in acc_r.iter().enumerate() {
                let v = if add {
                    _mm512_add_ps(_mm512_loadu_ps(cr.add(16 * h)), v)
                } else {
                    v
                };
                _mm512_storeu_ps(cr.add(16 * h), v);
            }
        }
    }
}
