#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| alcove_fuzz::cgi_response(data));
