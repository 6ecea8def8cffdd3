//! Fencing state: the highest master epoch this chunkserver has seen,
//! persisted in every data dir before any command of that epoch is acted
//! on, so a restarted chunkserver still refuses a deposed master.
//!
//! `EPOCH` file, 24 bytes, little-endian: magic `b"RGFSEPCH"` (8), epoch
//! u64 (8), reserved zero (4), CRC32C of bytes 0..20 (4). Replaced
//! atomically (write `EPOCH.tmp`, fsync, rename, fsync dir), so a crash
//! leaves the old or the new value, never a mix. The highest valid value
//! over all dirs wins at start-up.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ringfs_wire::checksum::crc32c;

pub const EPOCH_FILE: &str = "EPOCH";
const EPOCH_TMP_FILE: &str = "EPOCH.tmp";
pub const EPOCH_BYTES: usize = 24;
const MAGIC: [u8; 8] = *b"RGFSEPCH";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EpochFileError {
    #[error("epoch file has {0} bytes, expected {EPOCH_BYTES}")]
    BadLength(usize),
    #[error("epoch file has a bad magic")]
    BadMagic,
    #[error("epoch file checksum mismatch: the file is damaged")]
    BadCrc,
    #[error("epoch file reserved bytes are not zero")]
    Reserved,
}

pub fn encode(epoch: u64) -> [u8; EPOCH_BYTES] {
    let mut b = [0u8; EPOCH_BYTES];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..16].copy_from_slice(&epoch.to_le_bytes());
    let crc = crc32c(&b[0..20]);
    b[20..24].copy_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode(bytes: &[u8]) -> Result<u64, EpochFileError> {
    if bytes.len() != EPOCH_BYTES {
        return Err(EpochFileError::BadLength(bytes.len()));
    }
    if bytes[0..8] != MAGIC {
        return Err(EpochFileError::BadMagic);
    }
    let stored = u32::from_le_bytes([bytes[20], bytes[21], bytes[22], bytes[23]]);
    if crc32c(&bytes[0..20]) != stored {
        return Err(EpochFileError::BadCrc);
    }
    if bytes[16..20] != [0; 4] {
        return Err(EpochFileError::Reserved);
    }
    let mut e = [0u8; 8];
    e.copy_from_slice(&bytes[8..16]);
    Ok(u64::from_le_bytes(e))
}

/// The node's fencing epoch, shared by every core.
pub struct EpochStore {
    dirs: Vec<PathBuf>,
    highest: AtomicU64,
    /// Serialises file replacement (rare: once per master election).
    persist: Mutex<()>,
}

impl EpochStore {
    /// Reads the highest valid epoch over `dirs`. A damaged file is an
    /// error: guessing low would let a deposed master back in.
    pub fn open(dirs: &[PathBuf]) -> Result<EpochStore, String> {
        for d in dirs {
            // An interrupted replacement; the old file is intact.
            let _ = fs::remove_file(d.join(EPOCH_TMP_FILE));
        }
        let mut highest = 0;
        for dir in dirs {
            let path = dir.join(EPOCH_FILE);
            match read_epoch_file(&path) {
                Ok(bytes) => {
                    let e = decode(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                    highest = highest.max(e);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(EpochStore {
            dirs: dirs.to_vec(),
            highest: AtomicU64::new(highest),
            persist: Mutex::new(()),
        })
    }

    pub fn highest(&self) -> u64 {
        self.highest.load(Ordering::Acquire)
    }

    /// Admits `epoch`: refuses one below the highest seen; persists a higher
    /// one in every dir before returning. Blocking (fsyncs): call it from a
    /// blocking task. Returns the highest epoch after the call.
    pub fn admit(&self, epoch: u64) -> Result<u64, AdmitError> {
        let seen = self.highest();
        if epoch < seen {
            return Err(AdmitError::Stale { highest: seen });
        }
        if epoch == seen {
            return Ok(seen);
        }
        let _guard = self.persist.lock().unwrap_or_else(|p| p.into_inner());
        let seen = self.highest();
        if epoch < seen {
            return Err(AdmitError::Stale { highest: seen });
        }
        if epoch > seen {
            for dir in &self.dirs {
                write_atomically(dir, epoch)
                    .map_err(|e| AdmitError::Io(format!("{}: {e}", dir.display())))?;
            }
            self.highest.store(epoch, Ordering::Release);
        }
        Ok(epoch)
    }

    /// True when `epoch` needs no persistence step (not newer than seen).
    pub fn is_known(&self, epoch: u64) -> bool {
        epoch <= self.highest()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error("stale epoch: highest seen is {highest}")]
    Stale { highest: u64 },
    #[error("persisting the epoch: {0}")]
    Io(String),
}

/// Reads at most one byte more than an epoch file has, so a damaged
/// (or huge, sparse) file costs no memory; `decode` refuses any length
/// but [`EPOCH_BYTES`].
fn read_epoch_file(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut bytes = Vec::with_capacity(EPOCH_BYTES + 1);
    File::open(path)?
        .take(EPOCH_BYTES as u64 + 1)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

fn write_atomically(dir: &Path, epoch: u64) -> std::io::Result<()> {
    let tmp = dir.join(EPOCH_TMP_FILE);
    let mut f = File::create(&tmp)?;
    f.write_all(&encode(epoch))?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, dir.join(EPOCH_FILE))?;
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let b = encode(42);
        assert_eq!(decode(&b), Ok(42));
        let mut bad = b;
        bad[9] ^= 1;
        assert_eq!(decode(&bad), Err(EpochFileError::BadCrc));
        assert_eq!(decode(&b[..10]), Err(EpochFileError::BadLength(10)));
    }

    #[test]
    fn admit_persists_and_fences() {
        let d1 = tempfile::tempdir().unwrap();
        let d2 = tempfile::tempdir().unwrap();
        let dirs = vec![d1.path().to_path_buf(), d2.path().to_path_buf()];
        let store = EpochStore::open(&dirs).unwrap();
        assert_eq!(store.highest(), 0);
        assert_eq!(store.admit(5).unwrap(), 5);
        assert!(matches!(
            store.admit(4),
            Err(AdmitError::Stale { highest: 5 })
        ));
        let reopened = EpochStore::open(&dirs).unwrap();
        assert_eq!(reopened.highest(), 5);
        fs::write(d2.path().join(EPOCH_FILE), b"junk").unwrap();
        assert!(EpochStore::open(&dirs).is_err());
    }

    #[test]
    fn a_huge_sparse_epoch_file_is_refused_without_reading_it() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join(EPOCH_FILE);
        // A valid epoch followed by a 1 TiB hole: reading it whole would
        // exhaust memory; only its first bytes may be read.
        let f = File::create(&path).unwrap();
        (&f).write_all(&encode(9)).unwrap();
        f.set_len(1 << 40).unwrap();
        drop(f);
        let err = EpochStore::open(&[d.path().to_path_buf()])
            .err()
            .expect("an epoch file longer than its format is damaged");
        assert!(err.contains(&format!("{} bytes", EPOCH_BYTES + 1)), "{err}");
        // The bounded read still takes a valid file.
        fs::write(&path, encode(9)).unwrap();
        assert_eq!(
            EpochStore::open(&[d.path().to_path_buf()])
                .unwrap()
                .highest(),
            9
        );
    }
}

#[cfg(test)]
mod fuzz_seed {
    /// The fuzz corpus seed is a valid file; regenerate with
    /// `RINGFS_WRITE_FUZZ_SEEDS=1 cargo test -p chunkd --lib epoch`.
    #[test]
    fn fuzz_seed_is_current() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus/epoch_file/seed-0");
        let want = super::encode(7);
        if std::env::var_os("RINGFS_WRITE_FUZZ_SEEDS").is_some() {
            std::fs::write(&path, want).unwrap();
        }
        assert_eq!(std::fs::read(&path).unwrap(), want);
    }
}
