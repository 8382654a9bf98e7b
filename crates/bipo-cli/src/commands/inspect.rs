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
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!("source:        {}", info.source);
    println!("format:        {} ({})", info.format, info.weights);
    println!("architecture:  {}", info.family);
    println!(
        "layers:        {} (steerable layers 0..{})",
        c.num_layers,
        c.num_layers - 1
    );
    println!("hidden size:   {}", c.hidden_size);
    println!("mlp size:      {}", c.intermediate_size);
    println!(
        "heads:         {} query, {} key/value, head dim {}",
        c.num_heads, c.num_kv_heads, c.head_dim
    );
    println!("vocabulary:    {}", c.vocab_size);
    println!("context:       {}", c.max_position_embeddings);
    println!("rope theta:    {}", c.rope_theta);
    println!("rms norm eps:  {:e}", c.rms_norm_eps);
    println!("tied head:     {}", c.tie_word_embeddings);
    println!("dtype:         {}", info.dtype);
    println!(
        "bos:           {} (added: {})",
        tok.bos_token_id()
            .map(|i| format!("{i} {}", name(i)))
            .unwrap_or("none".into()),
        tok.adds_bos()
    );
    let eos: Vec<String> = tok
        .eos_token_ids()
        .iter()
        .map(|&i| format!("{i} {}", name(i)))
        .collect();
    println!("eos:           {}", eos.join(", "));
    println!("chat template: {template}");
    Ok(())
}
