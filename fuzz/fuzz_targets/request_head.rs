#![no_main]
//! `wasmwiz::fuzzing::request_head`: see its documentation for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmwiz::fuzzing::request_head(data));
