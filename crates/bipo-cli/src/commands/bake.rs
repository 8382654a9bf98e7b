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
    let vectors = a
        .vectors
        .iter()
        .map(|s| {
            let (p, m) = parse_vector_spec(s)?;
            Ok((bipo::io::read_vector(&p)?, m))
        })
        .collect::<Result<Vec<_>>>()?;
    bipo::bake::bake_gguf(&a.model, &vectors, &a.out)?;
    eprintln!("wrote {}", a.out.display());
    Ok(())
}
