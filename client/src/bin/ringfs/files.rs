//! File commands: put, get, cat, ls, fsck.

use std::io::IsTerminal;
use std::time::Instant;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use ringfs_client::{Client, CreateOptions};
use ringfs_wire::msg::InodeKind;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{Failure, Outcome, show};

/// Directory entries `ls` holds in memory for one directory.
const LIST_ENTRIES_MAX: usize = 10_000_000;
/// Directories `ls -R` visits.
const RECURSION_DIRS_MAX: usize = 1_000_000;
/// Files `fsck` asks about per request.
const FSCK_PAGE_FILES: u32 = 1_000;
/// Requests one `fsck` makes. A page walks at least one file or directory,
/// so this is far above any tree a master holds at its page size.
const FSCK_PAGES_MAX: u64 = 10_000_000;
/// Unhealthy files `fsck` holds and lists; beyond it they are counted only.
const FSCK_UNHEALTHY_LISTED_MAX: usize = 100_000;

#[derive(Args)]
pub struct PutArgs {
    /// Local file, or `-` for stdin.
    local: String,
    /// Path in ringfs.
    remote: String,
    /// Replication goal (default: the directory's or the cluster's).
    #[arg(short, long, default_value_t = 0)]
    replication: u8,
    /// Fail if the ringfs file exists instead of replacing it.
    #[arg(long)]
    no_clobber: bool,
}

#[derive(Args)]
pub struct GetArgs {
    /// Path in ringfs.
    remote: String,
    /// Local file, or `-` for stdout.
    local: String,
}

#[derive(Args)]
pub struct CatArgs {
    path: String,
    /// First byte to print.
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Bytes to print (default: to the end).
    #[arg(long)]
    length: Option<u64>,
}

#[derive(Args)]
pub struct LsArgs {
    #[arg(default_value = "/")]
    path: String,
    /// Long format: mode, replication, owner, length, modification time.
    #[arg(short = 'l')]
    long: bool,
    /// Recurse into subdirectories.
    #[arg(short = 'R')]
    recursive: bool,
}

fn io_failure(what: &str, e: std::io::Error) -> Failure {
    Failure::Other(format!("{what}: {e}"))
}

/// A progress bar with throughput, when a person is watching.
fn progress(len: Option<u64>) -> Option<ProgressBar> {
    if !std::io::stdout().is_terminal() {
        return None;
    }
    let bar = match len {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::no_length(),
    };
    let style = ProgressStyle::with_template(
        "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    Some(bar)
}

fn rate(bytes: u64, started: Instant) -> String {
    let secs = started.elapsed().as_secs_f64().max(1e-6);
    format!("{}/s", show::bytes((bytes as f64 / secs) as u64))
}

pub async fn put(client: &Client, a: PutArgs, json: bool) -> Outcome {
    let started = Instant::now();
    let (mut input, len): (Box<dyn tokio::io::AsyncRead + Unpin + Send>, Option<u64>) =
        if a.local == "-" {
            (Box::new(tokio::io::stdin()), None)
        } else {
            let f = tokio::fs::File::open(&a.local)
                .await
                .map_err(|e| io_failure(&a.local, e))?;
            let len = f.metadata().await.ok().map(|m| m.len());
            (Box::new(f), len)
        };
    let mut writer = client
        .writer(
            &a.remote,
            CreateOptions {
                replication: a.replication,
                exclusive: a.no_clobber,
            },
        )
        .await?;
    let bar = progress(len);
    let mut buf = vec![0u8; client.options().piece_bytes];
    let mut total = 0u64;
    loop {
        let n = input
            .read(&mut buf)
            .await
            .map_err(|e| io_failure(&a.local, e))?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n]).await?;
        total += n as u64;
        if let Some(b) = &bar {
            b.set_position(total);
        }
    }
    let attr = writer.close().await?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    show::print(
        json,
        &json!({"put": a.remote, "length_bytes": attr.length_bytes, "seconds": started.elapsed().as_secs_f64()}),
        || {
            format!(
                "{} -> {}: {} in {:.2} s ({})",
                a.local,
                a.remote,
                show::bytes(attr.length_bytes),
                started.elapsed().as_secs_f64(),
                rate(attr.length_bytes, started)
            )
        },
    );
    Ok(())
}

pub async fn get(client: &Client, a: GetArgs, json: bool) -> Outcome {
    let started = Instant::now();
    let reader = client.reader(&a.remote).await?;
    let n = if a.local == "-" {
        let mut out = tokio::io::stdout();
        reader.copy_to(&mut out, |_| {}).await?
    } else {
        // Into a temp file beside the target, renamed when complete: a
        // failed get leaves no partial file under the asked-for name.
        let tmp = format!("{}.ringfs-part", a.local);
        let mut f = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| io_failure(&tmp, e))?;
        let bar = progress(Some(reader.len()));
        let result = reader
            .copy_to(&mut f, |done| {
                if let Some(b) = &bar {
                    b.set_position(done);
                }
            })
            .await;
        let n = match result {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e.into());
            }
        };
        f.sync_all().await.map_err(|e| io_failure(&tmp, e))?;
        tokio::fs::rename(&tmp, &a.local)
            .await
            .map_err(|e| io_failure(&a.local, e))?;
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        n
    };
    if a.local != "-" {
        show::print(
            json,
            &json!({"get": a.remote, "length_bytes": n, "seconds": started.elapsed().as_secs_f64()}),
            || {
                format!(
                    "{} -> {}: {} in {:.2} s ({})",
                    a.remote,
                    a.local,
                    show::bytes(n),
                    started.elapsed().as_secs_f64(),
                    rate(n, started)
                )
            },
        );
    }
    Ok(())
}

pub async fn cat(client: &Client, a: CatArgs) -> Outcome {
    let reader = client.reader(&a.path).await?;
    let mut out = tokio::io::stdout();
    if a.offset == 0 && a.length.is_none() {
        reader.copy_to(&mut out, |_| {}).await?;
        return Ok(());
    }
    let end = a
        .length
        .map_or(reader.len(), |n| a.offset.saturating_add(n))
        .min(reader.len());
    let piece = client.options().piece_bytes as u64 * 4;
    let mut at = a.offset;
    // Bounded by the file's length, a piece at a time.
    while at < end {
        let n = piece.min(end - at);
        let data = reader.read_at(at, n).await?;
        out.write_all(&data)
            .await
            .map_err(|e| io_failure("stdout", e))?;
        at += n;
    }
    out.flush().await.map_err(|e| io_failure("stdout", e))?;
    Ok(())
}

fn join(dir: &str, name: &str) -> String {
    if dir.ends_with('/') {
        format!("{dir}{name}")
    } else {
        format!("{dir}/{name}")
    }
}

pub async fn ls(client: &Client, a: LsArgs, json: bool) -> Outcome {
    let attr = client.stat(&a.path).await?;
    if attr.kind != InodeKind::Directory {
        show::print(json, &json!([show::attr_json(&a.path, &attr)]), || {
            if a.long {
                show::attr_line(&a.path, &attr)
            } else {
                a.path.clone()
            }
        });
        return Ok(());
    }
    let mut pending = vec![a.path.clone()];
    let mut all = Vec::new();
    let mut visited = 0usize;
    while let Some(dir) = pending.pop() {
        visited += 1;
        if visited > RECURSION_DIRS_MAX {
            return Err(Failure::Other(format!(
                "more than {RECURSION_DIRS_MAX} directories under {}",
                a.path
            )));
        }
        let entries = client.list(&dir, LIST_ENTRIES_MAX).await?;
        if a.recursive && !json {
            println!("{dir}:");
        }
        let mut subdirs = Vec::new();
        for e in &entries {
            let name = e.name.clone().unwrap_or_default();
            let Some(attr) = e.attr.as_deref() else {
                continue;
            };
            let path = join(&dir, &name);
            if json {
                all.push(show::attr_json(&path, attr));
            } else if a.long {
                println!("{}", show::attr_line(&name, attr));
            } else {
                println!("{name}");
            }
            if a.recursive && attr.kind == InodeKind::Directory {
                subdirs.push(path);
            }
        }
        if a.recursive && !json {
            println!();
        }
        // Depth first, in name order.
        pending.extend(subdirs.into_iter().rev());
    }
    if json {
        println!("{}", serde_json::Value::Array(all));
    }
    Ok(())
}

pub async fn fsck(client: &Client, path: &str, json: bool) -> Outcome {
    let mut after = String::new();
    let mut checked = 0u64;
    let mut unhealthy = Vec::new();
    let mut unhealthy_count = 0u64;
    // Pages resume from the master's cursor: the last node its walk
    // reached, healthy or not (resuming from the last unhealthy file
    // stopped after one page of healthy files, or repeated one forever).
    let mut pages = 0u64;
    loop {
        pages += 1;
        if pages > FSCK_PAGES_MAX {
            return Err(Failure::Other(format!(
                "fsck of {path} did not finish in {FSCK_PAGES_MAX} requests"
            )));
        }
        let page = client.fsck_page(path, &after, FSCK_PAGE_FILES).await?;
        checked += page.files_checked;
        for f in page.files.unwrap_or_default() {
            let chunks: Vec<_> = f
                .unhealthy_chunks
                .unwrap_or_default()
                .iter()
                .map(|c| {
                    json!({
                        "index": c.index, "handle": c.handle, "version": c.version,
                        "goal": c.goal, "live": c.live_replicas,
                        "corrupt": c.corrupt_replicas, "stale": c.stale_replicas,
                        "state": chunk_state(c.live_replicas, c.goal),
                    })
                })
                .collect();
            if !chunks.is_empty() {
                unhealthy_count += 1;
                if unhealthy.len() < FSCK_UNHEALTHY_LISTED_MAX {
                    unhealthy.push(json!({"path": f.path, "chunk_count": f.chunk_count, "unhealthy_chunks": chunks}));
                }
            }
        }
        if !page.more {
            break;
        }
        // The cursor must move forward, or paging would never end (a
        // master from before the cursor existed sends none).
        match page.next_after {
            Some(next) if !next.is_empty() && next != after => after = next,
            _ => {
                return Err(Failure::Other(format!(
                    "fsck of {path}: the master said there is more but gave no new place to resume \
                     (after {after:?}); is it older than this client?"
                )));
            }
        }
    }
    let healthy = unhealthy_count == 0;
    show::print(
        json,
        &json!({"path": path, "files_checked": checked, "healthy": healthy,
                "unhealthy_file_count": unhealthy_count, "unhealthy_files": unhealthy}),
        || {
            let mut s = String::new();
            for f in &unhealthy {
                s.push_str(&format!("{}\n", f["path"].as_str().unwrap_or("")));
                for c in f["unhealthy_chunks"].as_array().into_iter().flatten() {
                    s.push_str(&format!(
                        "  chunk {} (handle {}, version {}): {}, {} of {} live, {} corrupt, {} stale\n",
                        c["index"], c["handle"], c["version"], c["state"].as_str().unwrap_or(""),
                        c["live"], c["goal"], c["corrupt"], c["stale"]
                    ));
                }
            }
            s.push_str(&format!(
                "{checked} file(s) checked under {path}: {}",
                if healthy {
                    "healthy".to_string()
                } else {
                    format!("{unhealthy_count} with unhealthy chunks")
                }
            ));
            s
        },
    );
    if healthy {
        Ok(())
    } else {
        Err(Failure::Other(format!(
            "{unhealthy_count} unhealthy file(s)"
        )))
    }
}

fn chunk_state(live: u8, goal: u8) -> &'static str {
    if live == 0 {
        "missing"
    } else if live < goal {
        "under-replicated"
    } else {
        "corrupt or stale replicas"
    }
}
