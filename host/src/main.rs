//! The `host` command line.

use clap::{Parser, Subcommand};
use host::deploy::admin::{Deployed, FunctionInfo, ParkedReport, RetryReport};
use host::deploy::shadow::ShadowReport;
use host::{Project, Shell};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Every step allocates on whichever worker runs it: mimalloc's per-thread
/// heaps keep that off glibc's shared arena locks (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    /// Options of `run`, the default command (`host --project FILE` is `host run --project FILE`).
    #[command(flatten)]
    run: RunArgs,
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
    /// Run the shell and rebuild the guests when their sources change: each
    /// component whose content changed is swapped in (the modules watcher).
    Dev(DevArgs),
    /// Rebuild read models from the Postgres event log while the shells serve (a new generation,
    /// then an atomic switch); --dry-run compares a candidate, --in-place replays with the shells stopped.
    Replay(ReplayArgs),
    /// Deploy a new version of a function to a running shell, which swaps it in without a restart.
    Deploy {
        /// The function to replace (its `meta` name must match).
        name: String,
        /// The component file (e.g. modules/invite-customer.wasm).
        #[arg(required_unless_present = "abort")]
        file: Option<PathBuf>,
        /// Replace it even if it changes the function's kind, inputs or output.
        #[arg(long, conflicts_with = "shadow")]
        force: bool,
        /// Run it in shadow beside the running version, comparing, applying nothing
        /// (see `host shadow`, `host promote`).
        #[arg(long)]
        shadow: bool,
        /// Drop the function's candidate in shadow (no FILE).
        #[arg(long, conflicts_with_all = ["file", "shadow", "force"])]
        abort: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show how a function's candidate in shadow compares with the running version.
    Shadow {
        name: String,
        /// Drop the candidate.
        #[arg(long)]
        abort: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Deploy a function's candidate in shadow (the usual deploy and its checks).
    Promote {
        name: String,
        /// Replace it even if it changes the function's kind, inputs or output.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Swap a function back to the version it had before its last deploy.
    Rollback {
        /// The function to roll back (as `host functions` lists it).
        name: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the functions a running shell has loaded.
    Functions {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show which shell processes each consumer (a function, or one partition of it).
    Status {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// List the events parked by a running shell's consumers (and the consumers stopped at one).
    Parked {
        /// Only this function's.
        #[arg(long, short, value_name = "NAME")]
        function: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run a function's parked events again with its current version (e.g. after deploying a fix).
    Retry {
        name: String,
        /// Only the event at this log position; every parked event of the function when absent.
        position: Option<u64>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Run scenario files against one component, with no database, bus or server.
    Test(host::stub::scenario::TestArgs),
    /// Start a new function from a template, with its scenario file: it builds
    /// (`make guest`), passes `host test`, and loads into a shell as generated.
    New {
        /// Its name: lower-case words and dashes (e.g. book-room). Name a trio alike
        /// (book-room, book-room-projector, book-room-resolver) and they work together.
        name: String,
        #[arg(long, value_enum)]
        kind: host::scaffold::Kind,
        #[arg(long, value_enum, default_value = "rust")]
        lang: host::scaffold::Lang,
        /// The project's root (where guest-functions/ and wit/ are).
        #[arg(long, value_name = "DIR", default_value = ".")]
        root: PathBuf,
    },
}

#[derive(clap::Args)]
struct ReplayArgs {
    /// Project file (its bus and store must be postgres).
    #[arg(long, short, value_name = "FILE")]
    project: PathBuf,
    /// The projector to replay; every projector when absent.
    #[arg(long, short, value_name = "NAME")]
    function: Option<String>,
    /// Build with this component (a new version of the projector) instead of
    /// the recorded version; the switch deploys it.
    #[arg(long, value_name = "FILE", requires = "function", conflicts_with_all = ["in_place", "drop_previous"])]
    component: Option<PathBuf>,
    /// Report how the rebuilt read model would differ from the one served
    /// (counts and samples), writing nothing.
    #[arg(long, requires = "function", conflicts_with_all = ["in_place", "drop_previous"])]
    dry_run: bool,
    /// Remove the previous generation kept by the last rebuild (no replay).
    #[arg(long, conflicts_with = "in_place")]
    drop_previous: bool,
    /// Replay into the served read model itself (emptied first), the shells
    /// stopped, instead of building a new generation while they serve.
    #[arg(long)]
    in_place: bool,
    /// Continue an in-place replay that stopped: keep the read model and go on
    /// after the stored checkpoint (the last event applied) instead of starting over.
    #[arg(long, conflicts_with_all = ["component", "dry_run", "drop_previous"])]
    resume: bool,
}

/// How to reach a running shell's admin endpoints.
#[derive(clap::Args)]
struct AdminArgs {
    /// Base URL of the shell.
    #[arg(long, value_name = "URL", env = "LOWSHELL_URL", default_value = "http://127.0.0.1:8080", value_parser = shell_url)]
    to: String,
    /// The shell's admin token.
    #[arg(long, env = "LOWSHELL_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
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

#[derive(clap::Args)]
struct DevArgs {
    #[command(flatten)]
    run: RunArgs,
    /// Folders whose changes trigger a build (recursively; build outputs ignored).
    #[arg(long, value_name = "DIR", default_values = ["guest-functions", "contract", "wit"])]
    sources: Vec<PathBuf>,
    /// The build, run with `sh -c`: it must write the components into the project's modules folder.
    #[arg(long, value_name = "COMMAND", default_value = "make guest")]
    build: String,
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
        match cli.command.unwrap_or(Command::Run(cli.run)) {
            Command::Run(args) => run(args).await,
            Command::Dev(args) => dev(args).await,
            Command::Replay(args) => replay(args).await,
            Command::Deploy { name, abort: true, admin, .. } => shadow(&name, true, &admin).await,
            Command::Deploy { name, file: Some(file), shadow: true, admin, .. } => {
                start_shadow(&name, &file, &admin).await
            }
            Command::Deploy { name, file: Some(file), force, admin, .. } => {
                deploy(&name, &file, force, &admin).await
            }
            Command::Deploy { .. } => anyhow::bail!("a component file is required (or --abort)"),
            Command::Shadow { name, abort, admin } => shadow(&name, abort, &admin).await,
            Command::Promote { name, force, admin } => {
                let url = format!(
                    "{}/admin/functions/{name}/promote?force={force}",
                    admin.to.trim_end_matches('/')
                );
                let done: Deployed = send(admin.request(reqwest::Method::POST, &url)).await?;
                match &done.previous_version {
                    Some(old) => {
                        println!("{}: promoted, {} → {}", done.name, short(old), short(&done.version))
                    }
                    None => println!("{}: promoted {}", done.name, short(&done.version)),
                }
                Ok(())
            }
            Command::Rollback { name, admin } => {
                let url = format!("{}/admin/functions/{name}/rollback", admin.to.trim_end_matches('/'));
                let done: Deployed = send(admin.request(reqwest::Method::POST, &url)).await?;
                println!("{}: rolled back to {}", done.name, short(&done.version));
                Ok(())
            }
            Command::Functions { admin } => {
                let url = format!("{}/admin/functions", admin.to.trim_end_matches('/'));
                let functions: Vec<FunctionInfo> = send(admin.request(reqwest::Method::GET, &url)).await?;
                println!(
                    "{:<24} {:<10} {:<13} {:<26} inputs → output",
                    "NAME", "KIND", "VERSION", "LOADED AT"
                );
                for f in functions {
                    let kind = format!("{:?}", f.kind).to_lowercase();
                    let output = f.output.as_deref().unwrap_or("-");
                    println!(
                        "{:<24} {:<10} {:<13} {:<26} {} → {output}",
                        f.name,
                        kind,
                        short(&f.version),
                        f.loaded_at,
                        f.inputs.join(",")
                    );
                }
                Ok(())
            }
            Command::Parked { function, admin } => parked(function.as_deref(), &admin).await,
            Command::Status { admin } => status(&admin).await,
            Command::Retry { name, position, admin } => retry(&name, position, &admin).await,
            Command::Test(args) => host::stub::scenario::run_cli(args).await,
            Command::New { name, kind, lang, root } => {
                let created = host::scaffold::create(&root, &name, kind, lang)?;
                println!("created the {kind} `{name}` in {}:", created.dir.display());
                for file in &created.files {
                    println!("  {}", file.display());
                }
                println!("{}", created.next);
                Ok(())
            }
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

fn project(args: &RunArgs) -> anyhow::Result<Project> {
    let mut project = match &args.project {
        Some(path) => Project::load(path)?,
        None => Project::default_project()?,
    };
    if let Some(listen) = args.listen {
        project.listen = listen;
    }
    Ok(project)
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    serve(Shell::start(project(&args)?).await?).await
}

async fn dev(args: DevArgs) -> anyhow::Result<()> {
    let mut project = project(&args.run)?;
    // The build's components reach the shell through its modules watcher.
    project.watch = true;
    let sources: Vec<PathBuf> = args.sources.into_iter().filter(|dir| dir.is_dir()).collect();
    if sources.is_empty() {
        anyhow::bail!("no sources to watch: run `host dev` where the guests are, or pass --sources DIR");
    }
    let shell = Shell::start(project).await?;
    let _rebuilder = host::deploy::dev::rebuild_on_change(&sources, args.build)?;
    serve(shell).await
}

async fn serve(mut shell: Shell) -> anyhow::Result<()> {
    tokio::select! {
        served = shell.wait() => served,
        () = shutdown_signal() => {
            tracing::info!("shutting down");
            shell.stop().await
        }
    }
}

/// Where a replay's version came from, for its report.
fn source_text(source: host::backend::postgres::replay::VersionSource) -> &'static str {
    use host::backend::postgres::replay::VersionSource;
    match source {
        VersionSource::Recorded => "the recorded deployment",
        VersionSource::File => "the module file; no deployment recorded",
        VersionSource::Candidate => "the candidate file",
    }
}

async fn replay(args: ReplayArgs) -> anyhow::Result<()> {
    use host::backend::postgres::rebuild;
    let project = Project::load(&args.project)?;
    let function = args.function.as_deref();
    if args.drop_previous {
        let dropped = rebuild::drop_previous(&project, function).await?;
        if dropped.is_empty() {
            println!(
                "no previous generation kept{}",
                function.map(|f| format!(" for `{f}`")).unwrap_or_default()
            );
        }
        for d in dropped {
            println!(
                "{}: dropped the previous generation of {} (`{}`, {} documents)",
                d.function, d.collection, d.physical, d.documents
            );
        }
        return Ok(());
    }
    if args.dry_run {
        let name = function.unwrap_or_default();
        let report = rebuild::dry_run(&project, name, args.component.as_deref()).await?;
        print_dry_run(&report);
        return Ok(());
    }
    if args.in_place || args.resume {
        return replay_in_place(&project, function, args.resume).await;
    }
    for done in rebuild::rebuild(&project, function, args.component.as_deref()).await? {
        println!(
            "{}: rebuilt while serving with version {} ({}): {} events, {} of them with the live consumer \
             paused; reads switched to generation {} at log position {}{}; the previous generation is kept \
             until `host replay --drop-previous`",
            done.function,
            short(&done.version.0),
            source_text(done.source),
            done.events,
            done.tail,
            done.generation,
            done.switched_at,
            if done.deployed { ", and the candidate deployed" } else { "" },
        );
    }
    Ok(())
}

fn print_dry_run(report: &host::backend::postgres::rebuild::DryRun) {
    println!(
        "{}: dry run of version {} ({}) over {} events, up to log position {}; nothing written",
        report.function,
        short(&report.version.0),
        source_text(report.source),
        report.events,
        report.up_to
    );
    for diff in &report.collections {
        println!(
            "  {}: {} served, {} rebuilt: {} added, {} removed, {} changed{}",
            diff.collection,
            diff.live,
            diff.candidate,
            diff.added_count,
            diff.removed_count,
            diff.changed_count,
            if diff.differs() { "" } else { " (the same)" }
        );
        for (key, body) in &diff.added {
            println!("    added   {key}: {}", brief(body));
        }
        for (key, body) in &diff.removed {
            println!("    removed {key}: {}", brief(body));
        }
        for (key, was, now) in &diff.changed {
            println!("    changed {key}: {} -> {}", brief(was), brief(now));
        }
    }
}

/// A document's body on one line, cut after 300 characters.
fn brief(body: &serde_json::Value) -> String {
    const MOST: usize = 300;
    let text = body.to_string();
    match text.char_indices().nth(MOST) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text,
    }
}

async fn replay_in_place(project: &Project, function: Option<&str>, resume: bool) -> anyhow::Result<()> {
    use host::backend::postgres::replay::{Start, Stopped};
    let start = if resume { Start::Checkpoint } else { Start::Scratch };
    let print = |done: &host::backend::postgres::replay::Replayed| {
        let source = source_text(done.source);
        let from = match done.cleared {
            Some(cleared) => format!("from scratch, {cleared} documents cleared first"),
            None => format!("resumed after log position {}", done.from),
        };
        println!(
            "{}: replayed {} events with version {} ({source}), {from}",
            done.function,
            done.events,
            short(&done.version.0)
        );
    };
    match host::backend::postgres::replay::replay(project, function, start).await {
        Ok(done) => {
            done.iter().for_each(print);
            Ok(())
        }
        Err(e) => {
            if let Some(stopped) = e.downcast_ref::<Stopped>() {
                stopped.done.iter().for_each(print);
            }
            Err(e)
        }
    }
}

impl AdminArgs {
    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = reqwest::Client::new().request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }
}

/// A shell's base URL: http(s), with a host.
fn shell_url(text: &str) -> Result<String, String> {
    match reqwest::Url::parse(text) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.has_host() => Ok(text.to_owned()),
        _ => Err(format!("`{text}` is not the URL of a shell (e.g. http://127.0.0.1:8080)")),
    }
}

/// An error with its causes: reqwest's own text alone ("error sending request") hides why.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text = format!("{text}: {cause}");
        source = cause.source();
    }
    text
}

fn short(version: &str) -> &str {
    &version[..12.min(version.len())]
}

/// Sends an admin request; a refusal becomes an error carrying the shell's reason.
async fn send<T: serde::de::DeserializeOwned>(request: reqwest::RequestBuilder) -> anyhow::Result<T> {
    let response =
        request.send().await.map_err(|e| anyhow::anyhow!("cannot reach the shell: {}", with_causes(&e)))?;
    let status = response.status();
    let body = response.text().await?;
    if !status.is_success() {
        let reason = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or(body);
        anyhow::bail!("{status}: {reason}");
    }
    serde_json::from_str(&body).map_err(|e| anyhow::anyhow!("unexpected answer from the shell ({e}): {body}"))
}

async fn deploy(name: &str, file: &std::path::Path, force: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let bytes =
        tokio::fs::read(file).await.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let url = format!("{}/admin/functions/{name}?force={force}", admin.to.trim_end_matches('/'));
    let done: Deployed = send(admin.request(reqwest::Method::PUT, &url).body(bytes)).await?;
    match (&done.previous_version, done.changed) {
        (_, false) => println!("{}: already running {}", done.name, short(&done.version)),
        (Some(old), true) => println!("{}: {} → {}", done.name, short(old), short(&done.version)),
        (None, true) => println!("{}: deployed {}", done.name, short(&done.version)),
    }
    Ok(())
}

async fn start_shadow(name: &str, file: &std::path::Path, admin: &AdminArgs) -> anyhow::Result<()> {
    let bytes =
        tokio::fs::read(file).await.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", file.display()))?;
    let url = format!("{}/admin/functions/{name}?shadow=true", admin.to.trim_end_matches('/'));
    let report: ShadowReport = send(admin.request(reqwest::Method::PUT, &url).body(bytes)).await?;
    println!(
        "{}: candidate {} in shadow beside {}; nothing it decides is applied \
         (`host shadow {name}` to compare, `host promote {name}` or `host shadow {name} --abort`)",
        report.function,
        short(&report.candidate_version),
        report.live_version.as_deref().map_or("-", short)
    );
    Ok(())
}

/// `host shadow NAME [--abort]`: the comparison so far (the last one, when aborting).
async fn shadow(name: &str, abort: bool, admin: &AdminArgs) -> anyhow::Result<()> {
    let url = format!("{}/admin/functions/{name}/shadow", admin.to.trim_end_matches('/'));
    let method = if abort { reqwest::Method::DELETE } else { reqwest::Method::GET };
    let report: ShadowReport = send(admin.request(method, &url)).await?;
    let live = report.live_version.as_deref().map_or("-", short);
    let what = if abort { "dropped" } else { "in shadow" };
    println!(
        "{}: candidate {} {what} beside {live} since {}",
        report.function,
        short(&report.candidate_version),
        report.since
    );
    println!(
        "same {}  different {}  failed {}  skipped {}  queued {}",
        report.same, report.different, report.failed, report.skipped, report.queued
    );
    for sample in &report.samples {
        let input = serde_json::to_string(&sample.input.payload).unwrap_or_default();
        println!("\n{} {:?} {} {input}", sample.at, sample.verdict, sample.input.kind);
        let live = serde_json::to_string(&sample.live).unwrap_or_default();
        println!("  live:      {live}");
        match (&sample.candidate, &sample.error) {
            (Some(candidate), _) => {
                println!("  candidate: {}", serde_json::to_string(candidate).unwrap_or_default())
            }
            (None, error) => println!("  candidate failed: {}", error.as_deref().unwrap_or("-")),
        }
    }
    Ok(())
}

async fn status(admin: &AdminArgs) -> anyhow::Result<()> {
    let url = format!("{}/admin/consumers", admin.to.trim_end_matches('/'));
    let holders: Vec<host::backend::Holder> = send(admin.request(reqwest::Method::GET, &url)).await?;
    if holders.is_empty() {
        println!("no leases: the shell runs every consumer itself (memory backend)");
        return Ok(());
    }
    println!("{:<40} SHELL", "CONSUMER");
    for h in &holders {
        println!("{:<40} {}", h.consumer, h.shell.as_deref().unwrap_or("- (nobody: waiting for a shell)"));
    }
    Ok(())
}

async fn parked(function: Option<&str>, admin: &AdminArgs) -> anyhow::Result<()> {
    let mut url = reqwest::Url::parse(&format!("{}/admin/parked", admin.to.trim_end_matches('/')))
        .map_err(|e| anyhow::anyhow!("invalid shell URL {}: {e}", admin.to))?;
    if let Some(function) = function {
        url.query_pairs_mut().append_pair("function", function);
    }
    let report: ParkedReport = send(admin.request(reqwest::Method::GET, url.as_str())).await?;
    if report.parked.is_empty() && report.stopped.is_empty() {
        println!("no parked events");
        return Ok(());
    }
    if !report.parked.is_empty() {
        println!(
            "{:<24} {:>9} {:>8} {:<26} {:<24} ERROR",
            "FUNCTION", "POSITION", "ATTEMPTS", "PARKED AT", "EVENT"
        );
    }
    for p in &report.parked {
        println!(
            "{:<24} {:>9} {:>8} {:<26} {:<24} {}",
            p.consumer,
            p.position,
            p.attempts,
            at(p.parked_at_ms),
            p.event.message.kind,
            p.error
        );
    }
    for s in &report.stopped {
        println!(
            "{}: stopped at position {} ({}, {} attempts since {}): {}",
            s.function,
            s.position,
            s.event.message.kind,
            s.attempts,
            at(s.since_ms),
            s.error
        );
    }
    Ok(())
}

/// Exits with failure when an event is still not applied.
async fn retry(name: &str, position: Option<u64>, admin: &AdminArgs) -> anyhow::Result<()> {
    let mut url = format!("{}/admin/functions/{name}/retry", admin.to.trim_end_matches('/'));
    if let Some(position) = position {
        url = format!("{url}?position={position}");
    }
    let report: RetryReport = send(admin.request(reqwest::Method::POST, &url)).await?;
    if report.retried.is_empty() {
        println!("{name}: no parked events");
    }
    let mut failed = 0;
    for r in &report.retried {
        match &r.error {
            None => println!("{name}: position {} applied", r.position),
            Some(error) => {
                failed += 1;
                println!("{name}: position {} failed again ({} attempts): {error}", r.position, r.attempts);
            }
        }
    }
    if failed > 0 {
        anyhow::bail!("{failed} of {} events were not applied", report.retried.len());
    }
    Ok(())
}

/// Milliseconds since the epoch, as RFC 3339.
fn at(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
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

#[cfg(test)]
mod tests {
    use super::brief;
    use serde_json::json;

    #[test]
    fn a_long_body_is_cut_and_a_short_one_kept() {
        assert_eq!(brief(&json!({ "a": 1 })), r#"{"a":1}"#);
        let long = brief(&json!({ "text": "é".repeat(1000) }));
        assert_eq!(long.chars().count(), 301);
        assert!(long.ends_with('…'));
    }
}
