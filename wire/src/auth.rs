//! Connection handshake: cluster id check, then mutual challenge-response
//! HMAC-SHA256 over the cluster key (docs/design/002-auth-handshake.md).
//!
//! ```text
//! initiator                                   acceptor
//!   Hello{cluster_id, kind, node_id, Nc}  ->
//!                                         <-  Challenge{cluster_id, kind, node_id, Ns,
//!                                                       server_proof = MAC("acceptor", T)}
//!   Proof{client_proof = MAC("initiator", T)} ->
//!                                         <-  Welcome | ErrorReply
//! T = the transcript: protocol version, cluster id, both identities, Nc, Ns.
//! ```
//!
//! Each side contributes a fresh 32-byte nonce, so a proof recorded on one
//! connection is worthless on the next: the acceptor's fresh Ns defeats a
//! replayed client proof and the initiator's fresh Nc a replayed challenge.
//! The direction label keeps one side's proof from being reflected as the
//! other's. Proofs are compared in constant time. Pure state machines: the
//! caller moves the messages and supplies the nonces ([`fresh_nonce`]).

use std::fmt;
use std::path::Path;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::frame::PROTOCOL_VERSION;
use crate::msg::{
    Challenge, ChallengeRef, ErrorCode, Hello, HelloRef, PeerKind, Proof, ProofRef, Welcome,
};

pub const NONCE_BYTES: usize = 32;
pub const PROOF_BYTES: usize = 32;
/// Shortest accepted cluster key.
pub const KEY_MIN_BYTES: usize = 32;
/// Longest accepted cluster key (HMAC hashes longer keys anyway).
pub const KEY_MAX_BYTES: usize = 1024;

type HmacSha256 = Hmac<Sha256>;

/// The cluster's shared secret. `Debug` never shows it; memory is zeroed on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey(zeroize::Zeroizing<Vec<u8>>);

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClusterKey({} bytes, redacted)", self.0.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error(
        "key file {path} is accessible by group or others (mode {mode:03o}); run `chmod 600 {path}`"
    )]
    Permissions { path: String, mode: u32 },
    #[error("key is not hex: {0}")]
    NotHex(String),
    #[error("key has {0} bytes; it needs {KEY_MIN_BYTES} to {KEY_MAX_BYTES}")]
    Length(usize),
    #[error("no system randomness: {0}")]
    Random(String),
}

impl ClusterKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterKey, KeyError> {
        if !(KEY_MIN_BYTES..=KEY_MAX_BYTES).contains(&bytes.len()) {
            return Err(KeyError::Length(bytes.len()));
        }
        Ok(ClusterKey(zeroize::Zeroizing::new(bytes.to_vec())))
    }

    /// Parses a key file's text: hex digits, surrounding whitespace ignored.
    pub fn from_hex(text: &str) -> Result<ClusterKey, KeyError> {
        let bytes = zeroize::Zeroizing::new(
            hex::decode(text.trim()).map_err(|e| KeyError::NotHex(e.to_string()))?,
        );
        ClusterKey::from_bytes(&bytes)
    }

    /// Reads a key file, refusing one that group or others can access.
    pub fn load(path: &Path) -> Result<ClusterKey, KeyError> {
        use std::io::Read as _;
        let shown = path.display().to_string();
        let read_error = |source| KeyError::Read {
            path: shown.clone(),
            source,
        };
        // Check the mode of the file we opened, not of whatever the path names later.
        let mut file = std::fs::File::open(path).map_err(read_error)?;
        let meta = file.metadata().map_err(read_error)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(KeyError::Permissions { path: shown, mode });
            }
        }
        #[cfg(not(unix))]
        let _ = meta;
        let mut text = zeroize::Zeroizing::new(String::new());
        // A key file is a line of hex; anything much longer is not one.
        let limit = 4 * KEY_MAX_BYTES as u64;
        file.by_ref()
            .take(limit)
            .read_to_string(&mut text)
            .map_err(read_error)?;
        if text.len() as u64 >= limit {
            return Err(KeyError::NotHex(format!(
                "{shown} is larger than a key file can be"
            )));
        }
        ClusterKey::from_hex(&text)
    }

    /// A fresh 32-byte key from the system's randomness.
    pub fn generate() -> Result<ClusterKey, KeyError> {
        let mut bytes = [0u8; KEY_MIN_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| KeyError::Random(e.to_string()))?;
        ClusterKey::from_bytes(&bytes)
    }

    /// The key file's text: lowercase hex and a newline.
    pub fn to_hex_line(&self) -> String {
        format!("{}\n", hex::encode(self.0.as_slice()))
    }
}

/// 32 fresh random bytes for one handshake.
pub fn fresh_nonce() -> Result<[u8; NONCE_BYTES], KeyError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(nonce)
}

/// Who is at one end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Identity {
    pub kind: PeerKind,
    /// 0 when the peer has no id yet.
    pub node_id: u64,
}

/// Why a handshake failed. The acceptor answers with [`AuthError::code`] and closes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("peer is in cluster {theirs:?}, this node in {ours:?}")]
    WrongCluster { ours: String, theirs: String },
    #[error("peer speaks protocol version {theirs}, this node {PROTOCOL_VERSION}")]
    UnsupportedVersion { theirs: u16 },
    #[error(
        "authentication failed: the peer's proof does not match (wrong cluster key, or a replayed exchange)"
    )]
    BadProof,
    #[error("malformed handshake: {0}")]
    Malformed(String),
}

impl AuthError {
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::WrongCluster { .. } => ErrorCode::WrongCluster,
            AuthError::UnsupportedVersion { .. } => ErrorCode::UnsupportedVersion,
            AuthError::BadProof | AuthError::Malformed(_) => ErrorCode::AuthFailed,
        }
    }
}

impl From<planus::Error> for AuthError {
    fn from(e: planus::Error) -> Self {
        AuthError::Malformed(e.to_string())
    }
}

/// Everything both proofs cover.
struct Transcript {
    cluster_id: String,
    initiator: Identity,
    acceptor: Identity,
    initiator_nonce: [u8; NONCE_BYTES],
    acceptor_nonce: [u8; NONCE_BYTES],
}

enum Direction {
    AcceptorProves,
    InitiatorProves,
}

impl Transcript {
    fn mac(&self, key: &ClusterKey, direction: Direction) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(key.0.as_slice()).expect("HMAC takes keys of any length");
        mac.update(b"ringfs-auth-v1\0");
        mac.update(match direction {
            Direction::AcceptorProves => b"acceptor\0",
            Direction::InitiatorProves => b"initiator",
        });
        mac.update(&PROTOCOL_VERSION.to_le_bytes());
        // Length-prefixed, so no two transcripts serialise alike.
        mac.update(&(self.cluster_id.len() as u64).to_le_bytes());
        mac.update(self.cluster_id.as_bytes());
        for id in [self.initiator, self.acceptor] {
            mac.update(&[id.kind.into()]);
            mac.update(&id.node_id.to_le_bytes());
        }
        mac.update(&self.initiator_nonce);
        mac.update(&self.acceptor_nonce);
        mac
    }

    fn proof(&self, key: &ClusterKey, direction: Direction) -> [u8; PROOF_BYTES] {
        self.mac(key, direction).finalize().into_bytes().into()
    }

    fn verify(
        &self,
        key: &ClusterKey,
        direction: Direction,
        proof: &[u8],
    ) -> Result<(), AuthError> {
        if proof.len() != PROOF_BYTES {
            return Err(AuthError::Malformed(format!(
                "proof has {} bytes, expected {PROOF_BYTES}",
                proof.len()
            )));
        }
        // Constant-time comparison.
        self.mac(key, direction)
            .verify_slice(proof)
            .map_err(|_| AuthError::BadProof)
    }
}

fn nonce_from(bytes: Option<&[u8]>, what: &str) -> Result<[u8; NONCE_BYTES], AuthError> {
    let slice = bytes.ok_or_else(|| AuthError::Malformed(format!("{what} missing")))?;
    slice.try_into().map_err(|_| {
        AuthError::Malformed(format!(
            "{what} has {} bytes, expected {NONCE_BYTES}",
            slice.len()
        ))
    })
}

/// What one side brings to a handshake.
struct Local {
    key: ClusterKey,
    cluster_id: String,
    me: Identity,
    nonce: [u8; NONCE_BYTES],
}

impl Local {
    fn new(key: &ClusterKey, cluster_id: &str, me: Identity, nonce: [u8; NONCE_BYTES]) -> Local {
        Local {
            key: key.clone(),
            cluster_id: cluster_id.to_owned(),
            me,
            nonce,
        }
    }

    /// The peer must name our cluster before anything else is looked at.
    fn check_cluster(&self, theirs: Option<&str>) -> Result<(), AuthError> {
        let theirs = theirs.unwrap_or("");
        if theirs != self.cluster_id {
            return Err(AuthError::WrongCluster {
                ours: self.cluster_id.clone(),
                theirs: theirs.to_owned(),
            });
        }
        Ok(())
    }
}

/// The side that opens the connection.
pub struct Initiator(Local);

impl Initiator {
    pub fn new(
        key: &ClusterKey,
        cluster_id: &str,
        me: Identity,
        nonce: [u8; NONCE_BYTES],
    ) -> Initiator {
        Initiator(Local::new(key, cluster_id, me, nonce))
    }

    /// The first message.
    pub fn hello(&self) -> Hello {
        let me = &self.0;
        Hello {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: Some(me.cluster_id.clone()),
            peer_kind: me.me.kind,
            node_id: me.me.node_id,
            client_nonce: Some(me.nonce.to_vec()),
        }
    }

    /// Checks the acceptor's challenge (cluster, proof of the key) and
    /// returns our proof to send, with the acceptor's identity.
    pub fn on_challenge(
        self,
        challenge: &ChallengeRef<'_>,
    ) -> Result<(Proof, Identity), AuthError> {
        let me = self.0;
        me.check_cluster(challenge.cluster_id()?)?;
        let acceptor = Identity {
            kind: challenge.server_kind()?,
            node_id: challenge.server_node_id()?,
        };
        let acceptor_nonce = nonce_from(challenge.server_nonce()?, "server nonce")?;
        let server_proof = challenge
            .server_proof()?
            .ok_or_else(|| AuthError::Malformed("server proof missing".into()))?;
        let transcript = Transcript {
            cluster_id: me.cluster_id,
            initiator: me.me,
            acceptor,
            initiator_nonce: me.nonce,
            acceptor_nonce,
        };
        transcript.verify(&me.key, Direction::AcceptorProves, server_proof)?;
        let proof = Proof {
            client_proof: Some(
                transcript
                    .proof(&me.key, Direction::InitiatorProves)
                    .to_vec(),
            ),
        };
        Ok((proof, acceptor))
    }
}

/// The side that accepts the connection.
pub struct Acceptor(Local);

/// An acceptor that has sent its challenge and waits for the proof.
pub struct AwaitingProof {
    transcript: Transcript,
    key: ClusterKey,
}

impl Acceptor {
    pub fn new(
        key: &ClusterKey,
        cluster_id: &str,
        me: Identity,
        nonce: [u8; NONCE_BYTES],
    ) -> Acceptor {
        Acceptor(Local::new(key, cluster_id, me, nonce))
    }

    /// Checks the hello (version, cluster) and returns the challenge to send.
    pub fn on_hello(self, hello: &HelloRef<'_>) -> Result<(Challenge, AwaitingProof), AuthError> {
        let me = self.0;
        let version = hello.protocol_version()?;
        if version != PROTOCOL_VERSION {
            return Err(AuthError::UnsupportedVersion { theirs: version });
        }
        me.check_cluster(hello.cluster_id()?)?;
        let initiator = Identity {
            kind: hello.peer_kind()?,
            node_id: hello.node_id()?,
        };
        let initiator_nonce = nonce_from(hello.client_nonce()?, "client nonce")?;
        if initiator_nonce == me.nonce {
            // Only a reflected hello can carry our own nonce.
            return Err(AuthError::Malformed(
                "client nonce equals the server nonce".into(),
            ));
        }
        let transcript = Transcript {
            cluster_id: me.cluster_id,
            initiator,
            acceptor: me.me,
            initiator_nonce,
            acceptor_nonce: me.nonce,
        };
        let challenge = Challenge {
            cluster_id: Some(transcript.cluster_id.clone()),
            server_kind: me.me.kind,
            server_node_id: me.me.node_id,
            server_nonce: Some(me.nonce.to_vec()),
            server_proof: Some(
                transcript
                    .proof(&me.key, Direction::AcceptorProves)
                    .to_vec(),
            ),
        };
        Ok((
            challenge,
            AwaitingProof {
                transcript,
                key: me.key,
            },
        ))
    }
}

impl AwaitingProof {
    /// Checks the initiator's proof; on success the connection is
    /// authenticated and the initiator's identity is returned with the
    /// `Welcome` to send.
    pub fn on_proof(self, proof: &ProofRef<'_>) -> Result<(Identity, Welcome), AuthError> {
        let client_proof = proof
            .client_proof()?
            .ok_or_else(|| AuthError::Malformed("client proof missing".into()))?;
        self.transcript
            .verify(&self.key, Direction::InitiatorProves, client_proof)?;
        Ok((
            self.transcript.initiator,
            Welcome {
                server_node_id: self.transcript.acceptor.node_id,
            },
        ))
    }
}
