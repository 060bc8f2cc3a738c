#![no_main]
//! Fuzz target: walcast::hostile::json_text (no panic on any input).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walcast::hostile::json_text(data));
