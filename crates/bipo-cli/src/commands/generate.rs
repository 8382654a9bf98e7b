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
    #[arg(
        long,
        short = 'p',
        value_name = "TEXT",
        required_unless_present = "prompt_file"
    )]
    prompt: Option<String>,
    /// Read the prompt from a file (`-` for standard input) instead of --prompt.
    #[arg(long, short = 'f', value_name = "FILE", conflicts_with = "prompt")]
    prompt_file: Option<std::path::PathBuf>,
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
    /// Print the prompt's token ids and their text to standard error first (one JSON line).
    #[arg(long)]
    show_prompt: bool,
}

pub fn run(a: Args) -> Result<()> {
    let opts = a.sample.options(a.logprobs.unwrap_or(0))?;
    let prompt = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) => p.clone(),
        (None, Some(f)) if f.as_os_str() == "-" => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)?;
            bipo::util::text_of(std::path::Path::new("<standard input>"), buf)?
        }
        (None, Some(f)) => bipo::util::read_text(f)?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let lm = a.model.load()?;
    let vectors = a.steer.vectors(&lm)?;
    let steering = a.steer.steering(&vectors, &lm)?;
    let ids = a
        .prompt_fmt
        .ids(&lm, &[Message::new("user", &prompt)], &prompt)?;
    if a.show_prompt {
        let tokens = ids
            .iter()
            .map(|&i| lm.tokenizer.token_text(i))
            .collect::<bipo::Result<Vec<_>>>()?;
        crate::note!(
            "{}",
            serde_json::json!({"prompt_ids": ids, "prompt_tokens": tokens})
        );
    }
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
        r.map_err(|e| bipo::Error::io(crate::out::STDOUT, e))
    })?;
    if !json {
        writeln!(out).map_err(crate::out::StdoutError)?;
    }
    let n = gen.ids.len();
    crate::note!(
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
