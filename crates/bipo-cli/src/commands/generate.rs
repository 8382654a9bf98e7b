//! `bipo generate`

use std::io::Write;

use anyhow::Result;

use crate::args::{ModelArgs, PromptArgs, SampleArgs, SteerArgs};
use bipo::text::Message;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt: raw text (special-token strings like <|im_start|> become special
    /// tokens), or the user message with --chat.
    #[arg(long, short = 'p', value_name = "TEXT")]
    prompt: String,
    #[command(flatten)]
    prompt_fmt: PromptArgs,
    #[command(flatten)]
    steer: SteerArgs,
    #[command(flatten)]
    sample: SampleArgs,
    /// Print one JSON object per generated token with its K most likely alternatives
    /// (log-probabilities before sampling) instead of plain text.
    #[arg(long, value_name = "K")]
    logprobs: Option<usize>,
}

pub fn run(a: Args) -> Result<()> {
    let opts = a.sample.options(a.logprobs.unwrap_or(0))?;
    let lm = a.model.load()?;
    let vectors = a.steer.vectors(&lm)?;
    let steering = a.steer.steering(&vectors, &lm)?;
    let text = a
        .prompt_fmt
        .render(&lm, &[Message::new("user", &a.prompt)], &a.prompt)?;
    let ids = lm.tokenizer.encode(&text, true)?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let json = a.logprobs.is_some();
    let gen = bipo::generate::generate(&lm.model, &lm.tokenizer, &ids, &steering, &opts, |ev| {
        let r = if json {
            let line = serde_json::json!({
                "id": ev.id, "text": ev.text, "logprob": ev.logprob,
                "top": ev.top.iter().map(|(i, l)| serde_json::json!([i, l])).collect::<Vec<_>>(),
            });
            writeln!(out, "{line}")
        } else {
            write!(out, "{}", ev.text_delta).and_then(|_| out.flush())
        };
        r.map_err(|e| bipo::Error::io("<stdout>", e))
    })?;
    if !json {
        writeln!(out)?;
    }
    let n = gen.ids.len();
    eprintln!(
        "[{} prompt tokens in {:.2}s ({:.1} tok/s), {} generated in {:.2}s ({:.1} tok/s), finish: {:?}]",
        gen.prompt_tokens,
        gen.prompt_seconds,
        gen.prompt_tokens as f64 / gen.prompt_seconds.max(1e-9),
        n,
        gen.decode_seconds,
        n.saturating_sub(1) as f64 / gen.decode_seconds.max(1e-9),
        gen.finish_reason
    );
    Ok(())
}
