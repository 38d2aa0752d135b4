//! The `runnel` command.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runnel_host::cli::run::{RunArgs, run};
use tracing_subscriber::EnvFilter;

/// runnel: sandboxed WebAssembly stream functions on Kafka.
#[derive(Debug, Parser)]
#[command(name = "runnel", version, about, long_about = None)]
struct Cli {
    /// Log filter, in `tracing` syntax (for instance `info` or `runnel=debug`).
    #[arg(
        long,
        global = true,
        env = "RUNNEL_LOG",
        default_value = "warn,runnel::guest=info"
    )]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a function over records from a file or stdin, without Kafka, and
    /// print its outputs as JSON lines (the author's test harness).
    Run(RunArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_new(&cli.log).unwrap_or_else(|e| {
        eprintln!("warning: ignoring --log {:?}: {e}", cli.log);
        EnvFilter::new("warn")
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Run(args) => {
            let stdin = std::io::stdin();
            let stdout = std::io::stdout();
            let code = run(
                &args,
                &mut stdin.lock(),
                &mut std::io::BufWriter::new(stdout.lock()),
                &mut std::io::stderr(),
            );
            ExitCode::from(code)
        }
    }
}
