//! The process's resident memory (current and peak), as the run summaries report it, and how
//! much of it is anonymous (heap, stacks) versus file-backed (mapped checkpoints, code).

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

/// The resident set split by kind, in MiB ([`rss_breakdown_mib`]).
///
/// `anon + file + shmem` is the current RSS (`VmRSS`). A memory-mapped checkpoint
/// ([`GgufFile::open_mapped`](crate::io::GgufFile::open_mapped)) counts under `file` as its
/// pages are read: page cache the kernel can drop under pressure and re-read, shared with other
/// processes mapping the same file, whereas weights copied into the heap count under `anon`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RssBreakdown {
    /// Resident anonymous memory (`RssAnon`): heap, stacks, private copies.
    pub anon: f64,
    /// Resident file-backed memory (`RssFile`): mapped files, including mapped checkpoints and
    /// the executable.
    pub file: f64,
    /// Resident shared memory (`RssShmem`: System V and POSIX shared memory, shared anonymous
    /// maps, tmpfs files).
    pub shmem: f64,
}

/// The current resident set of this process split into anonymous, file-backed and shared
/// memory, in MiB (`RssAnon`, `RssFile`, `RssShmem` of `/proc/self/status`, Linux ≥ 4.5), or
/// `None` where the OS does not report them.
pub fn rss_breakdown_mib() -> Option<RssBreakdown> {
    let mib = |field| proc_status_kib(field).map(|k| k as f64 / 1024.0);
    Some(RssBreakdown {
        anon: mib("RssAnon")?,
        file: mib("RssFile")?,
        shmem: mib("RssShmem")?,
    })
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

    /// The memory tests below allocate 64 MiB each and read the process's peak: run together,
    /// one's freed allocation would already stand in the other's "before" peak, so they take
    /// turns.
    static MEMORY_TESTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn peak_is_at_least_current_and_grows_with_an_allocation() {
        let _turn = MEMORY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let before = peak_rss_mib().expect("Linux reports VmHWM");
        let cur = current_rss_mib().expect("Linux reports VmRSS");
        assert!(before >= cur - 1.0);
        // enough to pass the old peak (another test's freed allocation may stand in it) by 64 MiB
        let mib = (before - cur).max(0.0).ceil() as usize + 64;
        let big = vec![1u8; mib << 20];
        std::hint::black_box(&big);
        let after = peak_rss_mib().unwrap();
        assert!(
            after >= before + 60.0,
            "peak {before} -> {after} (current was {cur})"
        );
    }

    #[test]
    fn a_read_mapped_file_is_file_backed() {
        // Other tests run in this process meanwhile, so only growth that this test causes itself
        // and no other test could undo is asserted (tests/mapped_weights.rs measures the
        // anonymous side in a process of its own).
        let _turn = MEMORY_TESTS.lock().unwrap_or_else(|e| e.into_inner());
        let before = rss_breakdown_mib().expect("Linux reports RssAnon and RssFile");
        assert!(before.anon > 0.0 && before.file > 0.0, "{before:?}");
        let big = vec![1u8; 64 << 20];

        // a 64 MiB file, mapped and read: resident as file pages
        let path = std::env::temp_dir().join(format!("spry_rss_{}.bin", std::process::id()));
        std::fs::write(&path, &big).unwrap();
        drop(big);
        let base = rss_breakdown_mib().unwrap();
        let map = crate::mapped::map_file(&path).unwrap();
        let sum: u64 = map.iter().step_by(4096).map(|&b| b as u64).sum();
        assert_eq!(sum, (64 << 20) / 4096);
        let mapped = rss_breakdown_mib().unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(mapped.file >= base.file + 60.0, "{base:?} -> {mapped:?}");
    }
}
