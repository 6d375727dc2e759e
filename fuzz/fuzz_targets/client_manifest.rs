//! See fuzz/README.md and `dbqs_fuzz::client_manifest`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbqs_fuzz::client_manifest(data);
});
