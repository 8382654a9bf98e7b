//! Chat templates: the model's own Jinja template, or the BiPO paper's fixed formats.

use serde::Serialize;

use crate::error::{Error, Result};

/// One chat message.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// How a conversation becomes prompt text.
#[derive(Clone, Debug)]
pub enum ChatTemplate {
    /// The model's own Jinja template (`tokenizer_config.json` `chat_template` or GGUF
    /// `tokenizer.chat_template`), with the model's BOS/EOS token strings.
    Jinja {
        source: String,
        bos_token: String,
        eos_token: String,
    },
    /// The paper's Llama-2-chat format:
    /// `[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{question} [/INST]`.
    Llama2,
    /// The paper's Mistral-instruct format: `[INST] {system}\n{question} [/INST]`.
    Mistral,
}

/// Names accepted by [`ChatTemplate::builtin`].
pub const BUILTIN_TEMPLATES: &[&str] = &["llama2", "mistral"];

impl ChatTemplate {
    /// A built-in template by name.
    pub fn builtin(name: &str) -> Result<Self> {
        match name {
            "llama2" => Ok(Self::Llama2),
            "mistral" => Ok(Self::Mistral),
            other => Err(Error::invalid(
                "chat template",
                format!(
                    "`{other}` is not built in (choose from {})",
                    BUILTIN_TEMPLATES.join(", ")
                ),
            )),
        }
    }

    /// Renders `messages` as prompt text ending where the assistant's answer begins.
    pub fn render(&self, messages: &[Message]) -> Result<String> {
        match self {
            Self::Jinja {
                source,
                bos_token,
                eos_token,
            } => render_jinja(source, messages, bos_token, eos_token),
            Self::Llama2 => Ok(render_inst(messages, |s, q| {
                format!("[INST] <<SYS>>\n{s}\n<</SYS>>\n\n{q} [/INST]")
            })),
            Self::Mistral => Ok(render_inst(messages, |s, q| {
                format!("[INST] {s}\n{q} [/INST]")
            })),
        }
    }

    /// Prompt for one question with an optional system prompt.
    pub fn prompt(&self, system: Option<&str>, question: &str) -> Result<String> {
        let mut msgs = Vec::new();
        if let Some(s) = system {
            msgs.push(Message::new("system", s));
        }
        msgs.push(Message::new("user", question));
        self.render(&msgs)
    }
}

/// `[INST] ... [/INST]` formats: the system prompt joins the first user turn; earlier
/// answers follow their question and close with `</s>` (the next BOS comes from the
/// tokenizer only at the very start, as in the paper's code).
fn render_inst(messages: &[Message], first: impl Fn(&str, &str) -> String) -> String {
    let system = messages
        .iter()
        .find(|m| m.role == "system")
        .map(|m| m.content.as_str());
    let mut out = String::new();
    let mut first_user = true;
    for m in messages.iter().filter(|m| m.role != "system") {
        match m.role.as_str() {
            "user" if first_user => {
                out += &match system {
                    Some(s) => first(s, &m.content),
                    None => format!("[INST] {} [/INST]", m.content),
                };
                first_user = false;
            }
            "user" => out += &format!("[INST] {} [/INST]", m.content),
            _ => out += &format!(" {} </s>", m.content),
        }
    }
    out
}

fn render_jinja(source: &str, messages: &[Message], bos: &str, eos: &str) -> Result<String> {
    let mut env = minijinja::Environment::new();
    env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
    // Templates call raise_exception("...") to reject conversations they cannot format.
    env.add_function(
        "raise_exception",
        |msg: String| -> std::result::Result<String, minijinja::Error> {
            Err(minijinja::Error::new(
                minijinja::ErrorKind::InvalidOperation,
                msg,
            ))
        },
    );
    env.add_function("strftime_now", |_fmt: String| -> String {
        // Templates use it for "Today's date"; a fixed string keeps prompts reproducible.
        String::from("01 Jan 2025")
    });
    env.add_template("chat", source)
        .map_err(|e| Error::Template(e.to_string()))?;
    let tmpl = env
        .get_template("chat")
        .map_err(|e| Error::Template(e.to_string()))?;
    tmpl.render(minijinja::context! {
        messages => messages,
        add_generation_prompt => true,
        bos_token => bos,
        eos_token => eos,
    })
    .map_err(|e| Error::Template(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llama2_template_is_the_papers_format() {
        let p = ChatTemplate::Llama2
            .prompt(
                Some("You are a helpful, honest and concise assistant."),
                "Q?",
            )
            .unwrap();
        assert_eq!(
            p,
            "[INST] <<SYS>>\nYou are a helpful, honest and concise assistant.\n<</SYS>>\n\nQ? [/INST]"
        );
        assert_eq!(
            ChatTemplate::Llama2.prompt(None, "Q?").unwrap(),
            "[INST] Q? [/INST]"
        );
    }

    #[test]
    fn mistral_template_is_the_papers_format() {
        assert_eq!(
            ChatTemplate::Mistral.prompt(Some("S"), "Q?").unwrap(),
            "[INST] S\nQ? [/INST]"
        );
    }

    #[test]
    fn jinja_templates_render_with_python_methods_and_generation_prompt() {
        let t = ChatTemplate::Jinja {
            source: "{% for m in messages %}<{{ m['role'].upper() }}>{{ m['content'].strip() }}{% endfor %}{% if add_generation_prompt %}<A>{% endif %}{{ eos_token }}".into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        };
        let out = t.render(&[Message::new("user", " hi ")]).unwrap();
        assert_eq!(out, "<USER>hi<A></s>");
    }

    #[test]
    fn template_errors_are_reported_not_panicked() {
        let t = ChatTemplate::Jinja {
            source: "{{ raise_exception('roles must alternate') }}".into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        let e = t
            .render(&[Message::new("user", "x")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("roles must alternate"), "{e}");
        assert!(ChatTemplate::builtin("nope").is_err());
    }
}
