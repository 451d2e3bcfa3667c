#![no_main]
//! `wasmwiz::fuzzing::route`: see its documentation for what must hold.

libfuzzer_sys::fuzz_target!(|data: &[u8]| wasmwiz::fuzzing::route(data));
