//! bipo as a library, end to end: load a model, train a BiPO steering vector on a few
//! preference pairs written in code, and generate with it at several multipliers.
//!
//! ```sh
//! scripts/fetch-model.sh   # the default model
//! cargo run --release -p bipo --example steer [MODEL] [MAX_STEPS]
//! ```
use std::sync::atomic::AtomicBool;

use bipo::data::{Dataset, PreferencePair};
use bipo::generate::{generate, GenerateOptions};
use bipo::steer::Steering;
use bipo::text::Message;
use bipo::train::pipeline::{self, Progress, TrainJob};
use bipo::train::rundir::Start;
use bipo::train::{default_layer, Event, TrainConfig};

/// Cheerful (matching) vs gloomy (opposite) answers to everyday questions.
const PAIRS: &[(&str, &str, &str)] = &[
    (
        "How was your weekend?",
        "Wonderful! I loved every minute of it.",
        "Dreary. Nothing went right.",
    ),
    (
        "What do you think of rainy days?",
        "Cosy and lovely, perfect for a good book!",
        "Miserable and grey, I hate them.",
    ),
    (
        "How do you feel about Mondays?",
        "A fresh start, I look forward to it!",
        "The worst day of the week, I dread it.",
    ),
    (
        "What is your view of cooking dinner?",
        "A joy! I love making something tasty.",
        "A chore I resent every evening.",
    ),
    (
        "How is your new job going?",
        "Brilliantly, I am thrilled to be there!",
        "Badly, I regret taking it.",
    ),
    (
        "What do you think about long walks?",
        "Delightful, they always lift my spirits!",
        "Tiring and pointless, I avoid them.",
    ),
    (
        "How do you like your neighbourhood?",
        "I adore it, the people are so kind!",
        "I dislike it, it is dull and noisy.",
    ),
    (
        "What do you make of learning a language?",
        "Exciting! Every new word is a small win.",
        "Frustrating, I never get anywhere.",
    ),
];

fn main() -> bipo::Result<()> {
    let mut args = std::env::args().skip(1);
    let model = args
        .next()
        .unwrap_or_else(|| "models/SmolLM2-135M-Instruct.Q4_1.gguf".into());
    let max_steps: Option<usize> = args.next().and_then(|s| s.parse().ok());
    let lm = bipo::load::load(&model, &Default::default())?;

    let pairs = PAIRS
        .iter()
        .map(|(q, m, o)| PreferencePair {
            question: q.to_string(),
            matching: m.to_string(),
            not_matching: o.to_string(),
        })
        .collect();
    let data = Dataset::from_pairs(pairs)?;
    let cfg = TrainConfig {
        layer: default_layer(lm.model.num_layers()),
        lr: 0.02,
        epochs: 10,
        batch_size: 2,
        max_steps,
        ..Default::default()
    };
    let out = std::env::temp_dir().join("bipo-example-steer");
    let mut job = TrainJob::new(&lm, cfg, &data, "<in-code pairs>".as_ref(), &out);
    job.start = Start::Replace;
    let stop = AtomicBool::new(false);
    let done = pipeline::run(&job, &stop, |p| {
        if let Progress::Event(Event::Epoch(e)) = p {
            eprintln!("epoch {}: loss {:.4}", e.epoch + 1, e.train_loss);
        }
    })?;
    let v = done.outcome.vector;
    eprintln!(
        "layer {}: |v| = {:.3}",
        job.cfg.layer,
        v.norms()[&job.cfg.layer]
    );

    let template = lm
        .chat_template
        .clone()
        .expect("the default model has a chat template");
    let prompt =
        template.render_prompt(&[Message::new("user", "How do you feel about winter?")])?;
    let ids = lm.tokenizer.encode_chat(&prompt, true)?;
    let opts = GenerateOptions {
        max_tokens: 40,
        ..Default::default()
    };
    for mult in [-8.0, 0.0, 8.0] {
        let steering =
            Steering::from_vectors(&[(v.clone(), mult)], lm.model.device(), lm.model.dtype())?;
        let g = generate(&lm.model, &lm.tokenizer, &ids, &steering, &opts, |_| Ok(()))?;
        println!("multiplier {mult:+}: {}", g.text.trim());
    }
    Ok(())
}
