#![no_main]
//! Model GGUF header parser and tensor reads.
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let p = common::scratch(data, "gguf");
    let Ok(mut g) = bipo::load::gguf::GgufFile::open(&p) else {
        return;
    };
    let _ = g.str("general.architecture");
    let _ = g.str_array("tokenizer.ggml.tokens");
    let _ = g.num_array("tokenizer.ggml.scores");
    let names: Vec<String> = g.tensor_names().into_iter().map(String::from).collect();
    for n in names {
        if let Ok(t) = g.tensor(&n, &candle_core::Device::Cpu) {
            let _ = t.dequantize(&candle_core::Device::Cpu);
        }
    }
});
