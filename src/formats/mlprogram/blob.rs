//! Core ML's weight blob file (`weights/weight.bin`, storage version 2), as
//! coremltools' MILBlob writes it and Core ML reads it:
//!
//! - a 64-byte header: blob count (u32), version 2 (u32), zeros;
//! - per blob, at a 64-byte aligned offset, 64 bytes of metadata: sentinel
//!   0xDEADBEEF (u32), data type (u32: 1 float16, 2 float32), size in bytes
//!   (u64), offset of the data (u64), zeros; then the data, 64-byte aligned.
//!
//! A `blobFileValue` in the program points at a blob's metadata offset.
//! All integers are little-endian.

use bytes::Bytes;

/// Metadata and data start on multiples of this.
pub const ALIGN: usize = 64;
const HEADER: usize = 64;
const META: usize = 64;
const SENTINEL: u32 = 0xDEAD_BEEF;
const VERSION: u32 = 2;

/// The element types faceall stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobType {
    F16,
    F32,
}

impl BlobType {
    fn code(self) -> u32 {
        match self {
            BlobType::F16 => 1,
            BlobType::F32 => 2,
        }
    }

    pub fn size(self) -> usize {
        match self {
            BlobType::F16 => 2,
            BlobType::F32 => 4,
        }
    }
}

/// A blob's data: bytes the graph already holds in the right layout
/// (shared, not copied), or values re-laid out as the file is written, a
/// run at a time (convolution and inner-product weights: the writer never
/// holds a second copy of the model's weights).
pub enum BlobData {
    Bytes(Bytes),
    Later {
        count: usize,
        fill: crate::formats::splice::Fill,
    },
}

impl BlobData {
    fn len(&self, ty: BlobType) -> usize {
        match self {
            BlobData::Bytes(b) => b.len(),
            BlobData::Later { count, .. } => count * ty.size(),
        }
    }
}

/// Blobs collected while a program is emitted; offsets are known as each is
/// added, the bytes are written once at the end.
#[derive(Default)]
pub struct BlobWriter {
    blobs: Vec<(u64, BlobType, BlobData)>,
    end: usize,
}

impl BlobWriter {
    /// Add a blob; returns the offset its `blobFileValue` names.
    pub fn add(&mut self, ty: BlobType, data: impl Into<BlobData>) -> u64 {
        let data = data.into();
        let at = self.end.max(HEADER).next_multiple_of(ALIGN);
        let data_at = at + META;
        self.end = data_at + data.len(ty);
        self.blobs.push((at as u64, ty, data));
        at as u64
    }

    /// Total bytes of blob data.
    pub fn data_bytes(&self) -> usize {
        self.blobs.iter().map(|(_, t, d)| d.len(*t)).sum()
    }

    pub fn count(&self) -> usize {
        self.blobs.len()
    }

    /// Write the file, computing deferred blobs from `g`.
    pub fn write(
        &self,
        g: &crate::ir::Graph,
        w: &mut dyn std::io::Write,
    ) -> Result<(), crate::Error> {
        let mut header = [0u8; HEADER];
        header[0..4].copy_from_slice(&(self.blobs.len() as u32).to_le_bytes());
        header[4..8].copy_from_slice(&VERSION.to_le_bytes());
        w.write_all(&header)?;
        let mut pos = HEADER;
        let zeros = [0u8; ALIGN];
        for (at, ty, data) in &self.blobs {
            let at = *at as usize;
            let len = data.len(*ty);
            w.write_all(&zeros[..at - pos])?;
            let mut meta = [0u8; META];
            meta[0..4].copy_from_slice(&SENTINEL.to_le_bytes());
            meta[4..8].copy_from_slice(&ty.code().to_le_bytes());
            meta[8..16].copy_from_slice(&(len as u64).to_le_bytes());
            meta[16..24].copy_from_slice(&((at + META) as u64).to_le_bytes());
            w.write_all(&meta)?;
            match data {
                BlobData::Bytes(b) => w.write_all(b)?,
                BlobData::Later { count, fill } => {
                    use crate::formats::splice::{write_values, Elem};
                    let elem = match ty {
                        BlobType::F16 => Elem::F16,
                        BlobType::F32 => Elem::F32,
                    };
                    write_values(w, *count, elem, &**fill, g)?;
                }
            }
            pos = at + META + len;
        }
        Ok(())
    }
}

impl From<Bytes> for BlobData {
    fn from(b: Bytes) -> Self {
        BlobData::Bytes(b)
    }
}

/// A blob file opened for reading (memory-mapped by the caller).
pub struct BlobFile {
    bytes: Bytes,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

impl BlobFile {
    pub fn new(bytes: Bytes) -> Result<Self, String> {
        let version = u32_at(&bytes, 4).ok_or("the weight file is shorter than its header")?;
        if version != VERSION {
            return Err(format!(
                "weight file version {version} (faceall reads version {VERSION})"
            ));
        }
        Ok(BlobFile { bytes })
    }

    /// The data of the blob whose metadata is at `offset`: its type and a
    /// slice of the file (no copy).
    pub fn get(&self, offset: u64) -> Result<(BlobType, Bytes), String> {
        let at = usize::try_from(offset).map_err(|_| format!("blob offset {offset}"))?;
        let b = &self.bytes;
        let bad = || format!("no blob at offset {offset} of the weight file");
        if u32_at(b, at).ok_or_else(bad)? != SENTINEL {
            return Err(format!(
                "the weight file has no blob at offset {offset} (sentinel missing)"
            ));
        }
        let ty = match u32_at(b, at + 4).ok_or_else(bad)? {
            1 => BlobType::F16,
            2 => BlobType::F32,
            t => {
                return Err(format!(
                    "blob at offset {offset} has data type {t} (faceall reads float16 and float32)"
                ))
            }
        };
        let size = u64_at(b, at + 8).ok_or_else(bad)?;
        let data = u64_at(b, at + 16).ok_or_else(bad)?;
        let start = usize::try_from(data).map_err(|_| bad())?;
        let end = usize::try_from(size)
            .ok()
            .and_then(|s| start.checked_add(s))
            .filter(|&e| e <= b.len())
            .ok_or_else(|| {
                format!(
                    "blob at offset {offset} ({size} bytes at {data}) runs past the end of the weight file ({} bytes)",
                    b.len()
                )
            })?;
        Ok((ty, b.slice(start..end)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_round_trip_aligned() {
        let mut w = BlobWriter::default();
        let a = w.add(BlobType::F32, Bytes::from(vec![1u8; 12]));
        let b = w.add(BlobType::F16, Bytes::from(vec![2u8; 6]));
        assert_eq!(a, 64);
        assert_eq!(b % ALIGN as u64, 0);
        let mut out = vec![];
        w.write(&Default::default(), &mut out).unwrap();
        let f = BlobFile::new(Bytes::from(out)).unwrap();
        let (ta, da) = f.get(a).unwrap();
        assert_eq!((ta, &da[..]), (BlobType::F32, &[1u8; 12][..]));
        let (tb, db) = f.get(b).unwrap();
        assert_eq!((tb, &db[..]), (BlobType::F16, &[2u8; 6][..]));
        assert!(f.get(a + 4).is_err());
        assert!(f.get(1 << 40).is_err());
    }

    #[test]
    fn truncated_files_are_errors() {
        let mut w = BlobWriter::default();
        let a = w.add(BlobType::F32, Bytes::from(vec![1u8; 400]));
        let mut out = vec![];
        w.write(&Default::default(), &mut out).unwrap();
        out.truncate(300);
        let f = BlobFile::new(Bytes::from(out)).unwrap();
        assert!(f.get(a).unwrap_err().contains("past the end"));
        assert!(BlobFile::new(Bytes::from_static(&[0u8; 3])).is_err());
    }
}
