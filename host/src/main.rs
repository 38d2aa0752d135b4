//! The `runnel` command.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use runnel_host::cli::build::BuildArgs;
use runnel_host::cli::control::{ApiArgs, ControlCommand};
use runnel_host::cli::new::NewArgs;
use runnel_host::cli::node::{BrokerArgs, DevArgs, ServeArgs};
use runnel_host::cli::run::{RunArgs, run};
use runnel_host::cli::topic::{ConsumeArgs, ProduceArgs, TopicCommand};
use tracing_subscriber::EnvFilter;

/// runnel: sandboxed WebAssembly stream functions on Kafka.
#[derive(Debug, Parser)]
#[command(name = "runnel", version, about, long_about = None)]
struct Cli {
    /// Log filter, in `tracing` syntax (for instance `info` or `runnel=debug`).
    /// Default: `warn,runnel::guest=info` for `run`, and runnel's own info lines otherwise.
    #[arg(long, global = true, env = "RUNNEL_LOG")]
    log: Option<String>,
    #[command(flatten)]
    api: ApiArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write a new function (Rust, or Python with --lang python): the
    /// function, a unit test, golden test data and a README.
    New(NewArgs),
    /// Build the function in a folder (Rust or Python) into a component.
    Build(BuildArgs),
    /// Run a function over records from a file or stdin, without Kafka, and
    /// print its outputs as JSON lines (the author's test harness).
    Run(RunArgs),
    /// Run an embedded Kafka-compatible broker (Tansu) alone, so that nodes
    /// can be started, killed and restarted against it.
    Broker(BrokerArgs),
    /// Run the deployments of a runnel.toml against a Kafka cluster.
    Serve(ServeArgs),
    /// Start an embedded broker, create the deployments' topics, and run the
    /// deployments against it: one node on a laptop.
    Dev(DevArgs),
    /// Write records to a topic, from JSON lines or raw lines (as `run` reads them).
    Produce(ProduceArgs),
    /// Print a topic's records as JSON lines, from the beginning.
    Consume(ConsumeArgs),
    /// Create, list and delete topics on any Kafka cluster.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    #[command(flatten)]
    Control(ControlCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.command {
        Command::Run(_) => "warn,runnel::guest=info",
        // The embedded broker logs every request at info.
        _ => "warn,runnel_host=info,runnel::guest=info",
    };
    let log = cli.log.as_deref().unwrap_or(default);
    let filter = EnvFilter::try_new(log).unwrap_or_else(|e| {
        eprintln!("warning: ignoring --log {log:?}: {e}");
        EnvFilter::new(default)
    });
    // The log filter is the terminal's; the journal (the deployments'
    // lines in the logs topic, see `runnel_host::journal`) has its own.
    use tracing_subscriber::Layer as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(colour(
                    std::io::stderr().is_terminal(),
                    std::env::var_os("NO_COLOR"),
                ))
                .with_filter(filter),
        )
        .with(runnel_host::journal::layer())
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
        Command::New(args) => {
            report(runnel_host::cli::new::new(&args).map(|said| print!("{said}")))
        }
        Command::Build(args) => report(
            runnel_host::cli::build::build(&args)
                .map(|built| eprint!("{}", runnel_host::cli::build::said(&built))),
        ),
        Command::Broker(args) => block_on(runnel_host::cli::node::broker(args)),
        Command::Serve(args) => block_on(runnel_host::cli::node::serve(args)),
        Command::Dev(args) => block_on(runnel_host::cli::node::dev(args)),
        Command::Produce(args) => report(
            runnel_host::cli::topic::produce(&args)
                .map(|n| eprintln!("runnel: {n} records produced to {}", args.topic)),
        ),
        Command::Control(command) => block_on(async move {
            let mut out = String::new();
            runnel_host::cli::control::run(&cli.api, &command, &mut out).await?;
            print!("{out}");
            Ok(())
        }),
        Command::Topic { command } => block_on(async move {
            let mut out = String::new();
            runnel_host::cli::topic::topic(&command, &mut out).await?;
            print!("{out}");
            Ok(())
        }),
        Command::Consume(args) => {
            let stdout = std::io::stdout();
            let result = runnel_host::cli::topic::consume(
                &args,
                &mut std::io::BufWriter::new(stdout.lock()),
            );
            report(result.map(|n| eprintln!("runnel: {n} records read from {}", args.topic)))
        }
    }
}

/// Log lines are coloured only on a terminal, and not when `NO_COLOR` is
/// set to anything but the empty string (no-color.org): a file, a pipe, a
/// journal or a pod's log gets no escape codes.
fn colour(terminal: bool, no_color: Option<std::ffi::OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a long-running command on a multi-threaded runtime; errors are
/// printed with their causes and exit 1.
fn block_on(f: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::colour;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
    }
}
