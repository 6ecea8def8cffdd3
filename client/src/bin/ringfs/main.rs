//! `ringfs`: the command-line tool (DESIGN §6).
//!
//! Exit codes: 0 success, 1 error, 2 usage (bad arguments, no config),
//! 3 not found, 69 unavailable (sysexits EX_UNAVAILABLE: retry later).

mod admin_cmd;
mod files;
mod local_cmd;
mod show;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use ringfs_client::{Client, ClientOptions, Error, admin};
use ringfs_wire::config::Config;

pub const EXIT_ERROR: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_UNAVAILABLE: u8 = 69;

#[derive(Parser)]
#[command(
    name = "ringfs",
    version,
    about = "ringfs distributed file system",
    after_help = "Exit codes: 0 success, 1 error, 2 usage, 3 not found, 69 unavailable."
)]
struct Cli {
    /// Cluster config file (a local cluster's is DIR/ringfs.toml).
    #[arg(long, global = true, env = "RINGFS_CONFIG")]
    config: Option<PathBuf>,
    /// Machine-readable output (one JSON document on stdout).
    #[arg(long, global = true)]
    json: bool,
    /// How long a request may keep retrying (masters failing over,
    /// chunkservers registering) before the command exits with 69.
    #[arg(
        long,
        global = true,
        env = "RINGFS_DEADLINE_MS",
        default_value_t = 60_000
    )]
    deadline_ms: u64,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Copy a local file (or `-` for stdin) into ringfs.
    Put(files::PutArgs),
    /// Copy a ringfs file to a local file (or `-` for stdout).
    Get(files::GetArgs),
    /// Print a ringfs file, or a byte range of it.
    Cat(files::CatArgs),
    /// List a directory.
    Ls(files::LsArgs),
    /// Attributes of a file or directory.
    Stat { path: String },
    /// Create a directory.
    Mkdir {
        /// Create missing parents; an existing directory is fine.
        #[arg(short, long)]
        parents: bool,
        path: String,
    },
    /// Rename (atomically) a file or directory.
    Mv {
        src: String,
        dst: String,
        /// Replace an existing destination file or empty directory.
        #[arg(long)]
        replace: bool,
    },
    /// Move a file or directory to the trash (purged after the retention time).
    Rm {
        /// Directories and everything in them.
        #[arg(short, long)]
        recursive: bool,
        path: String,
    },
    /// Set the replication goal of a file (or, with -R, of a tree).
    Setrep {
        replication: u8,
        path: String,
        #[arg(short = 'R', long)]
        recursive: bool,
    },
    /// Replica health of the files under a path.
    Fsck {
        #[arg(default_value = "/")]
        path: String,
    },
    /// Cluster administration.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// A whole cluster on this machine (loopback).
    #[command(subcommand)]
    Local(local_cmd::LocalCommand),
    /// Write a fresh cluster key (mode 0600) to a new file.
    Keygen { path: PathBuf },
    /// Inspect the cluster config.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Masters, chunkservers, replica health and scrub coverage.
    Status(StatusArgs),
    /// Hand the leadership to another voter (maintenance), pausing
    /// mutations for one vote round; no request fails.
    Failover {
        /// The master to lead next; default: the most caught-up voter.
        #[arg(long)]
        to: Option<u64>,
    },
    /// Change the voting membership of the master group.
    #[command(subcommand)]
    Masters(MastersCommand),
}

#[derive(Subcommand)]
enum MastersCommand {
    /// Add a master of the config as a shadow (a read-only Raft learner).
    Add { id: u64 },
    /// Make a shadow a voter.
    Promote { id: u64 },
    /// Remove a master (voter or shadow) from the group.
    Remove { id: u64 },
}

#[derive(Args)]
struct StatusArgs {}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Parse and validate the config and its key file; list every problem.
    Check,
}

/// What a command ended with: printed by `main`, turned into an exit code.
pub enum Failure {
    Usage(String),
    /// A message and the exit code it stands for.
    Coded(u8, String),
    Client(Error),
    Other(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Client(e)
    }
}

pub type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("RINGFS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let json = cli.json;
    let outcome = match cli.command {
        Command::Keygen { path } => admin::keygen(&path)
            .map(|()| println!("wrote a new cluster key to {}", path.display()))
            .map_err(Failure::Other),
        Command::Config(ConfigCommand::Check) => match cli.config.as_ref() {
            // A config with problems is what `check` is for: exit 1, not usage.
            Some(path) => match Config::load(path) {
                Ok(config) => {
                    print!("{}", admin::describe(&config));
                    Ok(())
                }
                Err(e) => Err(Failure::Other(e.to_string())),
            },
            None => load_config(None).map(|_| ()),
        },
        Command::Local(cmd) => local_cmd::run(cmd, json),
        command => run_with_client(cli.config.as_ref(), json, cli.deadline_ms, command),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => report(&f),
    }
}

fn report(f: &Failure) -> ExitCode {
    let (message, code) = match f {
        Failure::Usage(m) => (m.clone(), EXIT_USAGE),
        Failure::Other(m) => (m.clone(), EXIT_ERROR),
        Failure::Coded(code, m) => (m.clone(), *code),
        Failure::Client(e) => {
            let code = match e {
                Error::NotFound { .. } => EXIT_NOT_FOUND,
                Error::Unavailable { .. } => EXIT_UNAVAILABLE,
                _ => EXIT_ERROR,
            };
            (e.to_string(), code)
        }
    };
    eprintln!("ringfs: {message}");
    ExitCode::from(code)
}

pub fn load_config(path: Option<&PathBuf>) -> Result<Config, Failure> {
    let Some(path) = path else {
        return Err(Failure::Usage(
            "no config: pass --config FILE or set RINGFS_CONFIG (a local cluster's is DIR/ringfs.toml, \
             see `ringfs local up`)"
                .into(),
        ));
    };
    Config::load(path).map_err(|e| Failure::Usage(e.to_string()))
}

fn run_with_client(
    config: Option<&PathBuf>,
    json: bool,
    deadline_ms: u64,
    command: Command,
) -> Outcome {
    let config = load_config(config)?;
    let mut options = ClientOptions::default();
    options.retry.deadline = std::time::Duration::from_millis(deadline_ms);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Other(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async move {
        let client = Client::new(&config, options)?;
        match command {
            Command::Put(a) => files::put(&client, a, json).await,
            Command::Get(a) => files::get(&client, a, json).await,
            Command::Cat(a) => files::cat(&client, a).await,
            Command::Ls(a) => files::ls(&client, a, json).await,
            Command::Stat { path } => {
                let attr = client.stat(&path).await?;
                show::print(json, &show::attr_json(&path, &attr), || {
                    show::attr_long(&path, &attr)
                });
                Ok(())
            }
            Command::Mkdir { parents, path } => {
                let attr = client.mkdir(&path, parents).await?;
                show::print(json, &show::attr_json(&path, &attr), || {
                    format!("created {path}")
                });
                Ok(())
            }
            Command::Mv { src, dst, replace } => {
                client.rename(&src, &dst, replace).await?;
                show::print(
                    json,
                    &serde_json::json!({"renamed": src, "to": dst}),
                    || format!("renamed {src} to {dst}"),
                );
                Ok(())
            }
            Command::Rm { recursive, path } => {
                let trash_id = client.delete(&path, recursive).await?;
                show::print(
                    json,
                    &serde_json::json!({"deleted": path, "trash_id": trash_id}),
                    || format!("moved {path} to the trash (id {trash_id})"),
                );
                Ok(())
            }
            Command::Setrep {
                replication,
                path,
                recursive,
            } => {
                if replication == 0 {
                    return Err(Failure::Usage("replication is at least 1".into()));
                }
                let n = client
                    .set_replication(&path, replication, recursive)
                    .await?;
                show::print(
                    json,
                    &serde_json::json!({"path": path, "replication": replication, "files_changed": n}),
                    || format!("replication {replication} on {n} file(s) under {path}"),
                );
                Ok(())
            }
            Command::Fsck { path } => files::fsck(&client, &path, json).await,
            Command::Admin(AdminCommand::Status(_)) => admin_cmd::status(&client, json).await,
            Command::Admin(AdminCommand::Failover { to }) => {
                admin_cmd::failover(&client, to.unwrap_or(0), json).await
            }
            Command::Admin(AdminCommand::Masters(m)) => {
                use ringfs_wire::msg::MembershipOp;
                let (op, id) = match m {
                    MastersCommand::Add { id } => (MembershipOp::AddShadow, id),
                    MastersCommand::Promote { id } => (MembershipOp::Promote, id),
                    MastersCommand::Remove { id } => (MembershipOp::Remove, id),
                };
                admin_cmd::membership(&client, op, id, json).await
            }
            Command::Keygen { .. } | Command::Config(_) | Command::Local(_) => {
                unreachable!("handled before a client is made")
            }
        }
    })
}
