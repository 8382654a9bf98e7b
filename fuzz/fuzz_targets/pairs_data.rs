#![no_main]
//! Preference-data loaders (BiPO CSV, CAA JSON, JSONL variants), chosen by the first byte.
mod common;
libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let ext = match data.first() {
        Some(b'[') => "json",
        Some(b'{') => "jsonl",
        _ => "csv",
    };
    let p = common::scratch(data, ext);
    let _ = bipo::data::load_pairs_with(&p, data.len() % 2 == 0);
});
