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
    /// Check that the node of NODE.toml is serving (exit 0) or not (exit 1); the
    /// container healthcheck.
    Health {
        #[arg(long, value_name = "NODE.toml")]
        config: PathBuf,
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
    /// Start a whole cluster on loopback (genesis, nodes, client.toml), run a
    /// self-check, and serve until Ctrl-C.
    Devnet(devnet::DevnetArgs),
}

fn init_logs(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
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
            Cmd::Health { config, timeout_ms } => {
                node::health_check(&config, std::time::Duration::from_millis(timeout_ms)).await?;
                println!("serving");
                Ok(true)
            }
            Cmd::Devnet(args) => {
                init_logs("warn");
                devnet::run(args).await
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
