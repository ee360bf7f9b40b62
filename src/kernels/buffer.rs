//! Fresh output buffers for kernels that write every element: uninitialised (no zero fill), and
//! backed by transparent huge pages when large.
//!
//! A K-stacked tangent is big (`K·B·T·d`: 100 MB at K = 16 for MiniLM's FFN), bigger than glibc's
//! largest mmap threshold (32 MiB), so every such allocation is a fresh mapping that the first
//! write faults in page by page: 25 600 faults of 4 KiB for 100 MB, measured at ~57 ms of CPU on
//! the project machine, a quarter of the GEMM that fills the buffer. Asking the kernel for
//! transparent huge pages (`madvise(MADV_HUGEPAGE)`, honoured in the default `madvise` THP mode)
//! before the first write cuts that to ~9 ms (50 faults of 2 MiB, the kernel's page zeroing).
//! Buffers below the threshold come from glibc's heap and are reused, and nothing is done to them.

use std::mem::MaybeUninit;

use ndarray::{Array, Dimension, ShapeBuilder};

/// Buffers of at least this many bytes are advised to use transparent huge pages: glibc's
/// largest dynamic mmap threshold (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit), above which every
/// allocation is a fresh mapping.
const HUGE_PAGE_BYTES: usize = 32 << 20;

/// An uninitialised array of `shape` for a kernel that writes every element before
/// `assume_init`; huge-page backed when it is at least 32 MiB.
///
/// # Shapes
/// - any; the layout is row-major unless `shape` says otherwise
pub(crate) fn uninit<F: Copy, Sh: ShapeBuilder>(shape: Sh) -> Array<MaybeUninit<F>, Sh::Dim> {
    let shape = shape.into_shape_with_order();
    let len = shape.raw_dim().size();
    let mut v: Vec<MaybeUninit<F>> = Vec::with_capacity(len);
    // SAFETY: the capacity is `len`, and `MaybeUninit<F>` needs no initialisation.
    unsafe { v.set_len(len) };
    advise_huge_pages(v.as_mut_ptr().cast(), len * size_of::<F>());
    Array::from_shape_vec(shape, v).expect("the vector has the shape's length")
}

/// `madvise(MADV_HUGEPAGE)` on the 2 MiB-aligned part of `[ptr, ptr + bytes)` if it is large
/// enough to be a fresh mapping; a hint only, so failures are ignored.
#[cfg(target_os = "linux")]
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    const HUGE: usize = 2 << 20;
    if bytes < HUGE_PAGE_BYTES {
        return;
    }
    let start = (ptr as usize).next_multiple_of(HUGE);
    let end = (ptr as usize + bytes) & !(HUGE - 1);
    if end > start {
        // SAFETY: `[start, end)` lies inside the caller's live allocation; MADV_HUGEPAGE changes
        // no contents, only how the kernel backs the pages (on first touch, or later by
        // khugepaged).
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

/// Huge pages are a Linux hint; elsewhere buffers are plain allocations.
#[cfg(not(target_os = "linux"))]
fn advise_huge_pages(_ptr: *mut u8, _bytes: usize) {}
