//! The AVX2 + FMA microkernel: a 6 × 16 tile of `C` in twelve `ymm` accumulators.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::{
    __m256, _mm256_add_ps, _mm256_broadcast_ss, _mm256_fmadd_ps, _mm256_loadu_ps,
    _mm256_setzero_ps, _mm256_storeu_ps,
};

use super::Micro;

/// 6 rows × 16 columns (two `ymm` per row), AVX2 + FMA.
pub(super) struct Avx2;

impl Micro for Avx2 {
    const MR: usize = 6;
    const NR: usize = 16;

    unsafe fn tile(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
        // SAFETY: the caller guarantees AVX2 + FMA and the buffers (`Micro::tile`'s contract).
        unsafe { tile_6x16(kc, a, b, c, ldc, add) }
    }
}

/// `C[6, 16] (+)= A_panel · B_panel` over `kc` steps.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `a` holds `kc·6` values, `b` holds `kc·16` values, and `c`
/// points to a 6 × 16 block with row stride `ldc` valid for reads (if `add`) and writes.
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_6x16(kc: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize, add: bool) {
    const MR: usize = 6;
    const NR: usize = 16;
    let mut acc: [[__m256; 2]; MR] = [[_mm256_setzero_ps(); 2]; MR];
    // SAFETY: every offset stays inside the extents the caller guarantees.
    unsafe {
        // k steps: acc[r][h] += A[r, k] · B[k, 8h..8h + 8]
        for k in 0..kc {
            let b0 = _mm256_loadu_ps(b.add(k * NR));
            let b1 = _mm256_loadu_ps(b.add(k * NR + 8));
            let ak = a.add(k * MR);
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ak.add(r));
                acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
            }
        }
        // rows r of C: store, or add onto what is there
        for (r, acc_r) in acc.iter().enumerate() {
            let cr = c.add(r * ldc);
            for (h, &v) in acc_r.iter().enumerate() {
                let v = if add {
                    _mm256_add_ps(_mm256_loadu_ps(cr.add(8 * h)), v)
                } else {
                    v
                };
                _mm256_storeu_ps(cr.add(8 * h), v);
            }
        }
    }
}
