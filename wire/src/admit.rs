//! Admission of a received message before it is copied into owned types.
//!
//! planus checks that every offset of a meta stays inside it, nothing more:
//! many offsets may reach the same table or string, and the owned
//! conversion (`Body::try_from(BodyRef)`) copies it once per offset. A
//! 16 MiB `ListDirReply` whose two million entries all point at one entry
//! with an 8 MiB name asks for 16 TiB. So a receiver first checks the kind
//! against what its connection takes ([`is_client_request`],
//! [`is_master_reply`], [`is_reply`]), then [`check`]s what the copy would
//! reach against the meta's own size, and only then converts ([`to_owned`]).
//!
//! The bounds, against what an honest meta can reach:
//! - Tables: every table of an honest meta has 8 meta bytes to itself, the
//!   4-byte offset that reaches it (a field or a vector slot) and its own
//!   4-byte offset to its vtable. planus's builder shares vtables, strings
//!   and byte vectors, never tables, so an honest meta reaches at most
//!   `meta_len / 8` tables ([`TABLE_META_BYTES_MIN`]).
//! - Strings and scalar or struct vectors: counted once per reach. Here
//!   honest metas do exceed their size, since the builder stores equal
//!   strings once (an owner, a rack, an address repeated over a listing);
//!   each repeat costs a 4-byte offset inside a table of 20 bytes or more,
//!   so even a 253-character host name shared by every replica of a
//!   `GetChunksReply` stays within [`REACHED_BYTES_PER_META_BYTE_MAX`].
//!
//! Only kinds that hold vectors of tables or strings (at any depth) are
//! walked: in the others every offset is a distinct field of the schema,
//! so sharing multiplies the copy by a small schema-fixed factor (at most
//! 3: `ErrorReply`'s three strings), not by a count the sender chooses.
//! A test reads the schema to keep that list complete.

use crate::msg::*;

/// Meta bytes an honest meta spends on each table it holds (see the module docs).
pub const TABLE_META_BYTES_MIN: u64 = 8;
/// Bytes of strings and vectors an admitted meta may reach per byte it holds.
/// An admitted 16 MiB control meta copies at most 256 MiB of them.
pub const REACHED_BYTES_PER_META_BYTE_MAX: u64 = 16;

/// Why a meta was refused before its owned conversion.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdmitError {
    #[error("malformed {kind:?}: {reason}")]
    Malformed { kind: MessageKind, reason: String },
    #[error(
        "{kind:?} reaches more than {limit} tables from a {meta_len}-byte meta: its offsets are shared, which no honest sender does"
    )]
    SharedTables {
        kind: MessageKind,
        meta_len: usize,
        limit: u64,
    },
    #[error(
        "{kind:?} reaches more than {limit} bytes of strings and vectors from a {meta_len}-byte meta: its offsets are shared, which no honest sender does"
    )]
    SharedBytes {
        kind: MessageKind,
        meta_len: usize,
        limit: u64,
    },
}

impl AdmitError {
    /// The code a receiver answers with: the frame is refused as built,
    /// whatever it asks for.
    pub fn code(&self) -> ErrorCode {
        ErrorCode::BadFrame
    }
}

/// Requests a client sends a master (and `Ping`).
pub fn is_client_request(kind: MessageKind) -> bool {
    use MessageKind as K;
    matches!(
        kind,
        K::Ping
            | K::Mkdir
            | K::Create
            | K::Stat
            | K::ListDir
            | K::Rename
            | K::Delete
            | K::ListTrash
            | K::RestoreFromTrash
            | K::Purge
            | K::SetReplication
            | K::CompleteFile
            | K::GetChunks
            | K::AllocateChunk
            | K::GetLease
            | K::ReportBadReplica
            | K::AdminStatus
            | K::Fsck
            | K::AdminFailover
            | K::AdminMembership
            | K::AdminDecommission
    )
}

/// Replies a master sends a client.
pub fn is_master_reply(kind: MessageKind) -> bool {
    use MessageKind as K;
    matches!(
        kind,
        K::ErrorReply
            | K::Ack
            | K::Pong
            | K::AttrReply
            | K::ListDirReply
            | K::DeleteReply
            | K::ListTrashReply
            | K::SetReplicationReply
            | K::GetChunksReply
            | K::ChunkLocationReply
            | K::AdminStatusReply
            | K::FsckReply
    )
}

/// Every kind that answers a request, the handshake's answers included:
/// what the initiator of a connection may receive.
pub fn is_reply(kind: MessageKind) -> bool {
    use MessageKind as K;
    is_master_reply(kind)
        || matches!(
            kind,
            K::Challenge
                | K::Welcome
                | K::RegisterReply
                | K::HeartbeatReply
                | K::ReadChunkReply
                | K::PushDataReply
                | K::WriteChunkReply
                | K::AppendChunkReply
                | K::ForwardMutationReply
                | K::ChunkInfoReply
                | K::ListChunksReply
                | K::RaftReply
        )
}

/// [`check`]s `body` (parsed from a meta of `meta_len` bytes), then copies it.
pub fn to_owned(body: BodyRef<'_>, meta_len: usize) -> Result<Body, AdmitError> {
    check(&body, meta_len)?;
    Body::try_from(body).map_err(|e| AdmitError::Malformed {
        kind: MessageKind::of_body_ref(&body),
        reason: e.to_string(),
    })
}

/// Refuses a body whose owned copy would reach more than an honest meta of
/// `meta_len` bytes can. Stops at the first bound crossed, so the walk's
/// own work is bounded by the same limits.
pub fn check(body: &BodyRef<'_>, meta_len: usize) -> Result<(), AdmitError> {
    let meta = meta_len as u64;
    let mut w = Walk {
        kind: MessageKind::of_body_ref(body),
        meta_len,
        tables_left: meta / TABLE_META_BYTES_MIN,
        bytes_left: meta.saturating_mul(REACHED_BYTES_PER_META_BYTE_MAX),
    };
    w.body(body)
}

struct Walk {
    kind: MessageKind,
    meta_len: usize,
    tables_left: u64,
    bytes_left: u64,
}

type Step = Result<(), AdmitError>;

impl Walk {
    fn malformed(&self, e: planus::Error) -> AdmitError {
        AdmitError::Malformed {
            kind: self.kind,
            reason: e.to_string(),
        }
    }

    fn table(&mut self) -> Step {
        self.tables_left = self
            .tables_left
            .checked_sub(1)
            .ok_or(AdmitError::SharedTables {
                kind: self.kind,
                meta_len: self.meta_len,
                limit: self.meta_len as u64 / TABLE_META_BYTES_MIN,
            })?;
        Ok(())
    }

    fn bytes(&mut self, n: u64) -> Step {
        self.bytes_left = self
            .bytes_left
            .checked_sub(n)
            .ok_or(AdmitError::SharedBytes {
                kind: self.kind,
                meta_len: self.meta_len,
                limit: (self.meta_len as u64).saturating_mul(REACHED_BYTES_PER_META_BYTE_MAX),
            })?;
        Ok(())
    }

    fn string(&mut self, s: planus::Result<Option<&str>>) -> Step {
        let s = s.map_err(|e| self.malformed(e))?;
        self.bytes(s.map_or(0, |s| s.len() as u64))
    }

    /// A vector of scalars or structs: `elem_bytes` is the owned element's size.
    fn flat<T: ?Sized>(
        &mut self,
        v: planus::Result<Option<planus::Vector<'_, T>>>,
        elem_bytes: usize,
    ) -> Step {
        let v = v.map_err(|e| self.malformed(e))?;
        let n = v.map_or(0, |v| v.len() as u64);
        self.bytes(n.saturating_mul(elem_bytes as u64))
    }

    fn tables<'a, T: 'a>(
        &mut self,
        v: planus::Result<Option<planus::Vector<'a, planus::Result<T>>>>,
        mut each: impl FnMut(&mut Self, T) -> Step,
    ) -> Step
    where
        planus::Result<T>: planus::VectorRead<'a>,
    {
        let Some(v) = v.map_err(|e| self.malformed(e))? else {
            return Ok(());
        };
        for t in v.iter() {
            let t = t.map_err(|e| self.malformed(e))?;
            each(self, t)?;
        }
        Ok(())
    }

    fn sub<T>(
        &mut self,
        t: planus::Result<Option<T>>,
        each: impl FnOnce(&mut Self, T) -> Step,
    ) -> Step {
        match t.map_err(|e| self.malformed(e))? {
            Some(t) => each(self, t),
            None => Ok(()),
        }
    }

    fn body(&mut self, body: &BodyRef<'_>) -> Step {
        self.table()?;
        match body {
            BodyRef::ListDirReply(r) => self.tables(r.entries(), Self::dir_entry),
            BodyRef::ListTrashReply(r) => self.tables(r.entries(), Self::trash_entry),
            BodyRef::GetChunksReply(r) => self.tables(r.chunks(), Self::chunk_location),
            BodyRef::ChunkLocationReply(r) => self.sub(r.location(), Self::chunk_location),
            BodyRef::AdminStatusReply(r) => {
                self.tables(r.masters(), |w, m| {
                    w.table()?;
                    w.string(m.client_addr())
                })?;
                self.tables(r.chunkservers(), |w, c| {
                    w.table()?;
                    w.string(c.addr())?;
                    w.string(c.rack())
                })
            }
            BodyRef::FsckReply(r) => self.tables(r.files(), |w, f| {
                w.table()?;
                w.string(f.path())?;
                w.tables(f.unhealthy_chunks(), |w, _| w.table())
            }),
            BodyRef::Register(r) => {
                self.string(r.listen_addr())?;
                self.string(r.http_addr())?;
                self.string(r.rack())?;
                self.tables(r.dirs(), Self::data_dir)?;
                self.flat(r.chunks(), size_of::<ChunkReport>())
            }
            BodyRef::Heartbeat(h) => {
                self.tables(h.dirs(), Self::data_dir)?;
                self.flat(h.added(), size_of::<ChunkReport>())?;
                self.flat(h.removed(), size_of::<u64>())?;
                self.flat(h.corrupt(), size_of::<ChunkReport>())?;
                self.tables(h.results(), |w, r| {
                    w.table()?;
                    w.sub(r.error(), Self::error_reply)
                })?;
                self.sub(h.scrub(), |w, _| w.table())?;
                self.tables(h.extend_leases(), |w, _| w.table())
            }
            BodyRef::HeartbeatReply(r) => {
                self.tables(r.commands(), |w, c| {
                    w.table()?;
                    w.sub(c.command(), Self::command)
                })?;
                self.tables(r.extended_leases(), |w, _| w.table())
            }
            BodyRef::GrantLease(g) => self.tables(g.secondaries(), Self::replica),
            BodyRef::PushData(p) => {
                self.tables(p.chain(), Self::replica)?;
                self.flat(p.block_crcs(), size_of::<u32>())
            }
            BodyRef::WriteChunk(c) => {
                self.tables(c.secondaries(), Self::replica)?;
                self.flat(c.block_crcs(), size_of::<u32>())
            }
            BodyRef::AppendChunk(c) => {
                self.tables(c.secondaries(), Self::replica)?;
                self.flat(c.block_crcs(), size_of::<u32>())
            }
            _ => Ok(()),
        }
    }

    fn replica(&mut self, r: ReplicaRef<'_>) -> Step {
        self.table()?;
        self.string(r.addr())?;
        self.string(r.rack())
    }

    fn attr(&mut self, a: AttrRef<'_>) -> Step {
        self.table()?;
        self.string(a.owner())
    }

    fn dir_entry(&mut self, e: DirEntryRef<'_>) -> Step {
        self.table()?;
        self.string(e.name())?;
        self.sub(e.attr(), Self::attr)
    }

    fn trash_entry(&mut self, e: TrashEntryRef<'_>) -> Step {
        self.table()?;
        self.string(e.original_path())?;
        self.sub(e.attr(), Self::attr)
    }

    fn chunk_location(&mut self, l: ChunkLocationRef<'_>) -> Step {
        self.table()?;
        self.tables(l.replicas(), Self::replica)
    }

    fn data_dir(&mut self, d: DataDirRef<'_>) -> Step {
        self.table()?;
        self.string(d.path())
    }

    fn error_reply(&mut self, e: ErrorReplyRef<'_>) -> Step {
        self.table()?;
        self.string(e.message())?;
        self.string(e.leader_addr())?;
        self.string(e.failed_replica_addr())
    }

    fn command(&mut self, c: ChunkCommandRef<'_>) -> Step {
        self.table()?;
        match c {
            ChunkCommandRef::DeleteChunk(d) => self.flat(d.handles(), size_of::<u64>()),
            ChunkCommandRef::CloneChunk(c) => self.sub(c.source(), Self::replica),
            ChunkCommandRef::GrantLease(g) => self.tables(g.secondaries(), Self::replica),
            ChunkCommandRef::CreateChunk(_)
            | ChunkCommandRef::BumpVersion(_)
            | ChunkCommandRef::RevokeLease(_) => Ok(()),
        }
    }
}

/// Kinds [`check`] walks; the schema test below keeps it complete.
#[cfg(test)]
const WALKED: &[&str] = &[
    "ListDirReply",
    "ListTrashReply",
    "GetChunksReply",
    "ChunkLocationReply",
    "AdminStatusReply",
    "FsckReply",
    "Register",
    "Heartbeat",
    "HeartbeatReply",
    "GrantLease",
    "PushData",
    "WriteChunk",
    "AppendChunk",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::FrameHeader;
    use crate::message::{Encoder, decode_meta};
    use std::collections::{BTreeMap, BTreeSet};

    /// Parses `meta` as a frame of `kind` would be parsed on receipt.
    fn received(kind: MessageKind, meta: &[u8]) -> BodyRef<'_> {
        let header = FrameHeader::for_meta(kind, 1, meta, 0);
        decode_meta(&header, meta).unwrap()
    }

    /// A `ListDirReply` of `slots` entries that are all one entry named
    /// `name_bytes` long: tiny on the wire, `slots × name_bytes` owned.
    fn shared_listing(slots: usize, name_bytes: usize) -> Vec<u8> {
        let mut b = planus::Builder::new();
        let name = b.create_string("n".repeat(name_bytes).as_str());
        let entry = DirEntry::create(&mut b, name, None::<planus::Offset<Attr>>);
        let entries = b.create_vector(vec![entry; slots]);
        let reply = ListDirReply::create(&mut b, entries, false, None::<ReadStamp>);
        let union = Body::create_list_dir_reply(&mut b, reply);
        let message = Message::create(&mut b, union);
        b.finish(message, None).to_vec()
    }

    #[test]
    fn shared_entries_are_refused_before_any_copy() {
        // 1 MiB name, 100,000 slots: 100 GB owned from a 1.4 MB meta.
        let meta = shared_listing(100_000, 1 << 20);
        assert!(meta.len() < 2 << 20, "{}", meta.len());
        let body = received(MessageKind::ListDirReply, &meta);
        let started = std::time::Instant::now();
        let e = to_owned(body, meta.len()).unwrap_err();
        assert!(
            matches!(
                e,
                AdmitError::SharedBytes { .. } | AdmitError::SharedTables { .. }
            ),
            "{e}"
        );
        assert_eq!(e.code(), ErrorCode::BadFrame);
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
        // Tiny names: the shared table count alone refuses it.
        let meta = shared_listing(100_000, 0);
        let e = check(&received(MessageKind::ListDirReply, &meta), meta.len()).unwrap_err();
        assert!(matches!(e, AdmitError::SharedTables { .. }), "{e}");
    }

    #[test]
    fn a_shared_string_in_distinct_tables_is_refused() {
        // Distinct replicas (each its own table) naming one 1 MiB address.
        let mut b = planus::Builder::new();
        let addr = b.create_string("a".repeat(1 << 20).as_str());
        let replicas: Vec<_> = (0..1000)
            .map(|i| Replica::create(&mut b, i as u64, addr, None::<planus::Offset<str>>))
            .collect();
        let replicas = b.create_vector(replicas);
        let grant = GrantLease::create(&mut b, 1, 2, 3, 4, replicas);
        let union = Body::create_grant_lease(&mut b, grant);
        let message = Message::create(&mut b, union);
        let meta = b.finish(message, None).to_vec();
        let e = check(&received(MessageKind::GrantLease, &meta), meta.len()).unwrap_err();
        assert!(matches!(e, AdmitError::SharedBytes { .. }), "{e}");
    }

    fn admitted(body: &Body) -> Body {
        let mut encoder = Encoder::new();
        let (kind, meta) = encoder.meta(body);
        let meta = meta.to_vec();
        to_owned(received(kind, &meta), meta.len()).unwrap()
    }

    #[test]
    fn honest_messages_pass_even_at_their_most_compact() {
        // All-default entries: the fewest meta bytes per table.
        let entries = vec![
            DirEntry {
                name: None,
                attr: Some(Box::default()),
            };
            50_000
        ];
        let body = Body::ListDirReply(Box::new(ListDirReply {
            entries: Some(entries),
            ..Default::default()
        }));
        assert_eq!(admitted(&body), body);
        // Every replica shares a 253-character host name and a long rack,
        // which the builder stores once.
        let replica = Replica {
            node_id: 7,
            addr: Some(format!("{}:65535", "h".repeat(253))),
            rack: Some("r".repeat(64)),
        };
        let chunks = (0..10_000)
            .map(|i| ChunkLocation {
                index: i,
                handle: i + 1,
                version: 1,
                replicas: Some(vec![replica.clone(); 3]),
                primary: 7,
                lease_remaining_ms: 1,
                epoch: 1,
            })
            .collect();
        let body = Body::GetChunksReply(Box::new(GetChunksReply {
            length_bytes: 1,
            chunks: Some(chunks),
            stamp: None,
        }));
        assert_eq!(admitted(&body), body);
        // A heartbeat full of failed results sharing one error text.
        let result = CommandResult {
            command_id: 1,
            handle: 2,
            error: Some(Box::new(ErrorReply {
                code: ErrorCode::NoSpace,
                message: Some("x".repeat(200)),
                ..Default::default()
            })),
        };
        let body = Body::Heartbeat(Box::new(Heartbeat {
            node_id: 3,
            results: Some(vec![result; 5_000]),
            removed: Some((0..10_000).collect()),
            ..Default::default()
        }));
        assert_eq!(admitted(&body), body);
    }

    #[test]
    fn kinds_fall_in_the_right_sets() {
        for kind in MessageKind::ALL {
            assert!(
                !(is_client_request(kind) && is_reply(kind)),
                "{kind:?} is both a request and a reply"
            );
            if is_master_reply(kind) {
                assert!(is_reply(kind));
            }
        }
        assert!(is_client_request(MessageKind::ListDir));
        assert!(!is_client_request(MessageKind::ListDirReply));
        assert!(!is_reply(MessageKind::Register));
        assert!(!is_master_reply(MessageKind::ReadChunkReply));
        assert!(is_reply(MessageKind::ReadChunkReply));
    }

    /// The schema's tables and unions: name -> field types.
    fn schema() -> BTreeMap<String, Vec<String>> {
        let files = [
            include_str!("../schema/common.fbs"),
            include_str!("../schema/auth.fbs"),
            include_str!("../schema/master.fbs"),
            include_str!("../schema/chunkserver.fbs"),
            include_str!("../schema/data.fbs"),
            include_str!("../schema/raft.fbs"),
            include_str!("../schema/message.fbs"),
        ];
        let mut types = BTreeMap::new();
        for text in files {
            let mut current: Option<(String, bool)> = None;
            for line in text.lines() {
                let line = line.split("//").next().unwrap_or("").trim();
                if let Some((name, is_union)) = &current {
                    if line.starts_with('}') {
                        current = None;
                        continue;
                    }
                    let ty = if *is_union {
                        line.trim_end_matches(',').trim()
                    } else {
                        match line.split_once(':') {
                            Some((_, ty)) => ty.split([';', '(', '=']).next().unwrap_or("").trim(),
                            None => continue,
                        }
                    };
                    if !ty.is_empty() {
                        types
                            .entry(name.clone())
                            .or_insert_with(Vec::new)
                            .push(ty.to_owned());
                    }
                    continue;
                }
                let mut words = line.split_whitespace();
                let (Some(what), Some(name)) = (words.next(), words.next()) else {
                    continue;
                };
                if what == "table" || what == "union" {
                    let name = name.trim_end_matches('{').to_owned();
                    types.entry(name.clone()).or_insert_with(Vec::new);
                    if !line.ends_with('}') {
                        current = Some((name, what == "union"));
                    }
                }
            }
        }
        types
    }

    /// Whether `ty` holds, at any depth, a vector of tables or strings.
    fn fans_out(
        ty: &str,
        types: &BTreeMap<String, Vec<String>>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        if let Some(inner) = ty.strip_prefix('[').and_then(|t| t.strip_suffix(']')) {
            return inner == "string" || types.contains_key(inner);
        }
        if !seen.insert(ty.to_owned()) {
            return false;
        }
        types
            .get(ty)
            .is_some_and(|fields| fields.iter().any(|f| fans_out(f, types, seen)))
    }

    #[test]
    fn every_kind_with_vectors_of_tables_or_strings_is_walked() {
        let types = schema();
        let body = &types["Body"];
        assert_eq!(body.len(), MessageKind::ALL.len(), "{body:?}");
        let fanning: BTreeSet<&str> = body
            .iter()
            .filter(|k| fans_out(k, &types, &mut BTreeSet::new()))
            .map(String::as_str)
            .collect();
        let walked: BTreeSet<&str> = WALKED.iter().copied().collect();
        assert_eq!(fanning, walked);
    }
}
