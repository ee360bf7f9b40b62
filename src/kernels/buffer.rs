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

use crate::parallel;

/// Buffers of at least this many bytes are advised to use transparent huge pages: glibc's
/// largest dynamic mmap threshold (`DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit), above which every
/// allocation is a fresh mapping.
const HUGE_PAGE_BYTES: usize = 32 << 20;

/// An empty vector with room for `len` elements, huge-page backed when it is at least 32 MiB.
///
/// Fill it with `extend` from slice iterators (a trusted length, so the elements are written in
/// place, with no zero fill and no reallocation), then shape it with `Array::from_shape_vec`.
pub(crate) fn with_capacity<F>(len: usize) -> Vec<F> {
    let mut v: Vec<F> = Vec::with_capacity(len);
    advise_huge_pages(v.as_mut_ptr().cast(), len * size_of::<F>());
    v
}

/// An uninitialised array of `shape` for a kernel that writes every element before
/// `assume_init` (a GEMM with `β = 0`); huge-page backed when it is at least 32 MiB.
///
/// # Shapes
/// - any; the layout is row-major unless `shape` says otherwise
pub(crate) fn uninit<F: Copy, Sh: ShapeBuilder>(shape: Sh) -> Array<MaybeUninit<F>, Sh::Dim> {
    let shape = shape.into_shape_with_order();
    let len = shape.raw_dim().size();
    let mut v = with_capacity::<MaybeUninit<F>>(len);
    // SAFETY: the capacity is `len`, and `MaybeUninit<F>` needs no initialisation.
    unsafe { v.set_len(len) };
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

/// `f` of every element of a standard-layout array, into a fresh array of the same shape.
///
/// The loop runs over plain slices (never aliased, so element-wise `f` vectorises), split across
/// threads when large (see [`parallel`]).
pub(crate) fn map<F: Copy + Sync, G: Copy + Send, D: Dimension>(
    a: &Array<F, D>,
    f: impl Fn(F) -> G + Sync,
) -> Array<G, D> {
    let src = a.as_slice().expect("standard layout");
    let mut out = uninit::<G, _>(a.raw_dim());
    let ranges = parallel::row_ranges(src.len(), 1);
    let dst = parallel::split_blocks(
        out.as_slice_mut().expect("row-major"),
        1,
        src.len(),
        1,
        &ranges,
    );
    parallel::run(dst.into_iter().zip(&ranges).collect(), |(d, r)| {
        for d in d {
            for (o, &x) in d.iter_mut().zip(&src[r.clone()]) {
                o.write(f(x));
            }
        }
    });
    // SAFETY: the ranges cover every element once, and each part wrote all of its elements
    // (its slice has its range's length).
    unsafe { out.assume_init() }
}

/// `f` of every element into two fresh arrays of the same shape: `(g(x), h(x)) = f(x)`; as
/// [`map`].
pub(crate) fn map2<F: Copy + Sync, G: Copy + Send, D: Dimension>(
    a: &Array<F, D>,
    f: impl Fn(F) -> (G, G) + Sync,
) -> (Array<G, D>, Array<G, D>) {
    let src = a.as_slice().expect("standard layout");
    let (mut g, mut h) = (uninit::<G, _>(a.raw_dim()), uninit::<G, _>(a.raw_dim()));
    let ranges = parallel::row_ranges(src.len(), 1);
    let len = src.len();
    let gs = parallel::split_blocks(g.as_slice_mut().expect("row-major"), 1, len, 1, &ranges);
    let hs = parallel::split_blocks(h.as_slice_mut().expect("row-major"), 1, len, 1, &ranges);
    let parts: Vec<_> = gs.into_iter().zip(hs).zip(&ranges).collect();
    parallel::run(parts, |((gp, hp), r)| {
        for (gs, hs) in gp.into_iter().zip(hp) {
            for ((og, oh), &x) in gs.iter_mut().zip(hs.iter_mut()).zip(&src[r.clone()]) {
                let (vg, vh) = f(x);
                og.write(vg);
                oh.write(vh);
            }
        }
    });
    // SAFETY: as in `map`, for both outputs.
    unsafe { (g.assume_init(), h.assume_init()) }
}

/// Stacked tangents times a per-element factor: `out_k[i] = f(factor[i], t_k[i])` for every block
/// `t_k` of `factor.len()` consecutive elements of the standard-layout `t` (`[K, ..]`); split
/// across threads along the factor's elements when large.
pub(crate) fn map_blocks<F: Copy + Send + Sync, D: Dimension>(
    t: &Array<F, D>,
    factor: &[F],
    f: impl Fn(F, F) -> F + Sync,
) -> Array<F, D> {
    let src = t.as_slice().expect("standard layout");
    let (n, k) = whole_blocks("map_blocks", src.len(), factor.len());
    let mut out = uninit::<F, _>(t.raw_dim());
    // ranges over the factor's elements; part p gets those elements of every block
    let ranges = parallel::row_ranges(n, k);
    let dst = parallel::split_blocks(out.as_slice_mut().expect("row-major"), k, n, 1, &ranges);
    parallel::run(dst.into_iter().zip(&ranges).collect(), |(blocks, r)| {
        for (kk, od) in blocks.into_iter().enumerate() {
            let sd = &src[kk * n + r.start..kk * n + r.end];
            for ((o, &x), &c) in od.iter_mut().zip(sd).zip(&factor[r.clone()]) {
                o.write(f(c, x));
            }
        }
    });
    // SAFETY: the ranges cover all `n` elements of each of the `k` blocks (the length is a whole
    // number of blocks, checked above), and each part wrote all of its slices.
    unsafe { out.assume_init() }
}

/// [`map_blocks`] in place: `t_k[i] ← f(factor[i], t_k[i])` for every block `t_k` of the
/// standard-layout `t`, split across threads along the factor's elements when large.
pub(crate) fn map_blocks_in_place<F: Copy + Send + Sync, D: Dimension>(
    t: &mut Array<F, D>,
    factor: &[F],
    f: impl Fn(F, F) -> F + Sync,
) {
    let data = t.as_slice_mut().expect("standard layout");
    let (n, k) = whole_blocks("map_blocks_in_place", data.len(), factor.len());
    // ranges over the factor's elements; part p gets those elements of every block
    let ranges = parallel::row_ranges(n, k);
    let parts = parallel::split_blocks(data, k, n, 1, &ranges);
    parallel::run(parts.into_iter().zip(&ranges).collect(), |(blocks, r)| {
        for block in blocks {
            for (x, &c) in block.iter_mut().zip(&factor[r.clone()]) {
                *x = f(c, *x);
            }
        }
    });
}

/// `(n, k)`: `len` elements as `k` whole blocks of `n = factor_len`.
///
/// # Panics
/// If `len` is not a whole number of blocks (a caller's bug: tangents are `K` primals long).
fn whole_blocks(op: &str, len: usize, factor_len: usize) -> (usize, usize) {
    assert!(
        len.is_multiple_of(factor_len),
        "{op}: {len} elements are not whole blocks of {factor_len}"
    );
    (factor_len, len.checked_div(factor_len).unwrap_or(0))
}
