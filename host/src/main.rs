//! The `matchbox` command: parse the configuration, set up logging, call the
//! library.

use clap::parser::ValueSource;
use clap::{CommandFactory as _, FromArgMatches as _, Parser, Subcommand};
use matchbox::cli::{self, Connection, MatchersCommand, SubmitArgs, exit};
use tracing_subscriber::EnvFilter;

/// jemalloc instead of the system allocator: a host that runs a million small
/// jobs frees as much as it allocates, and glibc's malloc keeps most of what
/// is freed (per-thread arenas, fragmentation), so resident memory ratchets
/// up after every burst. jemalloc returns unused pages to the system after
/// the decay time below, from a background thread, so memory comes back
/// down once a burst has drained.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc reads its options from this symbol at start.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8; 60] = b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0\0";

#[derive(Parser)]
#[command(name = "matchbox", version, about = "A host for sandboxed job-matching work.")]
struct Cli {
    /// The client commands' connection: accepted before or after the
    /// subcommand (`matchbox --server URL matchers list`).
    #[command(flatten)]
    conn: Connection,
    #[command(subcommand)]
    command: Command,
}

/// The client flags, which mean nothing to `serve`, `tenant` and `new`;
/// `run` and `check` take `--json` only.
const CLIENT_FLAGS: [&str; 3] = ["server", "api_key", "json"];

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(Box<matchbox::Config>),
    /// Submit a matching job to a server.
    Submit(SubmitArgs),
    /// Show a task: its status and, once it has ended, its result.
    Task {
        /// The task id.
        id: String,
        /// Wait up to this long (e.g. `30s`) for the task to end before
        /// showing it.
        #[arg(long, value_name = "DURATION")]
        wait: Option<String>,
    },
    /// List, upload or remove matchers on a server.
    #[command(subcommand)]
    Matchers(MatchersCommand),
    /// Manage the tenants file that `matchbox serve --config` reads.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Run one job on a matcher in the sandbox the server uses, without a
    /// server: its rankings, its log lines and output, and the time of each
    /// phase.
    Run(Box<matchbox::author::RunArgs>),
    /// Check a component as `PUT /matchers/{name}` would, without a server.
    Check(Box<matchbox::author::CheckArgs>),
    /// Write a new matcher project (Rust, Python or JavaScript) that
    /// `matchbox check` accepts as it is.
    New(matchbox::author::template::NewArgs),
}

#[derive(Subcommand)]
enum TenantCommand {
    /// Add a tenant with a fresh API key: the key is printed once, on its
    /// own line; only its SHA-256 is written to the file.
    Add {
        /// The tenant's name: 1 to 64 of a-z, 0-9, '-', '_' and '.'.
        name: String,
        /// The tenants file (created if missing).
        #[arg(long, env = "MATCHBOX_CONFIG")]
        config: std::path::PathBuf,
        #[command(flatten)]
        quotas: matchbox::tenants::file::NewTenant,
        #[command(flatten)]
        limits: matchbox::tenants::file::HostFlags,
    },
}

fn main() -> anyhow::Result<()> {
    // wasmtime builds an error value each time a Store is dropped, and an
    // error captures a backtrace when RUST_BACKTRACE is set: a tenth of a
    // small job's time. Library backtraces are off unless asked for by
    // name; panics still print theirs under RUST_BACKTRACE.
    if std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // SAFETY: no other thread exists yet (the runtime is built below),
        // so nothing can read the environment while it is written.
        #[allow(unsafe_code)]
        unsafe {
            std::env::set_var("RUST_LIB_BACKTRACE", "0")
        };
    }
    let (conn, command) = parse();
    let command = match command {
        Command::Tenant(TenantCommand::Add { name, config, quotas, limits }) => {
            let added = matchbox::tenants::file::add(&config, &name, &quotas, &limits)?;
            println!("{}", added.key);
            println!("{}", added.webhook_secret);
            eprintln!(
                "added tenant '{name}' to {}; the API key (first line) is shown only this once. The second line \
                 is the secret its webhooks are signed with, for the tenant to check them (the file keeps it: \
                 keep the file readable by the host only). Restart matchbox serve to load it.",
                config.display()
            );
            return Ok(());
        }
        Command::New(args) => {
            let lang = args.lang;
            match matchbox::author::template::new(args) {
                Ok(dir) => {
                    println!("{}", dir.display());
                    eprintln!(
                        "wrote a {} matcher project in {}; its README.md says how to build it",
                        lang.title(),
                        dir.display()
                    );
                    return Ok(());
                }
                Err(failure) => {
                    eprintln!("matchbox: {}", failure.message);
                    std::process::exit(failure.code.into());
                }
            }
        }
        Command::Serve(config) => {
            return tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(*config));
        }
        other => other,
    };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let result = runtime.block_on(async {
        match command {
            Command::Submit(args) => cli::submit(conn, args).await,
            Command::Task { id, wait } => cli::task(conn, id, wait).await,
            Command::Matchers(command) => cli::matchers(conn, command).await,
            Command::Run(args) => matchbox::author::run(*args, conn.json).await,
            Command::Check(args) => matchbox::author::check(*args, conn.json).await,
            Command::Serve(_) | Command::Tenant(_) | Command::New(_) => unreachable!("handled above"),
        }
    });
    if let Err(failure) = result {
        eprintln!("matchbox: {}", failure.message);
        std::process::exit(failure.code.into());
    }
    Ok(())
}

/// Parses the command line. A wrong one exits with [`exit::LOCAL`] (help
/// and version exit 0), as does a client flag given to `serve` or `tenant`.
fn parse() -> (Connection, Command) {
    let usage = |err: clap::Error| -> ! {
        let code = if err.use_stderr() { exit::LOCAL.into() } else { 0 };
        let _ = err.print();
        std::process::exit(code)
    };
    let matches = Cli::command().try_get_matches().unwrap_or_else(|e| usage(e));
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| usage(e));
    let refused: &[&str] = match matches.subcommand_name() {
        Some("serve" | "tenant" | "new") => &CLIENT_FLAGS,
        Some("run" | "check") => &CLIENT_FLAGS[..2],
        _ => &[],
    };
    if let Some(flag) = refused.iter().find(|id| given(&matches, id)) {
        eprintln!(
            "matchbox: --{} is a flag of the client commands (submit, task, matchers), not of {}",
            flag.replace('_', "-"),
            matches.subcommand_name().unwrap_or_default()
        );
        std::process::exit(exit::LOCAL.into());
    }
    (cli.conn, cli.command)
}

/// Whether the flag `id` was typed on the command line, at any level of
/// subcommands (a global flag is recorded where it was typed).
fn given(matches: &clap::ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(ValueSource::CommandLine)
        || matches.subcommand().is_some_and(|(_, sub)| given(sub, id))
}

async fn serve(config: matchbox::Config) -> anyhow::Result<()> {
    init_tracing(&config.log_format);
    config.check_exposure()?;

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let admin = match config.admin_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await?),
        None => None,
    };
    let drain_timeout = config.drain_timeout;
    let (workers, task_ttl, max_tasks) = (config.workers(), config.task_ttl, config.max_tasks);
    // Everything is checked and loaded (tenants file, store, matchers)
    // before the host says it serves.
    let state = matchbox::Matchbox::new(config).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        admin = ?admin.as_ref().and_then(|a| a.local_addr().ok()),
        workers,
        task_ttl = %humantime::format_duration(task_ttl),
        max_tasks,
        "matchbox serving"
    );
    // On a signal, drain first (new jobs get 503, reads go on so clients can
    // collect results), then stop the HTTP servers, then exit.
    let stop_http = tokio_util::sync::CancellationToken::new();
    let stopped = |token: &tokio_util::sync::CancellationToken| token.clone().cancelled_owned();
    let mut server = tokio::spawn(matchbox::run(listener, state.clone(), stopped(&stop_http)));
    let admin = admin.map(|admin| tokio::spawn(matchbox::run_admin(admin, state.clone(), stopped(&stop_http))));
    tokio::select! {
        _ = shutdown_signal() => {}
        // The server only ends by itself on an error.
        served = &mut server => return Ok(served??),
    }
    state.drain(drain_timeout).await;
    stop_http.cancel();
    server.await??;
    if let Some(admin) = admin {
        admin.await??;
    }
    tracing::info!("matchbox stopped");
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: a file or a pipe gets plain
    // text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
