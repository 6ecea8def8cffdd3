//! Any bytes as Hello, Challenge or Proof: the handshake refuses, never panics,
//! and never accepts without the key.
#![no_main]

use libfuzzer_sys::fuzz_target;
use planus::ReadAsRoot;
use ringfs_wire::auth::{Acceptor, ClusterKey, Identity, Initiator};
use ringfs_wire::msg::{ChallengeRef, HelloRef, PeerKind, ProofRef};

fuzz_target!(|data: &[u8]| {
    let key = ClusterKey::from_bytes(&[7u8; 32]).unwrap();
    let me = Identity { kind: PeerKind::Master, node_id: 1 };
    if let Ok(hello) = HelloRef::read_as_root(data) {
        let _ = Acceptor::new(&key, "fuzz", me, [1; 32]).on_hello(&hello);
    }
    if let Ok(challenge) = ChallengeRef::read_as_root(data) {
        let client = Identity { kind: PeerKind::Client, node_id: 0 };
        // A forged challenge must never pass the server-proof check.
        assert!(
            Initiator::new(&key, "fuzz", client, [2; 32]).on_challenge(&challenge).is_err(),
            "accepted a challenge not made with the key"
        );
    }
    if let Ok(proof) = ProofRef::read_as_root(data) {
        // An honest acceptor that has sent its challenge gets an arbitrary proof.
        let honest = Initiator::new(&key, "fuzz", Identity { kind: PeerKind::Client, node_id: 0 }, [3; 32]);
        let mut builder = planus::Builder::new();
        let hello = builder.finish(&honest.hello(), None).to_vec();
        let hello = HelloRef::read_as_root(&hello).unwrap();
        let (_, waiting) = Acceptor::new(&key, "fuzz", me, [4; 32]).on_hello(&hello).unwrap();
        assert!(waiting.on_proof(&proof).is_err(), "accepted a proof not made with the key");
    }
});
