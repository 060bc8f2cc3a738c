#![no_main]
//! Fuzz target: walcast::hostile::column_value (no panic on any input).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walcast::hostile::column_value(data));
