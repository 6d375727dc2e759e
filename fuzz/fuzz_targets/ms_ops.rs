//! See fuzz/README.md and `dbqs_fuzz::ms_ops`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbqs_fuzz::ms_ops(data);
});
