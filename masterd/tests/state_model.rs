//! The state machine against a simple reference model (paths in a sorted
//! map), with random op sequences; and determinism: the same ops give the
//! same digest.

use std::collections::BTreeMap;

use masterd::namespace::{Kind, ROOT_INODE};
use masterd::state::State;
use masterd::types::{Fail, Op, ReqId};
use proptest::prelude::*;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum M {
    Dir,
    File,
}

/// The reference: absolute path → kind; the root is implicit.
#[derive(Default)]
struct Model {
    paths: BTreeMap<String, M>,
}

fn parent(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) => "/",
        Some(i) => &p[..i],
        None => "/",
    }
}

impl Model {
    fn kind(&self, p: &str) -> Option<M> {
        if p == "/" {
            Some(M::Dir)
        } else {
            self.paths.get(p).copied()
        }
    }

    /// Resolves like the master: every proper ancestor must be a directory.
    fn check_ancestors(&self, p: &str) -> Result<(), Fail> {
        let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        let mut cur = String::new();
        for part in &parts[..parts.len() - 1] {
            cur.push('/');
            cur.push_str(part);
            match self.kind(&cur) {
                None => return Err(Fail::NotFound),
                Some(M::File) => return Err(Fail::NotDirectory),
                Some(M::Dir) => {}
            }
        }
        Ok(())
    }

    fn children(&self, p: &str) -> Vec<String> {
        let prefix = if p == "/" {
            "/".to_string()
        } else {
            format!("{p}/")
        };
        self.paths
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect()
    }

    fn mkdir(&mut self, p: &str, parents: bool) -> Result<(), Fail> {
        let parts: Vec<&str> = p.trim_start_matches('/').split('/').collect();
        let mut cur = String::new();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            cur.push('/');
            cur.push_str(part);
            match self.kind(&cur) {
                Some(k) if last => {
                    return if parents && k == M::Dir {
                        Ok(())
                    } else {
                        Err(Fail::Exists)
                    };
                }
                Some(M::File) => return Err(Fail::NotDirectory),
                Some(M::Dir) => {}
                None if !last && !parents => return Err(Fail::NotFound),
                None => {
                    self.paths.insert(cur.clone(), M::Dir);
                }
            }
        }
        Ok(())
    }

    fn create(&mut self, p: &str, exclusive: bool) -> Result<(), Fail> {
        self.check_ancestors(p)?;
        match self.kind(p) {
            Some(_) if exclusive => Err(Fail::Exists),
            Some(M::Dir) => Err(Fail::IsDirectory),
            _ => {
                self.paths.insert(p.to_string(), M::File);
                Ok(())
            }
        }
    }

    fn delete(&mut self, p: &str, recursive: bool) -> Result<(), Fail> {
        self.check_ancestors(p)?;
        let k = self.kind(p).ok_or(Fail::NotFound)?;
        let kids = self.children(p);
        if k == M::Dir && !kids.is_empty() && !recursive {
            return Err(Fail::DirectoryNotEmpty);
        }
        for c in kids {
            self.paths.remove(&c);
        }
        self.paths.remove(p);
        Ok(())
    }

    fn rename(&mut self, src: &str, dst: &str, replace: bool) -> Result<(), Fail> {
        self.check_ancestors(src)?;
        let sk = self.kind(src).ok_or(Fail::NotFound)?;
        self.check_ancestors(dst)?;
        if src == dst {
            return Ok(());
        }
        let dp = parent(dst);
        if sk == M::Dir && (dp == src || dp.starts_with(&format!("{src}/"))) {
            return Err(Fail::RenameIntoSelf);
        }
        if let Some(dk) = self.kind(dst) {
            if !replace {
                return Err(Fail::Exists);
            }
            match (sk, dk) {
                (M::Dir, M::File) => return Err(Fail::NotDirectory),
                (M::File, M::Dir) => return Err(Fail::IsDirectory),
                (M::Dir, M::Dir) if !self.children(dst).is_empty() => {
                    return Err(Fail::DirectoryNotEmpty);
                }
                _ => {}
            }
            self.paths.remove(dst);
        }
        let moved: Vec<(String, M)> = self
            .children(src)
            .into_iter()
            .map(|c| (c.clone(), self.paths[&c]))
            .collect();
        for (c, _) in &moved {
            self.paths.remove(c);
        }
        self.paths.remove(src);
        self.paths.insert(dst.to_string(), sk);
        for (c, k) in moved {
            self.paths.insert(format!("{dst}{}", &c[src.len()..]), k);
        }
        Ok(())
    }
}

/// Every attached path of the real state, with its kind.
fn paths_of(state: &State) -> BTreeMap<String, M> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(String::new(), ROOT_INODE)];
    while let Some((p, ino)) = stack.pop() {
        if let Some(Kind::Dir(d)) = state.ns.get(ino).map(|i| &i.kind) {
            for (name, &child) in &d.children {
                let cp = format!("{p}/{name}");
                let k = if state.ns.get(child).is_some_and(|i| i.is_dir()) {
                    M::Dir
                } else {
                    M::File
                };
                out.insert(cp.clone(), k);
                stack.push((cp, child));
            }
        }
    }
    out
}

#[derive(Clone, Debug)]
enum T {
    Mkdir(String, bool),
    Create(String, bool),
    Rename(String, String, bool),
    Delete(String, bool),
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 1..4)
        .prop_map(|v| format!("/{}", v.join("/")))
}

fn op() -> impl Strategy<Value = T> {
    prop_oneof![
        (path(), any::<bool>()).prop_map(|(p, b)| T::Mkdir(p, b)),
        (path(), any::<bool>()).prop_map(|(p, b)| T::Create(p, b)),
        (path(), path(), any::<bool>()).prop_map(|(a, b, r)| T::Rename(a, b, r)),
        (path(), any::<bool>()).prop_map(|(p, r)| T::Delete(p, r)),
    ]
}

fn to_op(t: &T, i: u64) -> Op {
    let req = ReqId {
        client_id: 7,
        seq: i + 1,
    };
    let now_ns = i as i64 * 1000;
    match t {
        T::Mkdir(p, parents) => Op::Mkdir {
            req,
            path: p.clone(),
            parents: *parents,
            mode: 0o755,
            owner: "u".into(),
            now_ns,
        },
        T::Create(p, exclusive) => Op::Create {
            req,
            path: p.clone(),
            replication: 0,
            exclusive: *exclusive,
            mode: 0o644,
            owner: "u".into(),
            now_ns,
            trash_retention_ms: 1000,
        },
        T::Rename(a, b, replace) => Op::Rename {
            req,
            src: a.clone(),
            dst: b.clone(),
            replace: *replace,
            now_ns,
            trash_retention_ms: 1000,
        },
        T::Delete(p, recursive) => Op::Delete {
            req,
            path: p.clone(),
            recursive: *recursive,
            now_ms: i,
            purge_at_ms: i + 1000,
        },
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn state_matches_the_reference_model(ops in prop::collection::vec(op(), 1..60)) {
        let mut state = State::new(1 << 20, 3);
        let mut model = Model::default();
        for (i, t) in ops.iter().enumerate() {
            let got = state.apply(&to_op(t, i as u64)).map(|_| ());
            let want = match t {
                T::Mkdir(p, b) => model.mkdir(p, *b),
                T::Create(p, e) => model.create(p, *e),
                T::Rename(a, b, r) => model.rename(a, b, *r),
                T::Delete(p, r) => model.delete(p, *r),
            };
            prop_assert_eq!(got, want, "op {} {:?}", i, t);
            prop_assert_eq!(paths_of(&state), model.paths.clone(), "after op {} {:?}", i, t);
            prop_assert_eq!(state.ns.files + state.ns.directories, state.ns.inodes.len() as u64);
        }
    }

    #[test]
    fn same_ops_same_digest(ops in prop::collection::vec(op(), 1..80)) {
        let mut a = State::new(1 << 20, 3);
        let mut b = State::new(1 << 20, 3);
        for (i, t) in ops.iter().enumerate() {
            let op = to_op(t, i as u64);
            prop_assert_eq!(a.apply(&op), b.apply(&op));
        }
        prop_assert_eq!(a.digest(), b.digest());
        // A retried op (same request id) changes nothing but the op counter.
        if let Some(t) = ops.last() {
            let before = paths_of(&a);
            let _ = a.apply(&to_op(t, ops.len() as u64 - 1));
            prop_assert_eq!(paths_of(&a), before);
        }
    }
}

#[test]
fn digest_sees_every_change() {
    let mut a = State::new(1 << 20, 3);
    let d0 = a.digest();
    a.apply(&to_op(&T::Mkdir("/x".into(), false), 0)).unwrap();
    let d1 = a.digest();
    assert_ne!(d0, d1);
    a.apply(&to_op(&T::Rename("/x".into(), "/y".into(), false), 1))
        .unwrap();
    assert_ne!(a.digest(), d1);
}

#[test]
fn pipelined_requests_arriving_out_of_order_are_all_applied() {
    let mut s = State::new(1 << 20, 3);
    // A window's worth of creates of one client, applied newest first (as
    // pipelined requests may reach the proposer): none is refused as too old.
    let n = masterd::state::REQUEST_WINDOW_PER_CLIENT as u64;
    for seq in (1..=n).rev() {
        let op = Op::Create {
            req: ReqId { client_id: 9, seq },
            path: format!("/f{seq}"),
            replication: 0,
            exclusive: true,
            mode: 0o644,
            owner: "u".into(),
            now_ns: 0,
            trash_retention_ms: 0,
        };
        assert!(s.apply(&op).is_ok(), "seq {seq} refused");
    }
    assert_eq!(s.ns.files, n);
}
