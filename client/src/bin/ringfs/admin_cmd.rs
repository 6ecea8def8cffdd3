//! `ringfs admin status`: the cluster at a glance; `admin failover` and
//! `admin masters add|promote|remove`: the master group by hand.

use ringfs_client::Client;
use ringfs_wire::msg::{ChunkserverState, MasterRole};
use serde_json::json;

use crate::{Outcome, show};

pub async fn status(client: &Client, json: bool) -> Outcome {
    let s = client.admin_status().await?;
    let masters = s.masters.unwrap_or_default();
    let servers = s.chunkservers.unwrap_or_default();
    let unverified: u64 = servers
        .iter()
        .map(|c| c.scrub_bytes_unverified_beyond_period)
        .sum();
    let value = json!({
        "masters": masters.iter().map(|m| json!({
            "id": m.id, "role": format!("{:?}", m.role).to_lowercase(), "term": m.term,
            "leader": m.leader, "commit_index": m.commit_index, "applied_index": m.applied_index,
            "lag": m.lag, "client_addr": m.client_addr,
        })).collect::<Vec<_>>(),
        "chunkservers": servers.iter().map(|c| json!({
            "node_id": c.node_id, "addr": c.addr, "rack": c.rack,
            "state": format!("{:?}", c.state).to_lowercase(),
            "capacity_bytes": c.capacity_bytes, "used_bytes": c.used_bytes,
            "chunk_count": c.chunk_count, "ops_in_flight": c.ops_in_flight,
            "last_heartbeat_ms_ago": c.last_heartbeat_ms_ago,
            "scrub_bytes_unverified_beyond_period": c.scrub_bytes_unverified_beyond_period,
        })).collect::<Vec<_>>(),
        "files": s.files, "directories": s.directories, "chunks": s.chunks,
        "under_replicated_chunks": s.under_replicated_chunks,
        "corrupt_replicas": s.corrupt_replicas, "missing_chunks": s.missing_chunks,
        "scrub_bytes_unverified_beyond_period": unverified,
    });
    show::print(json, &value, || {
        let mut out = String::from("masters\n  id  role         term  lag  address\n");
        for m in &masters {
            let role = match m.role {
                MasterRole::Leader => "leader",
                MasterRole::Follower => "follower",
                MasterRole::Candidate => "candidate",
                MasterRole::Shadow => "shadow",
                _ => "unreachable",
            };
            out.push_str(&format!(
                "  {:<3} {:<12} {:<5} {:<4} {}\n",
                m.id,
                role,
                m.term,
                m.lag,
                m.client_addr.as_deref().unwrap_or("")
            ));
        }
        out.push_str("chunkservers\n  id  state     used / capacity          chunks  load  heartbeat  address\n");
        for c in &servers {
            let state = match c.state {
                ChunkserverState::Live => "live",
                ChunkserverState::Dead => "dead",
                _ => "draining",
            };
            out.push_str(&format!(
                "  {:<3} {:<9} {:>10} / {:<12} {:>6}  {:>4}  {:>6} ms  {}{}\n",
                c.node_id,
                state,
                show::bytes(c.used_bytes),
                show::bytes(c.capacity_bytes),
                c.chunk_count,
                c.ops_in_flight,
                c.last_heartbeat_ms_ago,
                c.addr.as_deref().unwrap_or(""),
                c.rack
                    .as_deref()
                    .filter(|r| !r.is_empty())
                    .map(|r| format!(" rack {r}"))
                    .unwrap_or_default(),
            ));
        }
        out.push_str(&format!(
            "namespace  {} files, {} directories, {} chunks\n\
             health     {} under-replicated chunks, {} missing chunks, {} corrupt replicas \
             (as of the master's last pass over its chunks)\n\
             scrub      {} not verified within the scrub period",
            s.files,
            s.directories,
            s.chunks,
            s.under_replicated_chunks,
            s.missing_chunks,
            s.corrupt_replicas,
            show::bytes(unverified),
        ));
        out
    });
    Ok(())
}

/// The leader after `client`'s last answer, by asking again.
async fn leader_of(client: &Client) -> Option<u64> {
    let s = client.admin_status().await.ok()?;
    s.masters?
        .iter()
        .find(|m| m.role == MasterRole::Leader)
        .map(|m| m.id)
}

pub async fn failover(client: &Client, to: u64, json: bool) -> Outcome {
    let started = std::time::Instant::now();
    client.admin_failover(to).await?;
    let took_ms = started.elapsed().as_millis() as u64;
    let leader = leader_of(client).await;
    let value = json!({ "leader": leader, "took_ms": took_ms });
    show::print(json, &value, || match leader {
        Some(l) => format!("master {l} leads now ({took_ms} ms)"),
        None => format!("handed over in {took_ms} ms; no leader answered yet"),
    });
    Ok(())
}

pub async fn membership(
    client: &Client,
    op: ringfs_wire::msg::MembershipOp,
    id: u64,
    json: bool,
) -> Outcome {
    client.admin_membership(op, id).await?;
    let what = match op {
        ringfs_wire::msg::MembershipOp::AddShadow => "added as a shadow",
        ringfs_wire::msg::MembershipOp::Promote => "promoted to voter",
        _ => "removed",
    };
    show::print(json, &json!({ "id": id, "done": what }), || {
        format!("master {id} {what}")
    });
    Ok(())
}
