//! `dbqs-server`: run one storage node, or a whole devnet on loopback.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dbqs_server::{devnet, install_crypto, node, shutdown_signal};

#[derive(Parser)]
#[command(
    name = "dbqs-server",
    version,
    about = "dBQS storage node: Byzantine quorum object store"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run one node from the node.toml that `dbqs genesis` wrote.
    Run {
        #[arg(long, value_name = "NODE.toml")]
        config: PathBuf,
    },
    /// Run a node that is not in any configuration yet: it asks the members it
    /// knows (from its config_cert) for newer configurations until one admits it
    /// (after `dbqs admin add`), then serves like `run`.
    Join {
        #[arg(long, value_name = "NODE.toml")]
        config: PathBuf,
    },
    /// Check that the node of NODE.toml is serving (exit 0) or not (exit 1): its
    /// Storage service is SERVING only while it holds a freshness lease from the MS.
    /// The container healthcheck and readiness probe.
    Health {
        #[arg(long, value_name = "NODE.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
        /// Liveness only: exit 0 if the node answers at all, lease or not (so an MS
        /// outage does not get every node restarted).
        #[arg(long)]
        live: bool,
    },
    /// Start a whole cluster on loopback (genesis, nodes, client.toml), run a
    /// self-check, and serve until Ctrl-C; `devnet add-node` adds a node to a
    /// running devnet.
    Devnet(devnet::DevnetCli),
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn main() -> ExitCode {
    install_crypto();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("dbqs-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async {
        match cli.cmd {
            Cmd::Run { config } => {
                init_logs("info");
                let params = node::NodeParams::from_file(&config)?;
                let n = node::start(params).await?;
                shutdown_signal().await;
                tracing::info!("stopping");
                n.stop().await;
                Ok(true)
            }
            Cmd::Join { config } => {
                init_logs("info");
                let mut params = node::NodeParams::from_file(&config)?;
                params.join = true;
                let n = tokio::select! {
                    n = node::start(params) => n?,
                    _ = shutdown_signal() => {
                        tracing::info!("stopped before admission");
                        return Ok(true);
                    }
                };
                shutdown_signal().await;
                tracing::info!("stopping");
                n.stop().await;
                Ok(true)
            }
            Cmd::Health {
                config,
                timeout_ms,
                live,
            } => {
                let status =
                    node::health_check(&config, std::time::Duration::from_millis(timeout_ms), live)
                        .await?;
                println!("{status}");
                Ok(true)
            }
            Cmd::Devnet(cli) => {
                init_logs("warn");
                match cli.cmd {
                    None => devnet::run(cli.args).await,
                    Some(devnet::DevnetCmd::AddNode(a)) => devnet::add_node(a).await,
                }
            }
        }
    });
    match res {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("dbqs-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}
