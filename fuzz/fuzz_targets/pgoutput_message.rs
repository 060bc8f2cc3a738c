#![no_main]
//! Fuzz target: walcast::hostile::pgoutput_message (no panic on any input).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| walcast::hostile::pgoutput_message(data));
