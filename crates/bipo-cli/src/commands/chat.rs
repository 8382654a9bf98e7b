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
    crate::note!("{HELP}");
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut buf = Vec::new();
    loop {
        eprint!("> ");
        std::io::stderr().flush()?;
        buf.clear();
        if input.read_until(b'\n', &mut buf)? == 0 {
            break;
        }
        let Ok(line) = std::str::from_utf8(&buf) else {
            crate::note!("[not UTF-8 text; line ignored]");
            continue;
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
                    crate::note!("[conversation cleared]");
                }
                (Some("m" | "multiplier"), Some(x)) => {
                    match x.parse::<f32>().map_err(anyhow::Error::from).and_then(|m| {
                        crate::args::check_multiplier(m)?;
                        Ok(m)
                    }) {
                        Ok(m) => {
                            vectors.iter_mut().for_each(|(_, mm)| *mm = m);
                            steering = a.steer.steering(&vectors, &lm)?;
                            crate::note!("[multiplier {m} on {} vector(s)]", vectors.len());
                        }
                        Err(e) => crate::note!("[{x}: {e}]"),
                    }
                }
                _ => crate::note!("{HELP}"),
            }
            continue;
        }
        history.push(Message::new("user", line));
        match turn(&a, &lm, &history, &steering, &opts) {
            Ok(answer) => history.push(Message::new("assistant", answer.trim())),
            Err(e) => {
                // One bad turn (too long for the context, say) does not end the session.
                if crate::out::stdout_failure(&e).is_some() {
                    return Err(e);
                }
                history.pop();
                crate::note!("error: {}", bipo::util::redact::redact(&format!("{e:#}")));
            }
        }
    }
    Ok(())
}

/// One exchange: the reply to the conversation so far, streamed to standard output.
fn turn(
    a: &Args,
    lm: &bipo::load::LoadedModel,
    history: &[Message],
    steering: &bipo::steer::Steering,
    opts: &bipo::generate::GenerateOptions,
) -> Result<String> {
    let ids = a.prompt_fmt.ids(lm, history, "")?;
    let gen = bipo::generate::generate(&lm.model, &lm.tokenizer, &ids, steering, opts, |ev| {
        crate::out!("{}", ev.text_delta).map_err(bipo::Error::from)
    })?;
    crate::outln!()?;
    Ok(gen.text)
}
