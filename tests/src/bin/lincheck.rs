//! `lincheck`: checks a recorded history for linearizability, for scripts.
//!
//! The history is JSON lines as documented in `dbqs_tests::linearizability`
//! (and docs/linearizability.md). Exit status: 0 linearizable; 1 not
//! linearizable, with each bad object and a witness printed on standard
//! output; 2 unknown (a search ran out of budget) or bad input/usage, with the
//! reason on standard error.

use std::fs::File;
use std::io::{self, BufReader};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dbqs_tests::linearizability::{CheckConfig, Verdict, check, read_history};

/// Checks a recorded read/write history (JSON lines) for linearizability.
///
/// Exit status: 0 linearizable, 1 not linearizable (why on stdout), 2 unknown
/// (search budget exhausted) or bad input.
#[derive(Parser)]
#[command(name = "lincheck")]
struct Args {
    /// The history file; `-` reads standard input.
    history: PathBuf,
    /// Search steps per object before its verdict is "unknown".
    #[arg(long, default_value_t = CheckConfig::default().max_steps)]
    max_steps: u64,
    /// Search steps per object spent shrinking a violation to a small witness.
    #[arg(long, default_value_t = CheckConfig::default().max_minimize_steps)]
    max_minimize_steps: u64,
    /// Print only the verdict line.
    #[arg(long, short)]
    quiet: bool,
}

const UNKNOWN_OR_BAD_INPUT: u8 = 2;

fn main() -> ExitCode {
    // Usage errors exit with 2 too (clap's default).
    let args = Args::parse();
    let name = args.history.display().to_string();
    let decoded = if name == "-" {
        read_history(io::stdin().lock())
    } else {
        match File::open(&args.history) {
            Ok(f) => read_history(BufReader::new(f)),
            Err(e) => {
                eprintln!("lincheck: {name}: {e}");
                return ExitCode::from(UNKNOWN_OR_BAD_INPUT);
            }
        }
    };
    let history = match decoded {
        Ok(h) => h,
        Err(e) => {
            eprintln!("lincheck: {name}: {e}");
            return ExitCode::from(UNKNOWN_OR_BAD_INPUT);
        }
    };
    let report = check(
        &history,
        &CheckConfig {
            max_steps: args.max_steps,
            max_minimize_steps: args.max_minimize_steps,
        },
    );
    let text = report.to_string();
    let shown = if args.quiet {
        text.lines().next().unwrap_or_default()
    } else {
        text.trim_end()
    };
    match report.verdict() {
        Verdict::Linearizable => {
            println!("{shown}");
            ExitCode::SUCCESS
        }
        Verdict::NotLinearizable => {
            println!("{shown}");
            ExitCode::from(1)
        }
        Verdict::Unknown => {
            eprintln!("lincheck: {shown}");
            ExitCode::from(UNKNOWN_OR_BAD_INPUT)
        }
    }
}
