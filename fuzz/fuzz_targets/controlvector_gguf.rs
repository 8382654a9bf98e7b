#![no_main]
//! llama.cpp control-vector GGUF reader: any bytes give a vector or an error, never a panic.
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = common::scratch(data, "gguf");
    if let Ok(v) = bipo::io::controlvector::read(&p) {
        // What was accepted must be consistent.
        v.validate().expect("accepted vector validates");
    }
});
