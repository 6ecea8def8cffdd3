//! Namespace semantics against a real masterd over the wire.

use ringfs_tests::*;
use ringfs_wire::msg::{ErrorCode, InodeKind};

#[test]
fn namespace_semantics() {
    let env = Env::new(&Options::default());
    let _m = start_master(&env);
    let mut c = env.client();

    // mkdir with and without parents
    assert_eq!(code(&c.mkdir("/a/b/c", false)), Some(ErrorCode::NotFound));
    c.mkdir("/a/b/c", true).unwrap();
    assert_eq!(code(&c.mkdir("/a/b", false)), Some(ErrorCode::Exists));
    c.mkdir("/a/b", true)
        .expect("mkdir -p of an existing dir succeeds");
    assert_eq!(c.stat("/a/b").unwrap().kind, InodeKind::Directory);

    // create, exclusive create, create under a file
    c.create("/a/f1").unwrap();
    assert_eq!(code(&c.create("/a/f1")), Some(ErrorCode::Exists));
    assert_eq!(code(&c.create("/a/f1/x")), Some(ErrorCode::NotDirectory));
    assert_eq!(code(&c.create("relative")), Some(ErrorCode::InvalidPath));
    assert_eq!(code(&c.create("/a/..")), Some(ErrorCode::InvalidPath));
    assert_eq!(c.stat("/a/f1").unwrap().kind, InodeKind::File);

    // rename over an existing file needs replace
    c.create("/a/f2").unwrap();
    let f1 = c.inode("/a/f1");
    assert_eq!(
        code(&c.rename("/a/f1", "/a/f2", false)),
        Some(ErrorCode::Exists)
    );
    c.rename("/a/f1", "/a/f2", true).unwrap();
    assert_eq!(
        c.inode("/a/f2"),
        f1,
        "the source inode took the destination's name"
    );
    assert_eq!(
        code(
            &c.stat("/a/f1")
                .map(|_| ringfs_wire::msg::Body::Ping(Box::default()))
        ),
        Some(ErrorCode::NotFound)
    );

    // a directory cannot move into its own subtree; directories move whole
    assert_eq!(
        code(&c.rename("/a", "/a/b/c/a", false)),
        Some(ErrorCode::RenameIntoSelf)
    );
    c.rename("/a/b", "/moved", false).unwrap();
    assert!(c.stat("/moved/c").is_ok());
    assert_eq!(c.list("/a").unwrap(), vec!["f2".to_string()]);

    // rename a file over a directory and vice versa
    c.mkdir("/d", false).unwrap();
    assert_eq!(
        code(&c.rename("/a/f2", "/d", true)),
        Some(ErrorCode::IsDirectory)
    );
    assert_eq!(
        code(&c.rename("/d", "/a/f2", true)),
        Some(ErrorCode::NotDirectory)
    );

    // delete of a non-empty directory needs recursive
    assert_eq!(
        c.delete("/moved", false).unwrap_err().code,
        ErrorCode::DirectoryNotEmpty
    );
    let trash = c.delete("/moved", true).unwrap();
    assert!(trash > 0);
    assert!(c.stat("/moved").is_err());
    assert_eq!(
        c.delete("/", true).unwrap_err().code,
        ErrorCode::InvalidPath
    );

    // restore from the trash, to the original path and elsewhere
    c.restore(trash, "").unwrap();
    assert!(c.stat("/moved/c").is_ok(), "restored subtree is whole");
    let t2 = c.delete("/moved/c", false).unwrap();
    c.mkdir("/moved/c", false).unwrap();
    assert_eq!(code(&c.restore(t2, "")), Some(ErrorCode::Exists));
    c.restore(t2, "/moved/c-restored").unwrap();
    assert!(c.stat("/moved/c-restored").is_ok());
    assert_eq!(
        code(&c.restore(t2, "/x")),
        Some(ErrorCode::NotFound),
        "a trash entry restores once"
    );

    // purge: gone for good
    let t3 = c.delete("/d", false).unwrap();
    c.purge(t3).unwrap();
    assert_eq!(code(&c.restore(t3, "/d")), Some(ErrorCode::NotFound));

    // listing pages in name order
    c.mkdir("/many", false).unwrap();
    for i in 0..2500 {
        c.create(&format!("/many/f{i:05}")).unwrap();
    }
    let names = c.list("/many").unwrap();
    assert_eq!(names.len(), 2500);
    assert!(names.windows(2).all(|w| w[0] < w[1]));

    // set replication, recursive
    c.set_replication("/many", 2, true).unwrap();
    assert_eq!(c.stat("/many/f00007").unwrap().replication, 2);
    assert_eq!(
        code(&c.set_replication("/many", 0, false)),
        Some(ErrorCode::BadRequest)
    );
}

#[test]
fn retried_mutation_applies_once() {
    let env = Env::new(&Options::default());
    let _m = start_master(&env);
    let mut c = env.client();
    let req = Some(c.next_req());
    let first = c.create_with("/once", req, true).unwrap();
    // The same request id again (a client retry after a lost reply) returns
    // the first outcome instead of Exists.
    let again = c.create_with("/once", req, true).unwrap();
    let inode = |b: &ringfs_wire::msg::Body| match b {
        ringfs_wire::msg::Body::AttrReply(a) => a.attr.as_ref().map(|a| a.inode),
        _ => None,
    };
    assert!(inode(&first).is_some());
    assert_eq!(
        inode(&first),
        inode(&again),
        "the retry returned the first create's file"
    );
    let mut other = env.client();
    assert_eq!(code(&other.create("/once")), Some(ErrorCode::Exists));
}

#[test]
fn bad_frames_and_wrong_key_are_refused() {
    let env = Env::new(&Options::default());
    let mut m = start_master(&env);
    // A wrong key fails the handshake.
    let wrong = ringfs_wire::auth::ClusterKey::generate().unwrap();
    let r = ringfs_client::conn::Conn::connect(
        &env.master_addr,
        &wrong,
        CLUSTER,
        ringfs_wire::msg::PeerKind::Client,
        TIMEOUT,
    );
    assert!(r.is_err());
    // Garbage after a good handshake closes that connection only.
    let mut c = env.client();
    let _ = c.conn.send_raw(&[0xAB; 64]);
    let _ = c.conn.receive();
    let mut c2 = env.client();
    c2.mkdir("/still-serving", false).unwrap();
    assert!(m.is_running());
}

/// Paths over the bounds are refused before they are proposed: the
/// proposal count does not move, and the reply is `TooLarge`. Before,
/// a few pipelined renames of 16 MiB paths made one log entry too large
/// for the log, which stopped the leader's Raft for good.
#[test]
fn oversized_paths_are_refused_before_proposing() {
    let env = Env::new(&Options::default());
    let _m = start_master(&env);
    let mut c = env.client();
    c.mkdir("/d", false).unwrap();
    let proposals = || metric(&env.master_http, "ringfs_master_proposals_total");
    let before = proposals();
    // The test connection's frames hold 1 MiB of meta: two 400 KiB paths.
    let huge = format!("/{}", "x".repeat(400 << 10));
    let long_name = format!("/d/{}", "n".repeat(256));
    let just_over = format!("/dd{}", "/n".repeat(2047));
    assert_eq!(just_over.len(), 4097);
    for (src, dst) in [
        (huge.as_str(), huge.as_str()),
        ("/d", long_name.as_str()),
        ("/d", just_over.as_str()),
    ] {
        let e = c.rename(src, dst, false).unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge, "{:?}", e.message);
    }
    assert_eq!(code(&c.mkdir(&huge, true)), Some(ErrorCode::TooLarge));
    assert_eq!(code(&c.create(&long_name)), Some(ErrorCode::TooLarge));
    assert_eq!(proposals(), before, "nothing was proposed");
    // The master goes on taking writes.
    c.mkdir("/d/ok", false).unwrap();
    assert_eq!(proposals(), before + 1);
}
