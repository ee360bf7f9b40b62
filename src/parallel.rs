//! Deterministic fan-out over scoped threads, the one place spry starts threads:
//!
//! - [`parallel_map`] / [`parallel_map_init`]: a work queue of items with results, used by the
//!   federated simulation (clients) and the attention kernel (query blocks);
//! - `row_ranges` / `split_blocks` / `run` (crate-internal): a kernel whose rows are independent
//!   (activations, norms, copies) splits its rows into contiguous ranges and hands each range's
//!   disjoint output slices to one thread.
//!
//! Every item or row is computed by exactly one thread exactly as the serial loop would, so the
//! output never depends on scheduling or on the number of threads. A fan-out started from inside
//! a worker runs serially on that worker, so nested fan-outs (the kernels of a client that the
//! simulation already runs in parallel) never oversubscribe the cores.

use std::cell::Cell;
use std::ops::Range;
use std::sync::OnceLock;

use crate::Result;

thread_local! {
    /// Whether this thread is a [`parallel_map`] worker.
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// The number of hardware threads this process may use (1 if the OS does not say).
pub fn available_workers() -> usize {
    static THREADS: OnceLock<usize> = OnceLock::new();
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Threads a kernel on the calling thread may use: [`available_workers`], or 1 inside a worker
/// of another fan-out.
pub(crate) fn worker_budget() -> usize {
    if in_worker() { 1 } else { available_workers() }
}

/// Whether the calling thread is a worker of a fan-out (whose own fan-outs then run serially).
fn in_worker() -> bool {
    IN_WORKER.with(Cell::get)
}

/// Maps `f` over `items` on up to `workers` threads, preserving order; the first error (in item
/// order) wins.
///
/// Runs on the calling thread when `workers ≤ 1`, when there are fewer than two items, or when
/// the caller is itself a worker of another `parallel_map`.
///
/// # Errors
/// The first error `f` returns, in item order.
pub fn parallel_map<I: Send, O: Send>(
    items: Vec<I>,
    workers: usize,
    f: impl Fn(I) -> Result<O> + Sync,
) -> Result<Vec<O>> {
    parallel_map_init(items, workers, || (), |_, item| f(item))
}

/// [`parallel_map`] with per-worker state: each worker calls `init` once and passes its state to
/// every `f` it runs (a reusable workspace). `f` must not let its result depend on what earlier
/// items left in the state, or the output would depend on scheduling.
///
/// # Errors
/// The first error `f` returns, in item order.
pub fn parallel_map_init<I: Send, O: Send, S>(
    items: Vec<I>,
    workers: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, I) -> Result<O> + Sync,
) -> Result<Vec<O>> {
    if workers <= 1 || items.len() <= 1 || in_worker() {
        let mut state = init();
        return items.into_iter().map(|item| f(&mut state, item)).collect();
    }
    let n = items.len();
    let mut slots: Vec<Option<Result<O>>> = (0..n).map(|_| None).collect();
    let queue = std::sync::Mutex::new(
        items
            .into_iter()
            .enumerate()
            .collect::<Vec<_>>()
            .into_iter(),
    );
    let results = std::sync::Mutex::new(&mut slots);
    std::thread::scope(|s| {
        for _ in 0..workers.min(n) {
            s.spawn(|| {
                IN_WORKER.with(|w| w.set(true));
                let mut state = init();
                loop {
                    let next = queue.lock().expect("queue").next();
                    let Some((i, item)) = next else { break };
                    let r = f(&mut state, item);
                    results.lock().expect("results")[i] = Some(r);
                }
            });
        }
    });
    slots
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

/// Below this many elements per extra thread, a job runs serially.
const MIN_ELEMS_PER_THREAD: usize = 1 << 17;

/// Splits `rows` rows of `row_elems` elements each into contiguous ranges, one per thread worth
/// starting (`MIN_ELEMS_PER_THREAD` elements each, at most [`available_workers`]; one range
/// inside a worker of another fan-out).
pub(crate) fn row_ranges(rows: usize, row_elems: usize) -> Vec<Range<usize>> {
    let total = rows.saturating_mul(row_elems.max(1));
    let threads = if in_worker() { 1 } else { available_workers() };
    let parts = (total / MIN_ELEMS_PER_THREAD)
        .clamp(1, threads)
        .min(rows.max(1));
    let per = rows.div_ceil(parts);
    (0..parts)
        .map(|p| (p * per).min(rows)..((p + 1) * per).min(rows))
        .collect()
}

/// Runs `f` on every part, the first on the calling thread and the others on scoped threads
/// (marked as workers), and returns when all are done. A panic in any part propagates.
pub(crate) fn run<P: Send>(parts: Vec<P>, f: impl Fn(P) + Sync) {
    let mut parts = parts.into_iter();
    let Some(first) = parts.next() else {
        return;
    };
    std::thread::scope(|s| {
        for p in parts {
            let f = &f;
            s.spawn(move || {
                IN_WORKER.with(|w| w.set(true));
                f(p)
            });
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
    fn preserves_order_and_runs_nested_calls_serially() {
        let out = parallel_map((0..20).collect(), 3, |i: usize| {
            // a nested fan-out runs on this worker's own thread
            let me = std::thread::current().id();
            let inner = parallel_map(vec![0, 1, 2], 2, |_| Ok(std::thread::current().id()))?;
            assert!(inner.iter().all(|&id| id == me));
            Ok(i * i)
        })
        .unwrap();
        assert_eq!(out, (0..20).map(|i| i * i).collect::<Vec<_>>());
    }

    #[test]
    fn first_error_in_item_order_wins() {
        let r = parallel_map((0..10).collect(), 2, |i: usize| {
            if i % 4 == 3 {
                Err(crate::Error::invalid("test", format!("item {i}")))
            } else {
                Ok(i)
            }
        });
        assert!(matches!(r, Err(crate::Error::InvalidArgument { msg, .. }) if msg == "item 3"));
    }

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
            assert!(!r.is_empty() && r.len() <= available_workers());
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

    #[test]
    fn row_ranges_inside_a_worker_are_one_range() {
        let parts = parallel_map(vec![0usize, 1], 2, |_| {
            Ok(row_ranges(1 << 12, 1 << 12).len())
        })
        .unwrap();
        assert_eq!(parts, [1, 1]);
    }
}
