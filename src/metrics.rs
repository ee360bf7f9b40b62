//! Measurement helpers shared by the examples and the simulation: wall-clock medians and the
//! process's peak resident memory.

use std::time::{Duration, Instant};

/// Runs `f` `warmup` times untimed, then `reps` times, and returns the median wall time.
///
/// # Panics
/// If `reps` is 0.
pub fn median_time(warmup: usize, reps: usize, mut f: impl FnMut()) -> Duration {
    assert!(reps > 0, "median_time needs at least one repetition");
    for _ in 0..warmup {
        f();
    }
    let mut times: Vec<Duration> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    times.sort();
    times[reps / 2]
}

/// A `/proc/self/status` field in KiB (Linux), e.g. `VmHWM` (peak resident) or `VmRSS`.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))
        .and_then(|l| {
            l[field.len() + 1..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .ok()
        })
}

/// Peak resident set size of this process in MiB (`VmHWM`), or `None` where the OS does not
/// report it.
pub fn peak_rss_mib() -> Option<f64> {
    proc_status_kib("VmHWM").map(|k| k as f64 / 1024.0)
}

/// Current resident set size of this process in MiB (`VmRSS`), or `None` where unavailable.
pub fn current_rss_mib() -> Option<f64> {
    proc_status_kib("VmRSS").map(|k| k as f64 / 1024.0)
}

/// Resets the peak-RSS watermark to the current RSS (Linux ≥ 4.0, writes
/// `/proc/self/clear_refs`), so a later [`peak_rss_mib`] measures one phase. Returns whether the
/// reset took effect.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_is_at_least_current_and_grows_with_an_allocation() {
        let before = peak_rss_mib().expect("Linux reports VmHWM");
        let cur = current_rss_mib().expect("Linux reports VmRSS");
        assert!(before >= cur - 1.0);
        let big = vec![1u8; 64 << 20];
        std::hint::black_box(&big);
        let after = peak_rss_mib().unwrap();
        assert!(after >= before + 60.0, "peak {before} -> {after}");
    }

    #[test]
    fn median_is_the_middle_sample() {
        let mut i = 0u64;
        let d = median_time(1, 5, || {
            i += 1;
            std::thread::sleep(Duration::from_millis(1));
        });
        assert_eq!(i, 6);
        assert!(d >= Duration::from_millis(1));
    }
}
