//! Deterministic fan-out over scoped threads, shared by the federated simulation (clients in
//! parallel) and the attention kernel (query blocks in parallel).
//!
//! Every item is processed by exactly one worker and its result lands in its own slot, so the
//! output never depends on scheduling or on the number of workers. A fan-out started from inside
//! a worker runs serially on that worker, so nested fan-outs (the attention of a client that the
//! simulation already runs in parallel) never oversubscribe the cores.

use std::cell::Cell;

use crate::Result;

thread_local! {
    /// Whether this thread is a [`parallel_map`] worker.
    static IN_WORKER: Cell<bool> = const { Cell::new(false) };
}

/// The number of hardware threads this process may use (1 if the OS does not say).
pub fn available_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
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
    if workers <= 1 || items.len() <= 1 || IN_WORKER.with(Cell::get) {
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
}
