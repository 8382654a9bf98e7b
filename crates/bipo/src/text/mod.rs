//! Text in and out: tokenizers and chat templates.

pub mod chat;
pub mod tokenizer;

pub use chat::{ChatPrompt, ChatTemplate, Message};
pub use tokenizer::Tokenizer;
