#![no_main]
//! `wasmwiz::fuzzing::deployment_json`: see its documentation for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmwiz::fuzzing::deployment_json(data));
