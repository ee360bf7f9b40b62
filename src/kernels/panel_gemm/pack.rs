//! Packing into the microkernel's operand layouts.
//!
//! - B (the fixed `Wᵀ`, `[in, out]`) is packed once: the inner dimension is cut into blocks of
//!   `kc` values, and each block into panels of `nr` output columns, each panel stored
//!   k-major (`nr` consecutive values per `k`), columns past `out` zero-filled.
//! - A (the activations `x`, `[rows, in]`) is packed per call: a block of rows × `kc` is cut into
//!   micro-panels of `mr` rows, each stored k-major (`mr` consecutive values per `k`), rows past
//!   the end zero-filled.

use ndarray::ArrayView2;

/// Packs `Wᵀ` from `w` `[out, in]` (Hugging Face layout, any strides) into `nr`-column panels.
///
/// Layout: for each k-block `p` (`kc` values of `in`, the last one shorter), for each panel `j`
/// (`nr` columns of `out`, the last one zero-padded), `kc_p × nr` values with
/// `dst[k·nr + c] = W[j·nr + c, p·kc + k]`. Block `p` starts at `p·kc·n_panels·nr`.
///
/// # Shapes
/// - `w`: `[out, in]`; result: `in · n_panels · nr` values, `n_panels = ⌈out / nr⌉`
pub(super) fn pack_b(w: ArrayView2<'_, f32>, nr: usize, kc: usize) -> Vec<f32> {
    let (out, inn) = w.dim();
    let n_panels = out.div_ceil(nr);
    let mut dst = vec![0.0f32; inn * n_panels * nr];
    // k-blocks p over `in`: [kc_p, n_panels·nr] each
    for p0 in (0..inn).step_by(kc.max(1)) {
        let kcp = kc.min(inn - p0);
        let block = &mut dst[p0 * n_panels * nr..(p0 + kcp) * n_panels * nr];
        // panels j over `out`: [kc_p, nr] each
        for (j, panel) in block.chunks_exact_mut(kcp * nr).enumerate() {
            let cols = nr.min(out - j * nr);
            // each column c is one row of W: W[j·nr + c, p0..p0 + kc_p]
            for c in 0..cols {
                let row = w.row(j * nr + c);
                for k in 0..kcp {
                    panel[k * nr + c] = row[p0 + k];
                }
            }
        }
    }
    dst
}

/// [`pack_b`] of a `[out, in]` matrix given row by row: `row(r, buf)` writes row `r` (`in`
/// values) into `buf`, once per row; the panels go into `dst`, reused (resized, every value
/// written), so a caller widening tile after tile of a packed weight straight into panels needs
/// neither a widened copy of the tile nor a fresh allocation per tile.
///
/// # Shapes
/// - `dst`: resized to `in · n_panels · nr` values, `n_panels = ⌈out / nr⌉`
pub(super) fn pack_b_rows(
    out: usize,
    inn: usize,
    nr: usize,
    kc: usize,
    dst: &mut Vec<f32>,
    mut row: impl FnMut(usize, &mut [f32]),
) {
    let n_panels = out.div_ceil(nr);
    dst.clear();
    dst.resize(inn * n_panels * nr, 0.0);
    let mut buf = vec![0.0f32; inn];
    // rows r of W = columns (j, c) of Wᵀ's panels
    for r in 0..out {
        row(r, &mut buf);
        let (j, c) = (r / nr, r % nr);
        // k-blocks p over `in`: this column's kc_p values, stride nr, in panel j
        for p0 in (0..inn).step_by(kc.max(1)) {
            let kcp = kc.min(inn - p0);
            let panel = &mut dst[p0 * n_panels * nr + j * kcp * nr..][..kcp * nr];
            for (k, &v) in buf[p0..p0 + kcp].iter().enumerate() {
                panel[k * nr + c] = v;
            }
        }
    }
}

/// Row `r` of `W` back from the panels [`pack_b`] made (`in` values into `out`).
///
/// # Shapes
/// - `packed`: as [`pack_b`] of a `[n_out, in]` weight; `out`: `[in]`
pub(super) fn unpack_row(
    packed: &[f32],
    n_out: usize,
    nr: usize,
    kc: usize,
    r: usize,
    out: &mut [f32],
) {
    let inn = out.len();
    let n_panels = n_out.div_ceil(nr);
    let (j, c) = (r / nr, r % nr);
    for p0 in (0..inn).step_by(kc.max(1)) {
        let kcp = kc.min(inn - p0);
        let panel = &packed[p0 * n_panels * nr + j * kcp * nr..][..kcp * nr];
        for k in 0..kcp {
            out[p0 + k] = panel[k * nr + c];
        }
    }
}

/// Packs rows `r0..r0 + mc` × columns `p0..p0 + kc` of `a` into `mr`-row micro-panels.
///
/// Layout: micro-panel `i` (rows `r0 + i·mr ..`, the last one zero-padded) holds `kc × mr`
/// values, `dst[i·kc·mr + k·mr + r] = a[r0 + i·mr + r, p0 + k]`.
///
/// # Shapes
/// - `a`: `[rows, in]`; `dst`: at least `⌈mc / mr⌉ · kc · mr` values
pub(super) fn pack_a(
    a: ArrayView2<'_, f32>,
    r0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    mr: usize,
    dst: &mut [f32],
) {
    // micro-panels i over the mc rows: [kc, mr] each
    for (i, panel) in dst[..mc.div_ceil(mr) * kc * mr]
        .chunks_exact_mut(kc * mr)
        .enumerate()
    {
        let rows = mr.min(mc - i * mr);
        // contiguous rows: k outer, so that the micro-panel is written in order
        let srcs: Option<Vec<&[f32]>> = (0..rows)
            .map(|r| {
                let row = a.row(r0 + i * mr + r);
                row.to_slice().map(|s| &s[p0..p0 + kc])
            })
            .collect();
        if let (Some(srcs), true) = (srcs, rows == mr) {
            for (k, dst) in panel.chunks_exact_mut(mr).enumerate() {
                for (d, src) in dst.iter_mut().zip(&srcs) {
                    *d = src[k];
                }
            }
            continue;
        }
        for r in 0..rows {
            let row = a.row(r0 + i * mr + r);
            match row.as_slice() {
                Some(src) => {
                    for (k, &v) in src[p0..p0 + kc].iter().enumerate() {
                        panel[k * mr + r] = v;
                    }
                }
                None => {
                    for k in 0..kc {
                        panel[k * mr + r] = row[p0 + k];
                    }
                }
            }
        }
        if rows < mr {
            for k in 0..kc {
                panel[k * mr + rows..(k + 1) * mr].fill(0.0);
            }
        }
    }
}
