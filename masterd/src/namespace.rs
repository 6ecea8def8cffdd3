//! The namespace: inodes, directories and the trash.
//!
//! Layout chosen for memory (the target is ≤ 200 bytes per single-chunk
//! file at 10 M files, docs/design/009-masterd-core.md): a file's chunk list
//! holds one handle inline, directory entries keep names of up to 24 bytes
//! inline, and the owner is an index into an interned table. Paths are not
//! stored: a path is resolved from the root on every lookup, and the parent
//! pointer exists only to refuse renames into one's own subtree.
//!
//! Every mutation here is deterministic and total: bad input is a [`Fail`],
//! never a panic (ops come from the log, which comes from disk and network).

use std::collections::{BTreeMap, HashMap};

use compact_str::CompactString;

use crate::pagedmap::PagedMap;
use crate::types::{FILE_CHUNKS_MAX, Fail, NAME_BYTES_MAX, OWNER_BYTES_MAX, PATH_BYTES_MAX};

pub const ROOT_INODE: u64 = 1;
/// Parent of inodes that are detached (in the trash).
pub const NO_PARENT: u64 = 0;
/// Upper bound on distinct owner names (interned forever).
pub const OWNERS_MAX: usize = 1 << 16;

pub use crate::chunklist::ChunkList;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    pub parent: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub mode: u32,
    /// Index into [`Namespace::owners`].
    pub owner: u32,
    /// Files: the goal. Directories: the default for new files beneath.
    pub replication: u8,
    pub kind: Kind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    File(File),
    Dir(Box<Dir>),
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct File {
    pub length_bytes: u64,
    pub complete: bool,
    pub chunks: ChunkList,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dir {
    pub children: BTreeMap<CompactString, u64>,
}

/// The filler of an empty slot in the inode table's pages, never seen
/// as an inode: a detached, empty file.
impl Default for Inode {
    fn default() -> Self {
        Inode {
            parent: NO_PARENT,
            mtime_ns: 0,
            ctime_ns: 0,
            mode: 0,
            owner: 0,
            replication: 0,
            kind: Kind::File(File::default()),
        }
    }
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        matches!(self.kind, Kind::Dir(_))
    }

    pub fn file(&self) -> Option<&File> {
        match &self.kind {
            Kind::File(f) => Some(f),
            Kind::Dir(_) => None,
        }
    }

    pub fn dir(&self) -> Option<&Dir> {
        match &self.kind {
            Kind::Dir(d) => Some(d),
            Kind::File(_) => None,
        }
    }
}

/// A deleted subtree waiting for its purge time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrashEntry {
    pub inode: u64,
    pub original_path: String,
    pub deleted_at_ms: u64,
    pub purge_at_ms: u64,
}

/// Validates an absolute path and splits it into components.
pub fn components(path: &str) -> Result<Vec<&str>, Fail> {
    if path.len() > PATH_BYTES_MAX {
        return Err(Fail::TooLarge);
    }
    let Some(rest) = path.strip_prefix('/') else {
        return Err(Fail::InvalidPath);
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Ok(Vec::new());
    }
    let parts: Vec<&str> = rest.split('/').collect();
    for part in &parts {
        valid_name(part)?;
    }
    Ok(parts)
}

fn valid_name(name: &str) -> Result<(), Fail> {
    if name.is_empty() || name == "." || name == ".." || name.contains('\0') {
        return Err(Fail::InvalidPath);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(Fail::TooLarge);
    }
    Ok(())
}

/// The namespace tables. Counters live in [`crate::state::State`].
#[derive(Clone, Debug)]
pub struct Namespace {
    /// In pages by inode number (`crate::pagedmap`): an inode costs its
    /// 80 bytes, and growing never rehashes (a 10 M-entry `HashMap`
    /// doubling stalled the apply path for seconds).
    pub inodes: PagedMap<Inode>,
    pub trash: BTreeMap<u64, TrashEntry>,
    pub owners: Vec<String>,
    owner_index: HashMap<String, u32>,
    pub files: u64,
    pub directories: u64,
}

impl Namespace {
    pub fn new(default_replication: u8) -> Namespace {
        let mut ns = Namespace {
            inodes: PagedMap::new(),
            trash: BTreeMap::new(),
            owners: Vec::new(),
            owner_index: HashMap::new(),
            files: 0,
            directories: 0,
        };
        let root_owner = ns.intern_owner("root");
        ns.insert(
            ROOT_INODE,
            Inode {
                parent: ROOT_INODE,
                mtime_ns: 0,
                ctime_ns: 0,
                mode: 0o755,
                owner: root_owner,
                replication: default_replication,
                kind: Kind::Dir(Box::default()),
            },
        );
        ns
    }

    /// Rebuilds the owner index after a checkpoint load filled `owners`.
    pub fn reindex_owners(&mut self) {
        self.owner_index = self
            .owners
            .iter()
            .enumerate()
            .map(|(i, o)| (o.clone(), i as u32))
            .collect();
    }

    /// Recounts files and directories after a checkpoint load.
    pub fn recount(&mut self) {
        self.files = self.inodes.values().filter(|i| !i.is_dir()).count() as u64;
        self.directories = self.inodes.len() as u64 - self.files;
    }

    pub fn intern_owner(&mut self, owner: &str) -> u32 {
        if let Some(&i) = self.owner_index.get(owner) {
            return i;
        }
        if self.owners.len() >= OWNERS_MAX || owner.len() > OWNER_BYTES_MAX {
            // Beyond the bound everyone unknown is "nobody" (index 0 is root,
            // so reserve the last slot deterministically).
            return self.owner_index.get("nobody").copied().unwrap_or(0);
        }
        let i = self.owners.len() as u32;
        self.owners.push(owner.to_string());
        self.owner_index.insert(owner.to_string(), i);
        i
    }

    pub fn owner_name(&self, index: u32) -> &str {
        self.owners
            .get(index as usize)
            .map(String::as_str)
            .unwrap_or("")
    }

    pub fn insert(&mut self, ino: u64, inode: Inode) {
        if inode.is_dir() {
            self.directories += 1;
        } else {
            self.files += 1;
        }
        let old = self.inodes.insert(ino, inode);
        assert!(old.is_none(), "inode {ino} allocated twice");
    }

    fn remove(&mut self, ino: u64) -> Option<Inode> {
        let inode = self.inodes.remove(&ino)?;
        if inode.is_dir() {
            self.directories -= 1;
        } else {
            self.files -= 1;
        }
        Some(inode)
    }

    pub fn get(&self, ino: u64) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    pub fn get_mut(&mut self, ino: u64) -> Option<&mut Inode> {
        self.inodes.get_mut(&ino)
    }

    fn child(&self, dir: u64, name: &str) -> Result<Option<u64>, Fail> {
        let inode = self.inodes.get(&dir).ok_or(Fail::NotFound)?;
        let d = inode.dir().ok_or(Fail::NotDirectory)?;
        Ok(d.children.get(name).copied())
    }

    /// Resolves a path to an inode.
    pub fn lookup(&self, path: &str) -> Result<u64, Fail> {
        let mut ino = ROOT_INODE;
        for part in components(path)? {
            ino = self.child(ino, part)?.ok_or(Fail::NotFound)?;
        }
        Ok(ino)
    }

    /// Resolves everything but the last component: (parent inode, name).
    /// The root itself has no parent: `InvalidPath`.
    pub fn lookup_parent<'p>(&self, path: &'p str) -> Result<(u64, &'p str), Fail> {
        let parts = components(path)?;
        let Some((name, dirs)) = parts.split_last() else {
            return Err(Fail::InvalidPath);
        };
        let mut ino = ROOT_INODE;
        for part in dirs {
            ino = self.child(ino, part)?.ok_or(Fail::NotFound)?;
        }
        let parent = self.inodes.get(&ino).ok_or(Fail::NotFound)?;
        if !parent.is_dir() {
            return Err(Fail::NotDirectory);
        }
        Ok((ino, name))
    }

    pub fn link(&mut self, parent: u64, name: &str, ino: u64, now_ns: i64) {
        if let Some(p) = self.inodes.get_mut(&parent) {
            p.mtime_ns = now_ns;
            if let Kind::Dir(d) = &mut p.kind {
                let old = d.children.insert(CompactString::from(name), ino);
                assert!(
                    old.is_none(),
                    "link over an existing entry {name:?} in {parent}"
                );
            }
        }
        if let Some(child) = self.inodes.get_mut(&ino) {
            child.parent = parent;
        }
    }

    pub fn unlink(&mut self, parent: u64, name: &str, now_ns: i64) -> Option<u64> {
        let p = self.inodes.get_mut(&parent)?;
        p.mtime_ns = now_ns;
        let Kind::Dir(d) = &mut p.kind else {
            return None;
        };
        let ino = d.children.remove(name)?;
        if let Some(child) = self.inodes.get_mut(&ino) {
            child.parent = NO_PARENT;
        }
        Some(ino)
    }

    /// True if `ino` is `ancestor` or lies beneath it.
    pub fn is_within(&self, mut ino: u64, ancestor: u64) -> bool {
        // Bounded by the tree depth; the bound guards against a damaged
        // parent chain looping forever.
        for _ in 0..=PATH_BYTES_MAX {
            if ino == ancestor {
                return true;
            }
            match self.inodes.get(&ino) {
                Some(i) if ino != ROOT_INODE && i.parent != NO_PARENT => ino = i.parent,
                _ => return false,
            }
        }
        false
    }

    /// Every inode of the subtree rooted at `ino`, `ino` first.
    pub fn subtree(&self, ino: u64) -> Vec<u64> {
        let mut out = vec![ino];
        let mut i = 0;
        while i < out.len() {
            if let Some(d) = self.inodes.get(&out[i]).and_then(Inode::dir) {
                out.extend(d.children.values().copied());
            }
            i += 1;
        }
        out
    }

    /// Removes a detached subtree; returns the chunk handles it held.
    pub fn purge_subtree(&mut self, ino: u64) -> Vec<u64> {
        let mut handles = Vec::new();
        for i in self.subtree(ino) {
            if let Some(inode) = self.remove(i)
                && let Kind::File(f) = inode.kind
            {
                handles.extend(f.chunks);
            }
        }
        handles
    }

    /// Files in a subtree (for recursive replication changes).
    pub fn files_within(&self, ino: u64) -> Vec<u64> {
        self.subtree(ino)
            .into_iter()
            .filter(|i| self.inodes.get(i).is_some_and(|n| !n.is_dir()))
            .collect()
    }

    /// Path of an attached inode, rebuilt from parent pointers.
    pub fn path_of(&self, mut ino: u64) -> Option<String> {
        let mut parts = Vec::new();
        for _ in 0..=PATH_BYTES_MAX {
            if ino == ROOT_INODE {
                parts.reverse();
                return Some(format!("/{}", parts.join("/")));
            }
            let parent = self.inodes.get(&ino)?.parent;
            let d = self.inodes.get(&parent)?.dir()?;
            let name = d.children.iter().find(|&(_, &c)| c == ino)?.0;
            parts.push(name.to_string());
            ino = parent;
        }
        None
    }

    /// Appends a chunk handle to a file at `index`.
    pub fn add_chunk(
        &mut self,
        ino: u64,
        index: u64,
        handle: u64,
        now_ns: i64,
    ) -> Result<(), Fail> {
        let inode = self.inodes.get_mut(&ino).ok_or(Fail::NotFound)?;
        let Kind::File(f) = &mut inode.kind else {
            return Err(Fail::IsDirectory);
        };
        if index != f.chunks.len() as u64 || index >= FILE_CHUNKS_MAX {
            return Err(Fail::OutOfRange);
        }
        f.chunks.push(handle);
        inode.mtime_ns = now_ns;
        Ok(())
    }
}
