//! Direct I/O plumbing: the alignment a data dir demands (read with
//! `statx(STATX_DIOALIGN)`, never assumed), an aligned owned buffer that
//! compio can hand to the kernel, and O_DIRECT opens.
//!
//! Why our own buffer type: compio's I/O traits are foreign, so only a
//! local newtype can implement them (docs/design/004-chunkd-runtime.md).

use std::alloc::{self, Layout};
use std::io;
use std::mem::MaybeUninit;
use std::path::Path;
use std::ptr::NonNull;

use compio::buf::{IoBuf, IoBufMut, SetLen};
use rustix::fs::{AtFlags, OFlags, StatxFlags};

/// Every on-disk unit of chunkd (meta pages, sector rounding of data I/O)
/// is a multiple of this; a device whose direct-I/O offset alignment does
/// not divide it is refused.
pub const IO_UNIT_BYTES: usize = 4096;

/// What a data dir's filesystem requires of O_DIRECT I/O.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DioAlign {
    /// Buffer address alignment (at least the page size).
    pub mem_align_bytes: usize,
    /// File offset and length alignment.
    pub offset_align_bytes: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DioError {
    #[error("{path}: {source}")]
    Io { path: String, source: io::Error },
    #[error(
        "{path}: the filesystem does not support direct I/O (statx reports no DIOALIGN); use a data dir on ext4, xfs or another filesystem with O_DIRECT"
    )]
    Unsupported { path: String },
    #[error(
        "{path}: direct-I/O alignment {offset_align} (offset) / {mem_align} (memory) is not a power of two dividing {IO_UNIT_BYTES}"
    )]
    BadAlignment {
        path: String,
        offset_align: u32,
        mem_align: u32,
    },
}

/// Probes `dir` by creating a small file there and asking `statx` for its
/// direct-I/O alignment. A directory itself reports no DIOALIGN, so the
/// probe must be a regular file.
pub fn probe_alignment(dir: &Path) -> Result<DioAlign, DioError> {
    let path = dir.join(".dio-probe");
    let shown = path.display().to_string();
    let io_err = |source| DioError::Io {
        path: shown.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(io_err)?;
    let stat = rustix::fs::statx(&file, "", AtFlags::EMPTY_PATH, StatxFlags::DIOALIGN)
        .map_err(|e| io_err(e.into()));
    drop(file);
    let _ = std::fs::remove_file(&path);
    let stat = stat?;
    if !StatxFlags::from_bits_retain(stat.stx_mask).contains(StatxFlags::DIOALIGN)
        || stat.stx_dio_mem_align == 0
        || stat.stx_dio_offset_align == 0
    {
        return Err(DioError::Unsupported { path: shown });
    }
    // STATX_DIO_READ_ALIGN (0x20000, Linux 6.14): reads may need a larger
    // offset alignment than writes; honour the stricter one.
    let read_align = if stat.stx_mask & 0x20000 != 0 {
        stat.stx_dio_read_offset_align
    } else {
        0
    };
    let offset_align = stat.stx_dio_offset_align.max(read_align);
    let mem_align = stat.stx_dio_mem_align;
    let fits = |a: u32| a.is_power_of_two() && (a as usize) <= IO_UNIT_BYTES;
    if !fits(offset_align) || !fits(mem_align) {
        return Err(DioError::BadAlignment {
            path: shown,
            offset_align,
            mem_align,
        });
    }
    Ok(DioAlign {
        mem_align_bytes: (mem_align as usize).max(page_size()),
        offset_align_bytes: offset_align as usize,
    })
}

pub fn page_size() -> usize {
    rustix::param::page_size()
}

/// The open flags chunkd uses for data and meta files.
pub fn direct_flags(dsync: bool) -> i32 {
    let mut flags = OFlags::DIRECT;
    if dsync {
        flags |= OFlags::DSYNC;
    }
    flags.bits() as i32
}

/// Opens `path` for O_DIRECT reads and writes (optionally O_DSYNC) on the
/// current compio runtime.
pub async fn open_direct(path: &Path, create: bool, dsync: bool) -> io::Result<compio::fs::File> {
    compio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .custom_flags(direct_flags(dsync))
        .open(path)
        .await
}

/// Creates `path`, which must not exist (`O_EXCL`), for direct I/O.
pub async fn create_new_direct(path: &Path, dsync: bool) -> io::Result<compio::fs::File> {
    compio::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .custom_flags(direct_flags(dsync))
        .open(path)
        .await
}

pub fn align_up(n: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    n.div_ceil(align) * align
}

pub fn align_down(n: u64, align: u64) -> u64 {
    debug_assert!(align.is_power_of_two());
    n / align * align
}

/// A zero-initialised, aligned, owned byte buffer for O_DIRECT I/O.
///
/// Every byte is initialised from allocation on, so `as_uninit` can expose
/// the whole capacity; `len` is the logical length (what a write sends).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    capacity: usize,
    align: usize,
}

// Safety: the buffer owns its allocation exclusively; no aliasing pointer
// survives a move.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `capacity` and `align` must be non-zero and `align` a power of two;
    /// capacity is rounded up to a multiple of `align`.
    pub fn zeroed(capacity: usize, align: usize) -> AlignedBuf {
        assert!(capacity > 0 && align.is_power_of_two());
        let capacity = capacity.div_ceil(align) * align;
        let layout = Layout::from_size_align(capacity, align).expect("aligned buffer layout");
        // Safety: the layout has a non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        AlignedBuf {
            ptr,
            len: 0,
            capacity,
            align,
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn align(&self) -> usize {
        self.align
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the logical length; every byte is initialised, so any value up
    /// to the capacity is sound.
    pub fn set_len_bytes(&mut self, len: usize) {
        assert!(len <= self.capacity, "{len} > capacity {}", self.capacity);
        self.len = len;
    }

    /// The whole capacity, regardless of `len`.
    pub fn full(&self) -> &[u8] {
        // Safety: ptr is valid for capacity initialised bytes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.capacity) }
    }

    pub fn full_mut(&mut self) -> &mut [u8] {
        // Safety: as above, and &mut self guarantees exclusivity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.full()[..self.len]
    }

    /// Zeroes the bytes from `from` to the end of the capacity: the padding
    /// of an O_DIRECT write past the logical end must not leak old bytes.
    pub fn zero_from(&mut self, from: usize) {
        if from < self.capacity {
            self.full_mut()[from..].fill(0);
        }
    }

    /// Zeroes `[from, to)` (clamped to the capacity): just the padding an
    /// O_DIRECT write of `to` bytes carries past `from` bytes of data. A
    /// 4 KiB write in a 1 MiB pool buffer zeroes nothing, where
    /// [`AlignedBuf::zero_from`] would clear the other 1020 KiB (5 % of
    /// chunkd's CPU in a small-file profile).
    pub fn zero_range(&mut self, from: usize, to: usize) {
        let to = to.min(self.capacity);
        if from < to {
            self.full_mut()[from..to].fill(0);
        }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let layout = Layout::from_size_align(self.capacity, self.align).expect("layout");
        // Safety: allocated in `zeroed` with this very layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl IoBuf for AlignedBuf {
    fn as_init(&self) -> &[u8] {
        self.bytes()
    }
}

impl SetLen for AlignedBuf {
    unsafe fn set_len(&mut self, len: usize) {
        self.set_len_bytes(len);
    }
}

impl IoBufMut for AlignedBuf {
    fn as_uninit(&mut self) -> &mut [MaybeUninit<u8>] {
        let full = self.full_mut();
        // Safety: initialised bytes are valid MaybeUninit bytes.
        unsafe { std::slice::from_raw_parts_mut(full.as_mut_ptr().cast(), full.len()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let mut b = AlignedBuf::zeroed(5000, 4096);
        assert_eq!(b.capacity(), 8192);
        assert_eq!(b.full().as_ptr() as usize % 4096, 0);
        assert!(b.full().iter().all(|&x| x == 0));
        b.full_mut()[10] = 7;
        b.set_len_bytes(11);
        assert_eq!(b.bytes()[10], 7);
        b.zero_from(5);
        assert_eq!(b.full()[10], 0);
    }

    #[test]
    fn zero_range_clears_only_the_padding() {
        let mut b = AlignedBuf::zeroed(8192, 4096);
        b.full_mut().fill(9);
        b.zero_range(100, 4096);
        assert!(b.full()[..100].iter().all(|&x| x == 9));
        assert!(b.full()[100..4096].iter().all(|&x| x == 0));
        assert!(b.full()[4096..].iter().all(|&x| x == 9));
        // Clamped to the capacity; an empty range is nothing.
        b.zero_range(8000, 1 << 20);
        assert!(b.full()[8000..].iter().all(|&x| x == 0));
        b.zero_range(50, 50);
        assert_eq!(b.full()[50], 9);
    }

    #[test]
    fn rounding() {
        assert_eq!(align_up(1, 512), 512);
        assert_eq!(align_up(512, 512), 512);
        assert_eq!(align_down(1023, 512), 512);
    }
}
