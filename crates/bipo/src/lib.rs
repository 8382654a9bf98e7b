//! # bipo
//!
//! Steering vectors for decoder-only language models: load a model (GGUF or Hugging
//! Face safetensors), apply [`SteeringVector`]s at any multiplier, and generate.
//!
//! A steering vector's direction for layer `L` is added to the residual-stream output
//! of 0-based decoder block `L` (Hugging Face `hidden_states[L+1]`, llama.cpp
//! `direction.L`) at every token position.
//!
//! ```no_run
//! use bipo::{generate, load, io, steer::Steering, text::Message};
//! # fn main() -> bipo::Result<()> {
//! let lm = load::load("models/SmolLM2-135M-Instruct.Q4_1.gguf", &Default::default())?;
//! let happy = io::read_vector("happy.gguf".as_ref())?;
//! happy.check_fits(lm.model.hidden_size(), lm.model.num_layers())?;
//! let steering = Steering::from_vectors(&[(happy, 4.0)], lm.model.device(), lm.model.dtype())?;
//! let prompt = lm.chat_template.as_ref().unwrap().render(&[Message::new("user", "How are you?")])?;
//! let ids = lm.tokenizer.encode(&prompt, true)?;
//! let out = generate::generate(&lm.model, &lm.tokenizer, &ids, &steering, &Default::default(), |_| Ok(()))?;
//! println!("{}", out.text);
//! # Ok(()) }
//! ```

pub mod activations;
pub mod bake;
pub mod baselines;
pub mod data;
pub mod engine;
pub mod error;
pub mod eval;
pub mod generate;
pub mod io;
pub mod kernels;
pub mod load;
pub mod models;
pub mod run;
pub mod steer;
pub mod text;
pub mod train;
pub mod util;
pub mod vector;

pub use error::{Error, Result};
pub use vector::{SteeringVector, VectorMeta};
