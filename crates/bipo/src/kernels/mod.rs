//! CPU kernels: quantized matrix multiplication (llama.cpp block formats), fused
//! attention for inference, and fused ops with hand-written backward passes for
//! training. Each is checked against elementary candle ops. Models use these; nothing
//! here knows about models.

pub mod amx;
pub mod attention_cpu;
pub mod bf16;
pub mod fused;
pub mod ops;
pub mod panels;
pub mod quant;
pub mod simd;
