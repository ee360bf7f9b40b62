//! Row-parallel element-wise work on scoped threads.
//!
//! A kernel whose rows are independent (activations, norms) splits its rows into contiguous
//! ranges, hands each range's disjoint output slices to one thread (`std::thread::scope`; the
//! calling thread takes the first range), and computes every row exactly as the serial loop
//! would. The result is therefore bitwise the same for any thread count. Small jobs stay on the
//! calling thread: spawning costs tens of microseconds.

use std::ops::Range;
use std::sync::OnceLock;

/// Below this many elements per extra thread, a job runs serially.
const MIN_ELEMS_PER_THREAD: usize = 1 << 17;

/// Threads a job may use: the machine's available parallelism (at least 1).
pub(crate) fn max_threads() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Splits `rows` rows of `row_elems` elements each into contiguous ranges, one per thread worth
/// starting (`MIN_ELEMS_PER_THREAD` elements each, at most [`max_threads`]).
pub(crate) fn row_ranges(rows: usize, row_elems: usize) -> Vec<Range<usize>> {
    let total = rows.saturating_mul(row_elems.max(1));
    let parts = (total / MIN_ELEMS_PER_THREAD)
        .clamp(1, max_threads())
        .min(rows.max(1));
    let per = rows.div_ceil(parts);
    (0..parts)
        .map(|p| (p * per).min(rows)..((p + 1) * per).min(rows))
        .collect()
}

/// Runs `f` on every part, the first on the calling thread and the others on scoped threads, and
/// returns when all are done. A panic in any part propagates.
pub(crate) fn run<P: Send>(parts: Vec<P>, f: impl Fn(P) + Sync) {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return;
    };
    std::thread::scope(|s| {
        for p in parts {
            let f = &f;
            s.spawn(move || f(p));
        }
        f(first);
    });
}

/// Splits `data`, made of `blocks` consecutive blocks of `rows` rows of `n` elements, into the
/// slices of each range: `result[p][b]` holds rows `ranges[p]` of block `b`. The ranges must be
/// contiguous and increasing from 0 to `rows` (as [`row_ranges`] makes them).
pub(crate) fn split_blocks<'a, T>(
    data: &'a mut [T],
    blocks: usize,
    rows: usize,
    n: usize,
    ranges: &[Range<usize>],
) -> Vec<Vec<&'a mut [T]>> {
    assert_eq!(data.len(), blocks * rows * n, "split_blocks: length");
    let mut out: Vec<Vec<&'a mut [T]>> = ranges.iter().map(|_| Vec::new()).collect();
    let mut rest = data;
    for _ in 0..blocks {
        for (p, r) in ranges.iter().enumerate() {
            let (head, tail) = std::mem::take(&mut rest).split_at_mut(r.len() * n);
            out[p].push(head);
            rest = tail;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_all_rows_in_order() {
        for (rows, elems) in [
            (0, 5),
            (1, 1 << 20),
            (7, 1 << 18),
            (1024, 384),
            (1000, 1536),
        ] {
            let r = row_ranges(rows, elems);
            assert!(!r.is_empty() && r.len() <= max_threads());
            assert_eq!(r[0].start, 0);
            assert_eq!(r.last().unwrap().end, rows);
            for w in r.windows(2) {
                assert_eq!(w[0].end, w[1].start);
            }
        }
        assert_eq!(row_ranges(10, 3).len(), 1, "small jobs stay serial");
    }

    #[test]
    fn split_blocks_gives_each_range_its_rows_of_every_block() {
        // 2 blocks of 5 rows of 3 elements, ranges 0..2 and 2..5
        let mut data: Vec<usize> = (0..30).collect();
        let parts = split_blocks(&mut data, 2, 5, 3, &[0..2, 2..5]);
        assert_eq!(parts[0][0], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(parts[0][1], &[15, 16, 17, 18, 19, 20]);
        assert_eq!(parts[1][0], &(6..15).collect::<Vec<_>>()[..]);
        assert_eq!(parts[1][1], &(21..30).collect::<Vec<_>>()[..]);
        // zero rows: every range still gets one (empty) slice per block
        let parts = split_blocks::<usize>(&mut [], 2, 0, 3, &row_ranges(0, 3));
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].len(), 2);
    }

    #[test]
    fn run_visits_every_part() {
        let mut out = vec![0usize; 4];
        let parts: Vec<(usize, &mut usize)> = out.iter_mut().enumerate().collect();
        run(parts, |(i, o)| *o = i + 1);
        assert_eq!(out, [1, 2, 3, 4]);
    }
}
