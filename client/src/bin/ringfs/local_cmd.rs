//! `ringfs local`: a whole cluster on this machine, as child processes on
//! 127.0.0.1 (the work is in `ringfs_client::local`).

use std::path::PathBuf;

use clap::Subcommand;
use ringfs_client::local::{self, LocalError, UpOptions};

use crate::{EXIT_NOT_FOUND, Failure, Outcome, show};

#[derive(Subcommand)]
pub enum LocalCommand {
    /// Start masters and chunkservers on 127.0.0.1 and wait until healthy;
    /// on a stopped cluster's DIR, start it again with its data.
    Up {
        /// Where config, key, data and logs live (default ./ringfs-local).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Voting masters.
        #[arg(long, default_value_t = 1)]
        masters: usize,
        #[arg(long, default_value_t = 3)]
        chunkservers: usize,
        /// Read-only shadow masters.
        #[arg(long, default_value_t = 0)]
        shadows: usize,
    },
    /// Stop the daemons started by `up` (SIGTERM, then SIGKILL), by PID.
    Down {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Health of the local cluster: exit 0 when healthy.
    Status {
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

fn failure(e: LocalError) -> Failure {
    let code = match &e {
        LocalError::NotFound { .. } => EXIT_NOT_FOUND,
        other => other.exit_code(),
    };
    Failure::Coded(code, e.to_string())
}

fn to_json<T: serde::Serialize>(v: &T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

pub fn run(cmd: LocalCommand, json: bool) -> Outcome {
    match cmd {
        LocalCommand::Up {
            dir,
            masters,
            chunkservers,
            shadows,
        } => {
            if chunkservers == 0 {
                return Err(Failure::Usage(
                    "a cluster needs at least one chunkserver".into(),
                ));
            }
            let opts = UpOptions {
                dir: dir.unwrap_or_else(local::default_dir),
                masters,
                chunkservers,
                shadows,
                bin_dir: None,
            };
            let cluster = local::up(&opts).map_err(failure)?;
            show::print(json, &to_json(&cluster), || cluster.describe());
            Ok(())
        }
        LocalCommand::Down { dir } => {
            let dir = dir.unwrap_or_else(local::default_dir);
            let report = local::down(&dir).map_err(failure)?;
            show::print(json, &to_json(&report), || report.describe());
            if report.all_stopped() {
                Ok(())
            } else {
                Err(Failure::Other("some daemons did not stop".into()))
            }
        }
        LocalCommand::Status { dir } => {
            let dir = dir.unwrap_or_else(local::default_dir);
            let status = local::status(&dir).map_err(failure)?;
            show::print(json, &to_json(&status), || status.describe());
            if status.healthy() {
                Ok(())
            } else {
                Err(Failure::Coded(
                    crate::EXIT_UNAVAILABLE,
                    "the local cluster is not healthy".into(),
                ))
            }
        }
    }
}
