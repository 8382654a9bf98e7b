//! `bipo chat`: an interactive conversation with steering adjustable between turns.

use std::io::{BufRead, Write};

use anyhow::Result;

use crate::args::{ModelArgs, PromptArgs, SampleArgs, SteerArgs};
use bipo::text::Message;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    prompt_fmt: PromptArgs,
    #[command(flatten)]
    steer: SteerArgs,
    #[command(flatten)]
    sample: SampleArgs,
}

const HELP: &str =
    "commands: /m X  set every vector's multiplier to X | /reset  forget the conversation | /quit";

pub fn run(mut a: Args) -> Result<()> {
    a.prompt_fmt.chat = true;
    let opts = a.sample.options(0)?;
    let lm = a.model.load()?;
    a.prompt_fmt.template(&lm)?;
    let mut vectors = a.steer.vectors(&lm)?;
    let mut steering = a.steer.steering(&vectors, &lm)?;
    let mut history: Vec<Message> = Vec::new();
    eprintln!("{HELP}");
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        let Some(line) = lines.next().transpose()? else {
            break;
        };
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if let Some(cmd) = line.strip_prefix('/') {
            let mut parts = cmd.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("quit" | "q" | "exit"), _) => break,
                (Some("reset"), _) => {
                    history.clear();
                    eprintln!("[conversation cleared]");
                }
                (Some("m" | "multiplier"), Some(x)) => match x.parse::<f32>() {
                    Ok(m) if m.is_finite() => {
                        vectors.iter_mut().for_each(|(_, mm)| *mm = m);
                        steering = a.steer.steering(&vectors, &lm)?;
                        eprintln!("[multiplier {m} on {} vector(s)]", vectors.len());
                    }
                    _ => eprintln!("[not a number: {x}]"),
                },
                _ => eprintln!("{HELP}"),
            }
            continue;
        }
        history.push(Message::new("user", line));
        let text = a.prompt_fmt.render(&lm, &history, "")?;
        let ids = lm.tokenizer.encode(&text, true)?;
        let stdout = std::io::stdout();
        let mut out = stdout.lock();
        let gen =
            bipo::generate::generate(&lm.model, &lm.tokenizer, &ids, &steering, &opts, |ev| {
                write!(out, "{}", ev.text_delta)
                    .and_then(|_| out.flush())
                    .map_err(|e| bipo::Error::io("<stdout>", e))
            })?;
        writeln!(out)?;
        history.push(Message::new("assistant", gen.text.trim()));
    }
    Ok(())
}
