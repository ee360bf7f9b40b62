#![no_main]
//! Fuzz target: arbitrary bytes into spry's checkpoint reader (the check is `Reader::Checkpoint` in
//! `fuzz/src/readers.rs`, shared with `tests/fuzz_corpus.rs`).

use spry_fuzz::readers::Reader;

libfuzzer_sys::fuzz_target!(init: spry_fuzz::init(), |data: &[u8]| {
    spry_fuzz::run(Reader::Checkpoint, data);
});
