//! See fuzz/README.md and `dbqs_fuzz::pbft_messages`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    dbqs_fuzz::pbft_messages(data);
});
