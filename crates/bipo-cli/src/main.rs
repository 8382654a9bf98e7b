//! The `bipo` command: a thin layer that validates arguments into the library's types.

mod args;
mod commands;
mod out;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Steering vectors for language models: train, measure, apply, generate.
#[derive(Parser)]
#[command(name = "bipo", version, about, long_about = None)]
struct Cli {
    /// Worker threads for matrix work (default: all cores; also BIPO_THREADS or
    /// RAYON_NUM_THREADS).
    #[arg(long, global = true, value_name = "N", value_parser = args::positive, env = "BIPO_THREADS")]
    threads: Option<usize>,
    /// Print only results, warnings and errors (no progress or notes).
    #[arg(long, short = 'q', global = true)]
    quiet: bool,
    /// Also print details: the model as loaded (family, sizes, weights, device, kernels,
    /// load time), threads, and the full settings of train and eval.
    #[arg(long, global = true, conflicts_with = "quiet")]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text from a prompt, optionally steered.
    Generate(commands::generate::Args),
    /// Interactive chat; `/m X` changes the steering multiplier between turns.
    Chat(commands::chat::Args),
    /// Serve the model over an OpenAI-compatible HTTP API; each request brings its own steering.
    Serve(commands::serve::Args),
    /// Show a model's architecture, sizes, tokenizer and chat template.
    Inspect(commands::inspect::Args),
    /// Measure prompt and decode speed with and without steering.
    Bench(commands::bench::Args),
    /// Load-test an OpenAI-compatible server (bipo's or llama.cpp's): tokens/s, latency, first token.
    BenchServe(commands::bench_serve::Args),
    /// Time BiPO training steps: bipo's algorithm beside the reference algorithm.
    BenchTrain(commands::bench_train::Args),
    /// Fold steering vectors into a model GGUF (llama architecture).
    Bake(commands::bake::Args),
    /// Inspect, convert, scale, combine and compare steering-vector files.
    Vector(commands::vector::Args),
    /// Train a steering vector with BiPO on preference pairs.
    Train(commands::train::Args),
    /// Compute a baseline vector: CAA, PCA of pair differences, or a random control.
    Baseline(commands::baseline::Args),
    /// Measure vectors over multipliers: A/B probability, held-out margins, steerability, damage, open-ended answers.
    Eval(commands::eval::Args),
    /// Re-render report.md and the plots of a report folder from its report.json.
    Report {
        /// Folder holding report.json.
        dir: std::path::PathBuf,
    },
    /// BiPO beside CAA, PCA, mean-centring and random on the same data and layer, in one report.
    Compare(commands::compare::Args),
    /// Quick per-layer CAA sweep on A/B questions, to choose the layer.
    SweepLayers(commands::sweep::Args),
    /// Print a shell completion script: `bipo completions bash > /etc/bash_completion.d/bipo`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    out::set_quiet(cli.quiet);
    out::set_verbose(cli.verbose);
    bipo::util::tune_candle_pool();
    bipo::util::tune_allocator();
    if let Some(n) = cli.threads {
        // candle's own thread pool reads this before first use.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    // The whole command runs on a worker of the rayon pool, so the many small parallel
    // loops of a forward pass are shared by work stealing instead of each waking the
    // pool from outside (a context switch per matrix product).
    let mut pool = rayon::ThreadPoolBuilder::new();
    if let Some(n) = cli.threads {
        pool = pool.num_threads(n);
    }
    let result = if matches!(cli.command, Command::Serve(_)) {
        // The server's engine moves each step onto the global pool itself (a blocked
        // main closure would hold one of its workers for the server's lifetime).
        match pool.build_global() {
            Ok(()) => run(cli.command),
            Err(e) => Err(anyhow::anyhow!("starting the thread pool: {e}")),
        }
    } else {
        match pool.build() {
            Ok(pool) => pool.install(|| run(cli.command)),
            Err(e) => Err(anyhow::anyhow!("starting the thread pool: {e}")),
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&e),
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Generate(a) => commands::generate::run(a),
        Command::Serve(a) => commands::serve::run(a),
        Command::Chat(a) => commands::chat::run(a),
        Command::Inspect(a) => commands::inspect::run(a),
        Command::Bench(a) => commands::bench::run(a),
        Command::Train(a) => commands::train::run(a),
        Command::Vector(a) => commands::vector::run(a),
        Command::Bake(a) => commands::bake::run(a),
        Command::BenchTrain(a) => commands::bench_train::run(a),
        Command::BenchServe(a) => commands::bench_serve::run(a),
        Command::Baseline(a) => commands::baseline::run(a),
        Command::Eval(a) => commands::eval::run(a),
        Command::Report { dir } => bipo::eval::pipeline::EvalOutput::read(&dir)
            .and_then(|r| r.write(&dir))
            .map_err(Into::into),
        Command::Compare(a) => commands::compare::run(a),
        Command::SweepLayers(a) => commands::sweep::run(a),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "bipo", &mut buf);
            outln!("{}", String::from_utf8_lossy(&buf).trim_end())?;
            Ok(())
        }
    }
}

/// Help and version go out as clap writes them; a usage error becomes one line (the
/// lines before clap's usage hint, joined), exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(e.exit_code() as u8);
    }
    let text = e.render().to_string();
    let line = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    note!("{}", bipo::util::redact::redact(&line));
    ExitCode::from(2)
}

/// Prints an error as one redacted line and picks the exit code: 2 for bad input, 1 for
/// failures; a closed standard output (the reader of a pipe went away) ends quietly.
fn report(e: &anyhow::Error) -> ExitCode {
    if let Some(io) = out::stdout_failure(e) {
        if io.kind() == std::io::ErrorKind::BrokenPipe {
            return ExitCode::SUCCESS;
        }
    }
    let line = format!("{e:#}").replace('\n', " ");
    note!("error: {}", bipo::util::redact::redact(&line));
    // The library's errors know their class; the CLI's own are argument checks (2),
    // except failed writes to standard output and tensor errors (1).
    let code = match e.chain().find_map(|c| c.downcast_ref::<bipo::Error>()) {
        _ if out::stdout_failure(e).is_some() => 1,
        Some(b) => b.exit_code(),
        None if e.chain().any(|c| c.is::<candle_core::Error>()) => 1,
        None => 2,
    };
    ExitCode::from(code as u8)
}
