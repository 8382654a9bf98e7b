#![no_main]
//! bipo safetensors vector reader.
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = common::scratch(data, "safetensors");
    if let Ok(v) = bipo::io::safetensors::read(&p) {
        v.validate().expect("accepted vector validates");
    }
});
