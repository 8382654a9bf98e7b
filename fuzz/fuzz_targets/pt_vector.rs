#![no_main]
//! PyTorch .pt vector reader (zip + pickle, never executes code).
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = common::scratch(data, "pt");
    if let Ok(v) = bipo::io::pt::read(&p, 3) {
        v.validate().expect("accepted vector validates");
    }
});
