//! spry's fuzz targets share their per-reader checks with the stable test
//! `tests/fuzz_corpus.rs`, which includes `readers.rs` by path.

use std::cell::RefCell;

pub mod readers;

thread_local! {
    /// The message and location of the last panic on this thread.
    static LAST_PANIC: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Replaces libfuzzer-sys's panic hook, which aborts on every panic, even one spry catches
/// itself (the tokenizer turns a third-party tokenizer's panic into a typed error), with one
/// that only records the message; [`run`] prints it and aborts if the panic escapes the reader.
/// (Quiet because caught panics are frequent: a backtrace for each would slow fuzzing down.)
pub fn init() {
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|p| *p.borrow_mut() = info.to_string());
    }));
}

/// Runs one input through `reader`: `Ok` or a typed error are fine, a panic that escapes the
/// reader (a bug or a broken invariant) aborts, which libFuzzer reports as a crash.
pub fn run(reader: readers::Reader, data: &[u8]) {
    if std::panic::catch_unwind(|| reader.check(data)).is_err() {
        LAST_PANIC.with(|p| eprintln!("{} reader: uncaught {}", reader.name(), p.borrow()));
        std::process::abort();
    }
}
