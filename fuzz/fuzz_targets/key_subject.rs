#![no_main]
//! Fuzz target: walcast::hostile::key_subject (no panic on any input).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walcast::hostile::key_subject(data));
