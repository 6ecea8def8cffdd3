//! `ringfs local`: a whole cluster on this machine.

use std::path::PathBuf;

use clap::Subcommand;

use crate::{Failure, Outcome};

#[derive(Subcommand)]
pub enum LocalCommand {
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

pub fn run(_cmd: LocalCommand, _json: bool) -> Outcome {
    Err(Failure::Other("ringfs local: being wired".into()))
}
