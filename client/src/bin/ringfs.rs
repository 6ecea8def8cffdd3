//! `ringfs`: the command-line tool.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ringfs_client::admin;
use ringfs_wire::config::Config;

/// Exit codes: 0 success, 1 error, 2 usage (clap), 69 unavailable (sysexits EX_UNAVAILABLE).
const EXIT_ERROR: u8 = 1;
const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(name = "ringfs", version, about = "ringfs distributed file system")]
struct Cli {
    /// Cluster config file.
    #[arg(long, global = true, env = "RINGFS_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a fresh cluster key (mode 0600) to a new file.
    Keygen { path: PathBuf },
    /// Inspect the cluster config.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// A whole cluster on this machine (loopback).
    #[command(subcommand)]
    Local(LocalCommand),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate the config and its key file; list every problem.
    Check,
}

#[derive(Subcommand)]
enum LocalCommand {
    /// Start masters and chunkservers on 127.0.0.1 and wait until healthy.
    Up {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Stop the daemons started by `up`.
    Down {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Health of the local cluster.
    Status {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Keygen { path } => match admin::keygen(&path) {
            Ok(()) => {
                println!("wrote a new cluster key to {}", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => fail(&e),
        },
        Command::Config(ConfigCommand::Check) => {
            let Some(path) = cli.config else {
                return fail("no config: pass --config FILE or set RINGFS_CONFIG");
            };
            match Config::load(&path) {
                Ok(config) => {
                    print!("{}", admin::describe(&config));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&e.to_string()),
            }
        }
        Command::Local(_) => {
            eprintln!(
                "ringfs local: not yet available. The local cluster needs the chunkserver (chunkd) \
                 and the metadata master (masterd), which are still being built; today ringfs has \
                 its wire protocol, handshake, config and checksum foundation. Run the tests with \
                 `cargo test --workspace`."
            );
            ExitCode::from(EXIT_UNAVAILABLE)
        }
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("ringfs: {message}");
    ExitCode::from(EXIT_ERROR)
}
