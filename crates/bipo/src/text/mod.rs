//! Text in and out: tokenizers and chat templates.

pub mod chat;
pub mod tokenizer;

pub use chat::{ChatTemplate, Message};
pub use tokenizer::Tokenizer;
