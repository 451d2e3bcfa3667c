#![no_main]
//! `wasmwiz::fuzzing::kv_limits`: see its documentation for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmwiz::fuzzing::kv_limits(data));
