//! See fuzz/README.md and `dbqs_fuzz::membership_snapshot`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbqs_fuzz::membership_snapshot(data);
});
