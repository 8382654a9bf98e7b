//! Small random models built in code, for fast tests of the model code and training.

use std::collections::HashMap;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};

use super::config::DecoderConfig;
use super::layers::Weight;
use super::{Model, ModelInfo};
use crate::error::Result;
use crate::kernels::quant::QBlocks;
use crate::load::weights::WeightSource;

/// A 3-layer decoder with grouped-query attention, widths multiple of 32 so every
/// quantization type applies.
pub fn tiny_config() -> DecoderConfig {
    DecoderConfig {
        hidden_size: 64,
        intermediate_size: 96,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 16,
        vocab_size: 97,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_freq_factors: None,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        ..Default::default()
    }
}

/// Scale of random weights: keeps activations O(1) through a few layers.
const WEIGHT_SCALE: f32 = 0.2;

/// Names of the 2-D projection matrices of one layer with their (out, in) shapes.
fn projections(cfg: &DecoderConfig) -> [(&'static str, usize, usize); 7] {
    let (h, i, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim);
    [
        ("self_attn.q_proj", cfg.num_heads * hd, h),
        ("self_attn.k_proj", cfg.num_kv_heads * hd, h),
        ("self_attn.v_proj", cfg.num_kv_heads * hd, h),
        ("self_attn.o_proj", h, cfg.num_heads * hd),
        ("mlp.gate_proj", i, h),
        ("mlp.up_proj", i, h),
        ("mlp.down_proj", h, i),
    ]
}

/// Dense f32 weights under Hugging Face names, drawn uniformly from `seed`.
pub fn random_weights(cfg: &DecoderConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut tensor = |shape: &[usize], center: f32| -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n)
            .map(|_| center + rng.random_range(-WEIGHT_SCALE..WEIGHT_SCALE))
            .collect();
        Ok(Tensor::from_vec(v, shape, &dev)?)
    };
    let (h, hd) = (cfg.hidden_size, cfg.head_dim);
    let mut w = HashMap::new();
    w.insert(
        "model.embed_tokens.weight".to_string(),
        tensor(&[cfg.vocab_size, h], 0.0)?,
    );
    w.insert("model.norm.weight".to_string(), tensor(&[h], 1.0)?);
    for l in 0..cfg.num_layers {
        let p = format!("model.layers.{l}");
        for (name, out, inp) in projections(cfg) {
            w.insert(format!("{p}.{name}.weight"), tensor(&[out, inp], 0.0)?);
        }
        if cfg.attention_bias {
            let biases = [
                ("q_proj", cfg.num_heads * hd),
                ("k_proj", cfg.num_kv_heads * hd),
                ("v_proj", cfg.num_kv_heads * hd),
            ];
            for (name, out) in biases {
                w.insert(format!("{p}.self_attn.{name}.bias"), tensor(&[out], 0.0)?);
            }
        }
        w.insert(format!("{p}.input_layernorm.weight"), tensor(&[h], 1.0)?);
        w.insert(
            format!("{p}.post_attention_layernorm.weight"),
            tensor(&[h], 1.0)?,
        );
    }
    if !cfg.tie_word_embeddings {
        w.insert(
            "lm_head.weight".to_string(),
            tensor(&[cfg.vocab_size, h], 0.0)?,
        );
    }
    Ok(w)
}

/// A model with weights from [`random_weights`]; `quant` keeps the 2-D matrices in
/// that GGUF block type (None = dense f32).
pub fn random_model(cfg: DecoderConfig, seed: u64, quant: Option<GgmlDType>) -> Result<Model> {
    let mut w: HashMap<String, Weight> = HashMap::new();
    for (name, t) in random_weights(&cfg, seed)? {
        let weight = match quant {
            Some(q) if t.rank() == 2 => {
                let qt = QTensor::quantize(&t, q)?;
                match QBlocks::from_qtensor(&qt)? {
                    Some(b) => Weight::Blocks(Arc::new(b)),
                    None => Weight::Quantized(Arc::new(qt)),
                }
            }
            _ => Weight::Dense(t),
        };
        w.insert(name, weight);
    }
    let info = ModelInfo {
        family: "llama".into(),
        source: format!("random(seed={seed})"),
        format: "memory".into(),
        weights: quant.map(|q| format!("{q:?}")).unwrap_or("F32".into()),
        dtype: "f32".into(),
        config: cfg.clone(),
    };
    Model::build(
        cfg,
        &mut WeightSource::Memory(w),
        info,
        &Device::Cpu,
        DType::F32,
    )
}
