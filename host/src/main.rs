//! The `host` command line.

use clap::{Parser, Subcommand};
use host::{Project, Shell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// lowshell — runs LOW-pattern business functions (WebAssembly components)
/// and serves them over GraphQL.
#[derive(Parser)]
#[command(
    name = "host",
    version,
    about,
    long_about = None,
    after_help = "Logs: RUST_LOG selects what is logged (default: info,wasmtime=warn,cranelift=warn).\n\
                  Configuration: the project file, then LOWSHELL_* environment overrides, then options\n\
                  (see docs/operations.md). Endpoints: / (GraphQL, GraphiQL), /ws, /healthz, /readyz, /metrics."
)]
struct Cli {
    /// Log format: `text` for people, `json` (one object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOWSHELL_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Start the shell (the default when no command is given).
    Run(RunArgs),
}

#[derive(clap::Args, Default)]
struct RunArgs {
    /// Project file: which functions, bus, store and address; LOWSHELL_* environment
    /// variables override its keys (e.g. LOWSHELL_LIMITS__DEADLINE_MS=500).
    /// Default: projects/basic.toml (memory bus and store), or its built-in copy.
    #[arg(long, short, value_name = "FILE")]
    project: Option<PathBuf>,
    /// Address to listen on, overriding the project's `listen` (e.g. 127.0.0.1:0 for any free port).
    #[arg(long, short, value_name = "ADDR")]
    listen: Option<SocketAddr>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = || {
        EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,wasmtime=warn,cranelift=warn"))
    };
    // A line when a command, step or resolution span closes, with its ids and timings.
    let spans = tracing_subscriber::fmt::format::FmtSpan::CLOSE;
    match cli.log_format {
        LogFormat::Text => tracing_subscriber::fmt().with_span_events(spans).with_env_filter(filter()).init(),
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_span_events(spans)
            .with_current_span(true)
            .with_span_list(true)
            .with_env_filter(filter())
            .init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Run(RunArgs::default())) {
            Command::Run(args) => run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut project = match &args.project {
        Some(path) => Project::load(path)?,
        None => Project::default_project()?,
    };
    if let Some(listen) = args.listen {
        project.listen = listen;
    }
    let mut shell = Shell::start(project).await?;
    tokio::select! {
        served = shell.wait() => served,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            shell.stop().await
        }
    }
}

/// Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { () = ctrl_c => {}, () = term => {} }
}
