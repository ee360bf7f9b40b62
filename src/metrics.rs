//! The process's resident memory (current and peak), as the run summaries report it.

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
}
