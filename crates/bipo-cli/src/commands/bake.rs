//! `bipo bake`: fold steering vectors into a model GGUF.

use std::path::PathBuf;

use anyhow::Result;

use crate::args::parse_vector_spec;

#[derive(clap::Args)]
pub struct Args {
    /// Input model GGUF (llama architecture).
    #[arg(long, short = 'm', value_name = "FILE")]
    model: PathBuf,
    /// Steering vector with optional multiplier (default 1); repeat to add several.
    #[arg(
        long = "vector",
        short = 'v',
        required = true,
        value_name = "FILE[:MULTIPLIER]"
    )]
    vectors: Vec<String>,
    /// Output model GGUF.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
}

pub fn run(a: Args) -> Result<()> {
    let specs = a
        .vectors
        .iter()
        .map(|s| parse_vector_spec(s))
        .collect::<Result<Vec<_>>>()?;
    let mut inputs = vec![("--model", a.model.as_path())];
    inputs.extend(specs.iter().map(|(p, _)| ("--vector", p.as_path())));
    bipo::util::fs::check_outputs(&inputs, &[("--out", &a.out)])?;
    if a.out.extension().and_then(|e| e.to_str()) != Some("gguf") {
        anyhow::bail!(
            "invalid --out {}: a baked model is a GGUF file; use a .gguf extension",
            a.out.display()
        );
    }
    bipo::util::fs::ensure_writable_parent(&a.out)?;
    let vectors = specs
        .into_iter()
        .map(|(p, m)| Ok((bipo::io::read_vector(&p)?, m)))
        .collect::<Result<Vec<_>>>()?;
    bipo::bake::bake_gguf(&a.model, &vectors, &a.out)?;
    crate::note!("wrote {}", a.out.display());
    Ok(())
}
