//! See fuzz/README.md and `dbqs_fuzz::node_decoders`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbqs_fuzz::node_decoders(data);
});
