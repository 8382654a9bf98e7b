//! Hugging Face model folders (config.json + safetensors + tokenizer.json), written
//! here from a tiny random model: they must load to exactly the same model.

mod common;

use std::collections::HashMap;
use std::path::Path;

use bipo::models::random::{random_model, random_weights, tiny_config};
use bipo::models::{DecoderConfig, Mode, Model};
use bipo::steer::Steering;
use candle_core::{Device, Tensor};

const SEED: u64 = 41;

fn config_json(cfg: &DecoderConfig, model_type: &str) -> String {
    serde_json::json!({
        "model_type": model_type,
        "architectures": ["X"],
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "vocab_size": cfg.vocab_size,
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "eos_token_id": 2,
    })
    .to_string()
}

/// A word-level tokenizer: `<unk>` 0, `<s>` 1, `</s>` 2, then `w3` .. `w96`.
fn write_tokenizer(dir: &Path, vocab_size: usize) {
    use tokenizers::models::wordlevel::WordLevel;
    let mut vocab: HashMap<String, u32> = HashMap::new();
    for (i, t) in ["<unk>", "<s>", "</s>"].iter().enumerate() {
        vocab.insert(t.to_string(), i as u32);
    }
    for i in 3..vocab_size as u32 {
        vocab.insert(format!("w{i}"), i);
    }
    let model = WordLevel::builder()
        .vocab(vocab.into_iter().collect())
        .unk_token("<unk>".into())
        .build()
        .unwrap();
    let mut tok = tokenizers::Tokenizer::new(model);
    tok.with_pre_tokenizer(Some(tokenizers::pre_tokenizers::whitespace::Whitespace {}));
    let added = tok.add_special_tokens([
        tokenizers::AddedToken::from("<s>", true),
        tokenizers::AddedToken::from("</s>", true),
    ]);
    assert_eq!(added.unwrap(), 2);
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let tc = serde_json::json!({
        "bos_token": "<s>",
        "eos_token": {"content": "</s>"},
        "chat_template": "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if add_generation_prompt %}w3{% endif %}",
    });
    std::fs::write(dir.join("tokenizer_config.json"), tc.to_string()).unwrap();
}

fn write_folder(dir: &Path, cfg: &DecoderConfig, model_type: &str, shards: usize) {
    std::fs::write(dir.join("config.json"), config_json(cfg, model_type)).unwrap();
    write_tokenizer(dir, cfg.vocab_size);
    let w = random_weights(cfg, SEED).unwrap();
    if shards == 1 {
        candle_core::safetensors::save(&w, dir.join("model.safetensors")).unwrap();
        return;
    }
    let mut names: Vec<&String> = w.keys().collect();
    names.sort();
    let mut index = serde_json::Map::new();
    for (s, chunk) in names.chunks(names.len().div_ceil(shards)).enumerate() {
        let file = format!("model-{:05}-of-{shards:05}.safetensors", s + 1);
        let part: HashMap<String, Tensor> = chunk
            .iter()
            .map(|n| ((*n).clone(), w[*n].clone()))
            .collect();
        candle_core::safetensors::save(&part, dir.join(&file)).unwrap();
        for n in chunk {
            index.insert((*n).clone(), serde_json::Value::String(file.clone()));
        }
    }
    let idx = serde_json::json!({"metadata": {}, "weight_map": index});
    std::fs::write(dir.join("model.safetensors.index.json"), idx.to_string()).unwrap();
}

fn logits(m: &Model) -> Vec<Vec<f32>> {
    let ids = Tensor::new(&[[5u32, 9, 13, 40, 2]], &Device::Cpu).unwrap();
    m.forward(&ids, 0, None, &Steering::none(), None, Mode::Fast)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap()
}

#[test]
fn a_llama_folder_loads_to_the_same_model_single_file_and_sharded() {
    let cfg = tiny_config();
    let expected = logits(&random_model(cfg.clone(), SEED, None).unwrap());
    for shards in [1, 3] {
        let dir = tempfile::tempdir().unwrap();
        write_folder(dir.path(), &cfg, "llama", shards);
        let lm = bipo::load::load(dir.path().to_str().unwrap(), &Default::default()).unwrap();
        assert_eq!(lm.model.info.format, "safetensors");
        assert_eq!(lm.model.config().num_layers, cfg.num_layers);
        assert_eq!(logits(&lm.model), expected, "shards = {shards}");
        assert_eq!(lm.tokenizer.encode("w5 w9", true).unwrap(), vec![5, 9]);
        assert_eq!(lm.tokenizer.eos_token_ids(), &[2]);
        let prompt = lm.chat_template.unwrap().prompt(None, "w7").unwrap();
        assert_eq!(prompt, "w7 w3");
    }
}

#[test]
fn a_qwen2_folder_uses_its_qkv_biases_and_untied_head() {
    let mut cfg = tiny_config();
    cfg.attention_bias = true;
    cfg.tie_word_embeddings = false;
    let expected = logits(&random_model(cfg.clone(), SEED, None).unwrap());
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &cfg, "qwen2", 1);
    let lm = bipo::load::load(dir.path().to_str().unwrap(), &Default::default()).unwrap();
    assert_eq!(lm.model.info.family, "qwen2");
    assert_eq!(logits(&lm.model), expected);
}

#[test]
fn a_bf16_folder_load_stays_close_to_f32() {
    let cfg = tiny_config();
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &cfg, "llama", 1);
    let f32_logits = logits(
        &bipo::load::load(dir.path().to_str().unwrap(), &Default::default())
            .unwrap()
            .model,
    );
    let opts = bipo::load::LoadOptions {
        dtype: Some(candle_core::DType::BF16),
        ..Default::default()
    };
    let bf = logits(
        &bipo::load::load(dir.path().to_str().unwrap(), &opts)
            .unwrap()
            .model,
    );
    let d = common::max_abs_diff(&f32_logits, &bf);
    assert!(d < 0.1, "bf16 differs by {d}");
}

#[test]
fn broken_folders_give_errors_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &tiny_config(), "llama", 1);
    std::fs::remove_file(dir.path().join("tokenizer.json")).unwrap();
    let e = bipo::load::load(dir.path().to_str().unwrap(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("tokenizer.json"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &tiny_config(), "gpt_neox", 1);
    let e = bipo::load::load(dir.path().to_str().unwrap(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("gpt_neox") && e.contains("supported"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path(), &tiny_config(), "llama", 1);
    std::fs::write(dir.path().join("model.safetensors"), b"garbage").unwrap();
    let e = bipo::load::load(dir.path().to_str().unwrap(), &Default::default())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}
