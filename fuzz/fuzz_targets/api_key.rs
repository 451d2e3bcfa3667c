#![no_main]
//! `wasmwiz::fuzzing::api_key`: see its documentation for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmwiz::fuzzing::api_key(data));
