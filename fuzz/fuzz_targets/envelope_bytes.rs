#![no_main]
//! Fuzz target: walcast::hostile::envelope_bytes (no panic on any input).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walcast::hostile::envelope_bytes(data));
