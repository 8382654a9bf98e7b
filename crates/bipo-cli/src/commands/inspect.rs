//! `bipo inspect`

use anyhow::Result;

use crate::args::ModelArgs;
use bipo::text::ChatTemplate;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let lm = a.model.load()?;
    let info = &lm.model.info;
    let c = &info.config;
    let tok = &lm.tokenizer;
    let name = |i: u32| tok.id_to_token(i).unwrap_or_default();
    let template = match &lm.chat_template {
        Some(ChatTemplate::Jinja { source, .. }) => format!("jinja ({} chars)", source.len()),
        Some(t) => format!("{t:?}"),
        None => "none".into(),
    };
    if a.json {
        let v = serde_json::json!({
            "info": info,
            "bos": tok.bos_token_id(),
            "eos": tok.eos_token_ids(),
            "adds_bos": tok.adds_bos(),
            "vocab_size_tokenizer": tok.vocab_size(),
            "chat_template": template,
        });
        crate::outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    crate::outln!("source:        {}", info.source)?;
    crate::outln!("format:        {} ({})", info.format, info.weights)?;
    crate::outln!("architecture:  {}", info.family)?;
    crate::outln!(
        "layers:        {} (steerable layers 0..{})",
        c.num_layers,
        c.num_layers - 1
    )?;
    crate::outln!("hidden size:   {}", c.hidden_size)?;
    crate::outln!("mlp size:      {}", c.intermediate_size)?;
    crate::outln!(
        "heads:         {} query, {} key/value, head dim {}",
        c.num_heads,
        c.num_kv_heads,
        c.head_dim
    )?;
    crate::outln!("vocabulary:    {}", c.vocab_size)?;
    crate::outln!("context:       {}", c.max_position_embeddings)?;
    crate::outln!("rope theta:    {}", c.rope_theta)?;
    crate::outln!("rms norm eps:  {:e}", c.rms_norm_eps)?;
    crate::outln!("tied head:     {}", c.tie_word_embeddings)?;
    crate::outln!("dtype:         {}", info.dtype)?;
    crate::outln!(
        "bos:           {} (added: {})",
        tok.bos_token_id()
            .map(|i| format!("{i} {}", name(i)))
            .unwrap_or("none".into()),
        tok.adds_bos()
    )?;
    let eos: Vec<String> = tok
        .eos_token_ids()
        .iter()
        .map(|&i| format!("{i} {}", name(i)))
        .collect();
    crate::outln!("eos:           {}", eos.join(", "))?;
    crate::outln!("chat template: {template}")?;
    Ok(())
}
