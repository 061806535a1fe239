//! The `matchbox` command: parse the configuration, set up logging, call the
//! library.

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "matchbox", version, about = "A host for sandboxed job-matching work.")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve(matchbox::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Command::Serve(config) = Cli::parse().command;
    init_tracing(&config.log_format);

    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    tracing::info!(
        listen = %listener.local_addr()?,
        workers = config.workers(),
        task_ttl = %humantime::format_duration(config.task_ttl),
        max_tasks = config.max_tasks,
        "matchbox serving"
    );
    let state = matchbox::Matchbox::new(config).await?;
    matchbox::run(listener, state, shutdown_signal()).await?;
    tracing::info!("matchbox stopped");
    Ok(())
}

fn init_tracing(format: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
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
