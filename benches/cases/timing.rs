//! Wall and CPU time of one call, for the ratio printers on a shared, noisy machine.
//!
//! CPU time is the whole process's (every thread, user + system, so page faults count), read
//! from `CLOCK_PROCESS_CPUTIME_ID`: time this process spends waiting for a core that other
//! processes hold does not count, which makes it far steadier than wall time when the machine is
//! loaded. Wall time is what a user waits for; report both.
#![allow(dead_code)]

use std::time::Instant;

/// Wall and process-CPU seconds of one measured call.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    /// Elapsed wall-clock seconds.
    pub wall: f64,
    /// CPU seconds consumed by all of the process's threads.
    pub cpu: f64,
}

/// CPU seconds consumed so far by all threads of this process.
pub fn process_cpu_seconds() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// Runs `f` once and returns its wall and CPU time.
pub fn measure(f: &mut dyn FnMut()) -> Sample {
    let (c0, t0) = (process_cpu_seconds(), Instant::now());
    f();
    Sample {
        wall: t0.elapsed().as_secs_f64(),
        cpu: process_cpu_seconds() - c0,
    }
}

/// Median of a non-empty sample.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Which time of a [`Sample`]: wall or CPU seconds.
pub type Clock = fn(&Sample) -> f64;

/// The wall-clock time of a sample.
pub const WALL: Clock = |s| s.wall;

/// The CPU time of a sample.
pub const CPU: Clock = |s| s.cpu;

/// The (wall, cpu) medians over `rounds` of a per-round quantity `f(round, clock)`.
pub fn medians<R>(rounds: &[R], f: impl Fn(&R, Clock) -> f64) -> (f64, f64) {
    (
        median(rounds.iter().map(|r| f(r, WALL)).collect()),
        median(rounds.iter().map(|r| f(r, CPU)).collect()),
    )
}
