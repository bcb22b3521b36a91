#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alcove_fuzz::image_oci(data));
