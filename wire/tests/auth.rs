//! Handshake: the right key is accepted; a wrong key, a wrong cluster, a
//! replayed response, a reflected proof and garbage are all refused.

use planus::ReadAsRoot;
use ringfs_wire::auth::*;
use ringfs_wire::msg::*;

const CLUSTER: &str = "test-cluster";

fn key(byte: u8) -> ClusterKey {
    ClusterKey::from_bytes(&[byte; 32]).unwrap()
}

fn client() -> Identity {
    Identity {
        kind: PeerKind::Client,
        node_id: 0,
    }
}

fn master() -> Identity {
    Identity {
        kind: PeerKind::Master,
        node_id: 1,
    }
}

/// Serialises an owned table and reads it back, as it would cross the wire.
fn wire<T, R>(value: &T, read: impl FnOnce(&[u8]) -> R) -> R
where
    T: planus::WriteAsOffset<T>,
{
    let mut builder = planus::Builder::new();
    let bytes = builder.finish(value, None).to_vec();
    read(&bytes)
}

struct Exchange {
    hello: Hello,
    challenge: Challenge,
    proof: Proof,
}

/// A full exchange; returns what each side concluded.
fn handshake(
    client_key: &ClusterKey,
    server_key: &ClusterKey,
    client_cluster: &str,
    server_cluster: &str,
    nc: [u8; 32],
    ns: [u8; 32],
) -> (Result<Identity, AuthError>, Option<Exchange>) {
    let initiator = Initiator::new(client_key, client_cluster, client(), nc);
    let acceptor = Acceptor::new(server_key, server_cluster, master(), ns);
    let hello = initiator.hello();
    let (challenge, waiting) = match wire(&hello, |b| {
        acceptor.on_hello(&HelloRef::read_as_root(b).unwrap())
    }) {
        Ok(x) => x,
        Err(e) => return (Err(e), None),
    };
    let (proof, server) = match wire(&challenge, |b| {
        initiator.on_challenge(&ChallengeRef::read_as_root(b).unwrap())
    }) {
        Ok(x) => x,
        Err(e) => return (Err(e), None),
    };
    assert_eq!(server, master());
    let result = wire(&proof, |b| {
        waiting.on_proof(&ProofRef::read_as_root(b).unwrap())
    })
    .map(|(id, welcome)| {
        assert_eq!(welcome.server_node_id, 1);
        id
    });
    (
        result,
        Some(Exchange {
            hello,
            challenge,
            proof,
        }),
    )
}

#[test]
fn right_key_accepted() {
    let (result, _) = handshake(&key(1), &key(1), CLUSTER, CLUSTER, [1; 32], [2; 32]);
    assert_eq!(result, Ok(client()));
}

#[test]
fn fresh_keys_and_nonces_work() {
    let k = ClusterKey::generate().unwrap();
    let (nc, ns) = (fresh_nonce().unwrap(), fresh_nonce().unwrap());
    assert_ne!(nc, ns);
    let (result, _) = handshake(&k, &k, CLUSTER, CLUSTER, nc, ns);
    assert_eq!(result, Ok(client()));
}

#[test]
fn wrong_key_rejected_by_both_sides() {
    // The initiator detects the impostor acceptor before revealing a proof.
    let (result, exchange) = handshake(&key(1), &key(2), CLUSTER, CLUSTER, [1; 32], [2; 32]);
    assert_eq!(result, Err(AuthError::BadProof));
    assert!(
        exchange.is_none(),
        "the initiator must stop at the challenge"
    );

    // An initiator without the key, facing an honest acceptor, is refused at
    // the proof. It cannot forge a proof: simulate a client that skips the
    // server-proof check by sending a proof computed with its own wrong key.
    let honest = Acceptor::new(&key(1), CLUSTER, master(), [2; 32]);
    let liar = Initiator::new(&key(9), CLUSTER, client(), [1; 32]);
    let (_challenge, waiting) = wire(&liar.hello(), |b| {
        honest.on_hello(&HelloRef::read_as_root(b).unwrap())
    })
    .unwrap();
    // The liar computes its proof over a challenge it accepted under its own key.
    let fake_acceptor = Acceptor::new(&key(9), CLUSTER, master(), [2; 32]);
    let (fake_challenge, _) = wire(&liar.hello(), |b| {
        fake_acceptor.on_hello(&HelloRef::read_as_root(b).unwrap())
    })
    .unwrap();
    let (proof, _) = wire(&fake_challenge, |b| {
        liar.on_challenge(&ChallengeRef::read_as_root(b).unwrap())
    })
    .unwrap();
    let err = wire(&proof, |b| {
        waiting.on_proof(&ProofRef::read_as_root(b).unwrap())
    })
    .unwrap_err();
    assert_eq!(err, AuthError::BadProof);
    assert_eq!(err.code(), ErrorCode::AuthFailed);
}

#[test]
fn wrong_cluster_rejected() {
    let (result, _) = handshake(&key(1), &key(1), "other", CLUSTER, [1; 32], [2; 32]);
    match result {
        Err(e @ AuthError::WrongCluster { .. }) => assert_eq!(e.code(), ErrorCode::WrongCluster),
        other => panic!("expected WrongCluster, got {other:?}"),
    }
}

#[test]
fn replayed_response_rejected() {
    let k = key(1);
    let (result, exchange) = handshake(&k, &k, CLUSTER, CLUSTER, [1; 32], [2; 32]);
    assert!(result.is_ok());
    let recorded = exchange.unwrap();
    // An eavesdropper replays the recorded hello and proof on a new
    // connection; the acceptor's nonce is fresh, so the old proof fails.
    let acceptor = Acceptor::new(&k, CLUSTER, master(), [3; 32]);
    let (_, waiting) = wire(&recorded.hello, |b| {
        acceptor.on_hello(&HelloRef::read_as_root(b).unwrap())
    })
    .unwrap();
    let err = wire(&recorded.proof, |b| {
        waiting.on_proof(&ProofRef::read_as_root(b).unwrap())
    })
    .unwrap_err();
    assert_eq!(err, AuthError::BadProof);

    // A replayed challenge fails against a client with a fresh nonce.
    let initiator = Initiator::new(&k, CLUSTER, client(), [4; 32]);
    let err = wire(&recorded.challenge, |b| {
        initiator.on_challenge(&ChallengeRef::read_as_root(b).unwrap())
    })
    .unwrap_err();
    assert_eq!(err, AuthError::BadProof);
}

#[test]
fn reflected_server_proof_is_not_a_client_proof() {
    let k = key(1);
    let initiator = Initiator::new(&k, CLUSTER, client(), [1; 32]);
    let acceptor = Acceptor::new(&k, CLUSTER, master(), [2; 32]);
    let (challenge, waiting) = wire(&initiator.hello(), |b| {
        acceptor.on_hello(&HelloRef::read_as_root(b).unwrap())
    })
    .unwrap();
    let reflected = Proof {
        client_proof: challenge.server_proof.clone(),
    };
    let err = wire(&reflected, |b| {
        waiting.on_proof(&ProofRef::read_as_root(b).unwrap())
    })
    .unwrap_err();
    assert_eq!(err, AuthError::BadProof);
}

#[test]
fn garbage_rejected() {
    let k = key(1);
    // Wrong-size nonce.
    let acceptor = Acceptor::new(&k, CLUSTER, master(), [2; 32]);
    let mut hello = Initiator::new(&k, CLUSTER, client(), [1; 32]).hello();
    hello.client_nonce = Some(vec![1; 31]);
    assert!(matches!(
        wire(&hello, |b| acceptor
            .on_hello(&HelloRef::read_as_root(b).unwrap())),
        Err(AuthError::Malformed(_))
    ));
    // Missing nonce.
    let acceptor = Acceptor::new(&k, CLUSTER, master(), [2; 32]);
    hello.client_nonce = None;
    assert!(matches!(
        wire(&hello, |b| acceptor
            .on_hello(&HelloRef::read_as_root(b).unwrap())),
        Err(AuthError::Malformed(_))
    ));
    // Unsupported version.
    let acceptor = Acceptor::new(&k, CLUSTER, master(), [2; 32]);
    let mut hello = Initiator::new(&k, CLUSTER, client(), [1; 32]).hello();
    hello.protocol_version = 99;
    assert_eq!(
        wire(&hello, |b| acceptor
            .on_hello(&HelloRef::read_as_root(b).unwrap()))
        .err(),
        Some(AuthError::UnsupportedVersion { theirs: 99 })
    );
    // A reflected hello (our own nonce) is refused.
    let acceptor = Acceptor::new(&k, CLUSTER, master(), [1; 32]);
    let hello = Initiator::new(&k, CLUSTER, client(), [1; 32]).hello();
    assert!(matches!(
        wire(&hello, |b| acceptor
            .on_hello(&HelloRef::read_as_root(b).unwrap())),
        Err(AuthError::Malformed(_))
    ));
    // Truncated and empty proofs.
    for bad in [Some(vec![0u8; 31]), Some(vec![]), None] {
        let acceptor = Acceptor::new(&k, CLUSTER, master(), [2; 32]);
        let initiator = Initiator::new(&k, CLUSTER, client(), [1; 32]);
        let (_, waiting) = wire(&initiator.hello(), |b| {
            acceptor.on_hello(&HelloRef::read_as_root(b).unwrap())
        })
        .unwrap();
        let proof = Proof { client_proof: bad };
        assert!(matches!(
            wire(&proof, |b| waiting
                .on_proof(&ProofRef::read_as_root(b).unwrap())),
            Err(AuthError::Malformed(_))
        ));
    }
    // Random bytes are not a Hello.
    assert!(HelloRef::read_as_root(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).is_err());
}

#[test]
fn key_parsing() {
    assert!(matches!(
        ClusterKey::from_hex("zz"),
        Err(KeyError::NotHex(_))
    ));
    assert!(matches!(
        ClusterKey::from_hex("00ff"),
        Err(KeyError::Length(2))
    ));
    let k = ClusterKey::generate().unwrap();
    assert_eq!(ClusterKey::from_hex(&k.to_hex_line()).unwrap(), k);
    assert!(
        !format!("{k:?}").contains(&k.to_hex_line().trim()[..8]),
        "Debug must not leak the key"
    );
}

#[cfg(unix)]
#[test]
fn key_file_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cluster.key");
    let k = ClusterKey::generate().unwrap();
    std::fs::write(&path, k.to_hex_line()).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    assert!(matches!(
        ClusterKey::load(&path),
        Err(KeyError::Permissions { mode: 0o644, .. })
    ));
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(ClusterKey::load(&path).unwrap(), k);
    assert!(matches!(
        ClusterKey::load(&dir.path().join("missing")),
        Err(KeyError::Read { .. })
    ));
}
