//! Where new replicas go (DESIGN §4): distinct live chunkservers with room
//! for a chunk, at least two racks when the cluster has more than one,
//! least utilised first, and no chunkserver holding more than its share of
//! one file's chunks. Servers whose utilisation is within the same percent
//! count as equal and are taken in an order drawn from a per-chunk seed, so
//! equally full servers share new chunks, and their primaries, instead of
//! the lowest node id taking every one.
//!
//! Pure: the caller snapshots the registry into [`Candidate`]s, so the
//! choice is testable and the registry lock is not held while choosing.

use crate::registry::Chunkserver;
use crate::types::NodeId;

#[derive(Clone, Debug)]
pub struct Candidate {
    pub node: NodeId,
    pub rack: String,
    /// Used / capacity.
    pub utilisation: f64,
    /// Capacity less used, as last reported (the reserve counts as used).
    pub free_bytes: u64,
    /// Replicas of the file's chunks this server already holds.
    pub file_replicas: u64,
}

impl Candidate {
    /// `server`, holding `file_replicas` of the file's chunks already.
    pub fn of(server: &Chunkserver, file_replicas: u64) -> Candidate {
        Candidate {
            node: server.node_id,
            rack: server.rack.clone(),
            utilisation: server.utilisation(),
            free_bytes: server.capacity_bytes.saturating_sub(server.used_bytes),
            file_replicas,
        }
    }

    /// Whether it reported room for a new chunk of `chunk_size_bytes`
    /// (the rule chunkservers apply when they create one).
    pub fn has_room(&self, chunk_size_bytes: u64) -> bool {
        self.free_bytes >= ringfs_wire::config::room_for_new_chunk_bytes(chunk_size_bytes)
    }
}

/// Why no chunkserver can take a new chunk when some are live: none of
/// `live` has room. `None` when one has, or none is live.
pub fn out_of_space(live: &[Candidate], chunk_size_bytes: u64) -> Option<String> {
    if live.is_empty() || live.iter().any(|c| c.has_room(chunk_size_bytes)) {
        return None;
    }
    let most_free = live.iter().map(|c| c.free_bytes).max().unwrap_or(0);
    Some(format!(
        "none of the {} live chunkservers has room for a new chunk: it needs {} bytes free \
         beyond the reserve (data_dir_reserved_bytes), the most any has is {most_free}",
        live.len(),
        ringfs_wire::config::room_for_new_chunk_bytes(chunk_size_bytes),
    ))
}

/// Steps utilisation is counted in (whole percents): servers in the same
/// step count as equally full.
const UTILISATION_STEPS: f64 = 100.0;

/// A well-mixed 64-bit value of `x` (splitmix64's finaliser): the order of
/// equally full servers for one seed.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Picks up to `count` nodes, none of them in `exclude` (current holders).
/// `existing_racks` are the racks already holding a replica. `seed` (e.g.
/// from the chunk's file and index) orders servers that are equally full.
pub fn choose(
    candidates: &[Candidate],
    count: usize,
    exclude: &[NodeId],
    existing_racks: &[&str],
    seed: u64,
) -> Vec<NodeId> {
    let mut pool: Vec<&Candidate> = candidates
        .iter()
        .filter(|c| !exclude.contains(&c.node))
        .collect();
    if pool.is_empty() || count == 0 {
        return Vec::new();
    }
    let live = candidates.len() as u64;
    let total_file_replicas: u64 =
        candidates.iter().map(|c| c.file_replicas).sum::<u64>() + count as u64;
    // A server's fair share of this file: every replica spread evenly, plus one.
    let share_cap = total_file_replicas.div_ceil(live) + 1;
    let fullness = |c: &Candidate| (c.utilisation * UTILISATION_STEPS).floor() as u64;
    pool.sort_by_key(|c| {
        (
            c.file_replicas >= share_cap,
            fullness(c),
            c.file_replicas,
            mix(c.node ^ seed),
            c.node,
        )
    });
    let distinct_racks = {
        let mut racks: Vec<&str> = candidates.iter().map(|c| c.rack.as_str()).collect();
        racks.sort_unstable();
        racks.dedup();
        racks.len()
    };
    let mut racks_used: Vec<&str> = existing_racks.to_vec();
    let mut chosen: Vec<NodeId> = Vec::with_capacity(count);
    while chosen.len() < count {
        let need_new_rack = distinct_racks > 1 && {
            let mut r = racks_used.clone();
            r.sort_unstable();
            r.dedup();
            r.len() < 2
        };
        let pick = pool
            .iter()
            .position(|c| {
                !need_new_rack || racks_used.is_empty() || !racks_used.contains(&c.rack.as_str())
            })
            .or(if pool.is_empty() { None } else { Some(0) });
        let Some(i) = pick else { break };
        let c = pool.remove(i);
        racks_used.push(c.rack.as_str());
        chosen.push(c.node);
    }
    assert!(chosen.len() <= count);
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(node: NodeId, rack: &str, utilisation: f64, file_replicas: u64) -> Candidate {
        Candidate {
            node,
            rack: rack.into(),
            utilisation,
            free_bytes: u64::MAX,
            file_replicas,
        }
    }

    #[test]
    fn full_servers_are_named_and_skipped() {
        let chunk = 64 << 20;
        let room = ringfs_wire::config::room_for_new_chunk_bytes(chunk);
        let mut c = [
            cand(1, "", 0.1, 0),
            cand(2, "", 0.2, 0),
            cand(3, "", 0.3, 0),
        ];
        assert_eq!(out_of_space(&c, chunk), None);
        c[0].free_bytes = room - 1;
        c[1].free_bytes = 0;
        // One server with room: no verdict, and it is the one kept.
        assert_eq!(out_of_space(&c, chunk), None);
        let with_room: Vec<Candidate> = c.iter().filter(|c| c.has_room(chunk)).cloned().collect();
        assert_eq!(choose(&with_room, 3, &[], &[], 0), vec![3]);
        c[2].free_bytes = room - 1;
        let why = out_of_space(&c, chunk).expect("every server is full");
        assert!(why.contains(&format!("{room} bytes")), "{why}");
        assert!(
            why.contains(&format!("most any has is {}", room - 1)),
            "{why}"
        );
        // No live server is not a space problem.
        assert_eq!(out_of_space(&[], chunk), None);
    }

    #[test]
    fn least_utilised_first_and_distinct() {
        let c = [
            cand(1, "", 0.9, 0),
            cand(2, "", 0.1, 0),
            cand(3, "", 0.5, 0),
            cand(4, "", 0.3, 0),
        ];
        assert_eq!(choose(&c, 3, &[], &[], 0), vec![2, 4, 3]);
        assert_eq!(choose(&c, 3, &[2], &[], 0), vec![4, 3, 1]);
        assert_eq!(choose(&c, 9, &[], &[], 0).len(), 4);
    }

    #[test]
    fn equally_full_servers_share_new_chunks_and_primaries() {
        // Three servers on one filesystem report the same utilisation, a
        // fourth is a percent fuller.
        let c = [
            cand(1, "", 0.500, 0),
            cand(2, "", 0.503, 0),
            cand(3, "", 0.509, 0),
            cand(4, "", 0.51, 0),
        ];
        let mut first = std::collections::HashMap::new();
        for seed in 0..3000u64 {
            let chosen = choose(&c, 3, &[], &[], mix(seed));
            assert_eq!(chosen.len(), 3);
            assert!(!chosen.contains(&4), "a fuller server taken: {chosen:?}");
            *first.entry(chosen[0]).or_insert(0u32) += 1;
        }
        for node in 1..=3 {
            let n = first.get(&node).copied().unwrap_or(0);
            assert!(
                (800..1200).contains(&n),
                "node {node} first {n} of 3000: {first:?}"
            );
        }
        // The same seed, the same choice.
        assert_eq!(choose(&c, 3, &[], &[], 7), choose(&c, 3, &[], &[], 7));
    }

    #[test]
    fn spans_two_racks_when_there_are_two() {
        let c = [
            cand(1, "a", 0.1, 0),
            cand(2, "a", 0.2, 0),
            cand(3, "a", 0.3, 0),
            cand(4, "b", 0.9, 0),
        ];
        let chosen = choose(&c, 3, &[], &[], 0);
        assert_eq!(chosen[0], 1);
        assert!(chosen.contains(&4), "{chosen:?}");
        // Re-replication next to replicas on rack a only must add rack b.
        assert_eq!(choose(&c, 1, &[1, 2], &["a", "a"], 0), vec![4]);
    }

    #[test]
    fn no_server_beyond_its_share_of_a_file() {
        let c = [
            cand(1, "", 0.0, 10),
            cand(2, "", 0.5, 0),
            cand(3, "", 0.6, 0),
        ];
        assert_eq!(choose(&c, 1, &[], &[], 0), vec![2]);
    }
}
