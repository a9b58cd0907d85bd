//! TensorFlow's tensor bundle: the format of checkpoints and of a
//! SavedModel's `variables/`, read without TensorFlow.
//!
//! A bundle is `PREFIX.index`, a LevelDB-format table (sorted keys in
//! prefix-compressed blocks, each block checked by a masked crc32c and
//! optionally snappy-compressed) mapping each tensor's name to a
//! `BundleEntryProto` (dtype, shape, shard, offset, size, crc32c), and the
//! shards `PREFIX.data-NNNNN-of-MMMMM` holding the raw little-endian bytes.
//! The entry with the empty key is the `BundleHeaderProto`.
//!
//! Shards are memory-mapped once; a tensor's value is a slice of its map
//! (`bytes::Bytes`), so weights are never copied. Each tensor's crc32c is
//! checked when it is taken.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use protobuf::{Message, MessageField};

use super::map_file;
use crate::error::{Error, Result};
use crate::proto::graph::{DataType, TensorProto, TensorShapeProto};
use crate::proto::saved_model::{
    bundle_header_proto::Endianness, BundleEntryProto, BundleHeaderProto,
};

/// LevelDB's table magic number (the last 8 bytes of every table file).
const TABLE_MAGIC: u64 = 0xdb47_7524_8b80_fb57;
/// Footer: two block handles padded to 40 bytes, then the magic.
const FOOTER_LEN: usize = 48;
/// Each block is followed by its compression type and masked crc32c.
const BLOCK_TRAILER_LEN: usize = 5;
/// A snappy block may not claim to expand beyond this (a corrupt length
/// must not allocate gigabytes).
const MAX_BLOCK_LEN: usize = 1 << 28;

/// The crc32c masking of LevelDB and TensorFlow (a crc of data that contains
/// crcs is otherwise degenerate).
pub fn mask_crc(crc: u32) -> u32 {
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

pub fn unmask_crc(masked: u32) -> u32 {
    masked.wrapping_sub(0xa282_ead8).rotate_left(15)
}

/// Read a varint (at most 10 bytes) at `*pos`, advancing it.
fn varint(data: &[u8], pos: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..70).step_by(7) {
        let b = *data.get(*pos)?;
        *pos += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn u32_at(data: &[u8], at: usize) -> Option<u32> {
    let b = data.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// A block's position in the table file.
#[derive(Debug, Clone, Copy)]
struct BlockHandle {
    offset: usize,
    size: usize,
}

fn block_handle(data: &[u8], pos: &mut usize) -> Option<BlockHandle> {
    let offset = usize::try_from(varint(data, pos)?).ok()?;
    let size = usize::try_from(varint(data, pos)?).ok()?;
    Some(BlockHandle { offset, size })
}

/// The checked, decompressed contents of one block.
fn read_block(file: &[u8], h: BlockHandle, what: &str) -> Result<Vec<u8>> {
    let bad = |m: String| Error::Format(format!("{what} block at byte {}: {m}", h.offset));
    let end = h
        .offset
        .checked_add(h.size)
        .filter(|&e| {
            e.checked_add(BLOCK_TRAILER_LEN)
                .is_some_and(|t| t <= file.len())
        })
        .ok_or_else(|| {
            bad(format!(
                "{} bytes run past the end of the file ({} bytes): truncated?",
                h.size,
                file.len()
            ))
        })?;
    let contents = &file[h.offset..end];
    let kind = file[end];
    let stored = u32_at(file, end + 1).ok_or_else(|| bad("no checksum".into()))?;
    let actual = crc32c::crc32c_append(crc32c::crc32c(contents), &[kind]);
    if unmask_crc(stored) != actual {
        return Err(bad(format!(
            "crc32c mismatch (stored {:08x}, computed {actual:08x}): the index file is corrupt",
            unmask_crc(stored)
        )));
    }
    match kind {
        0 => Ok(contents.to_vec()),
        1 => {
            let n = snap::raw::decompress_len(contents)
                .map_err(|e| bad(format!("bad snappy header: {e}")))?;
            if n > MAX_BLOCK_LEN {
                return Err(bad(format!("claims {n} bytes uncompressed")));
            }
            snap::raw::Decoder::new()
                .decompress_vec(contents)
                .map_err(|e| bad(format!("bad snappy data: {e}")))
        }
        k => Err(bad(format!("unknown compression type {k}"))),
    }
}

/// The key/value entries of one block, in order.
fn block_entries(block: &[u8], what: &str) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let bad = |m: &str| Error::Format(format!("{what} block: {m}"));
    let n = block.len();
    let restarts = u32_at(
        block,
        n.checked_sub(4)
            .ok_or_else(|| bad("shorter than 4 bytes"))?,
    )
    .ok_or_else(|| bad("no restart count"))? as usize;
    let limit = restarts
        .checked_mul(4)
        .and_then(|r| n.checked_sub(4 + r))
        .ok_or_else(|| bad("restart array larger than the block"))?;
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = vec![];
    let mut pos = 0;
    let mut key: Vec<u8> = vec![];
    while pos < limit {
        let e = (|| {
            let shared = usize::try_from(varint(block, &mut pos)?).ok()?;
            let unshared = usize::try_from(varint(block, &mut pos)?).ok()?;
            let vlen = usize::try_from(varint(block, &mut pos)?).ok()?;
            if shared > key.len() {
                return None;
            }
            let kend = pos.checked_add(unshared)?;
            let vend = kend.checked_add(vlen)?;
            if vend > limit {
                return None;
            }
            key.truncate(shared);
            key.extend_from_slice(&block[pos..kend]);
            let value = block[kend..vend].to_vec();
            pos = vend;
            Some(value)
        })()
        .ok_or_else(|| bad("an entry runs past the block or shares more than the previous key"))?;
        out.push((key.clone(), e));
    }
    Ok(out)
}

/// Every key/value pair of a LevelDB-format table, in key order.
pub fn read_table(file: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    if file.len() < FOOTER_LEN {
        return Err(Error::Format(format!(
            "{} bytes: too short for a table (a footer is {FOOTER_LEN} bytes); truncated?",
            file.len()
        )));
    }
    let footer = &file[file.len() - FOOTER_LEN..];
    let mut magic = [0u8; 8];
    magic.copy_from_slice(&footer[40..48]);
    if u64::from_le_bytes(magic) != TABLE_MAGIC {
        return Err(Error::Format(
            "not a tensor bundle index (no table magic at its end); truncated or another file?"
                .into(),
        ));
    }
    let mut pos = 0;
    let bad_footer = || Error::Format("corrupt table footer".into());
    let _meta = block_handle(footer, &mut pos).ok_or_else(bad_footer)?;
    let index = block_handle(footer, &mut pos).ok_or_else(bad_footer)?;
    let index_block = read_block(file, index, "index")?;
    let mut out = vec![];
    for (_, handle) in block_entries(&index_block, "index")? {
        let mut p = 0;
        let h = block_handle(&handle, &mut p)
            .ok_or_else(|| Error::Format("corrupt block handle in the table index".into()))?;
        let data = read_block(file, h, "data")?;
        out.extend(block_entries(&data, "data")?);
    }
    if out.windows(2).any(|w| w[0].0 >= w[1].0) {
        return Err(Error::Format(
            "table keys are not in order: corrupt index".into(),
        ));
    }
    Ok(out)
}

/// An opened tensor bundle: its entries and mapped shards.
pub struct Bundle {
    prefix: PathBuf,
    entries: BTreeMap<String, BundleEntryProto>,
    num_shards: usize,
    shards: Vec<std::sync::OnceLock<Result<Bytes, String>>>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("prefix", &self.prefix)
            .field("tensors", &self.entries.len())
            .field("num_shards", &self.num_shards)
            .finish()
    }
}

/// `PREFIX.index`.
pub fn index_path(prefix: &Path) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(".index");
    PathBuf::from(s)
}

impl Bundle {
    /// Open the bundle `PREFIX` (reads `PREFIX.index`; shards are mapped
    /// when a tensor of theirs is first taken). Errors name the file.
    pub fn open(prefix: &Path) -> Result<Bundle> {
        let index = index_path(prefix);
        if !index.exists() {
            return Err(Error::Format(
                "missing: no checkpoint index here (a bundle PREFIX needs PREFIX.index and PREFIX.data-*)".into(),
            )
            .in_file(&index));
        }
        Self::open_index(prefix, &index).map_err(|e| e.in_file(&index))
    }

    fn open_index(prefix: &Path, index: &Path) -> Result<Bundle> {
        let bytes = map_file(index)?;
        let mut entries = BTreeMap::new();
        let mut header = None;
        for (k, v) in read_table(&bytes)? {
            let key = String::from_utf8(k)
                .map_err(|_| Error::Format("a tensor name is not UTF-8".into()))?;
            if key.is_empty() {
                header = Some(
                    BundleHeaderProto::parse_from_bytes(&v)
                        .map_err(|e| Error::Format(format!("corrupt bundle header: {e}")))?,
                );
                continue;
            }
            let e = BundleEntryProto::parse_from_bytes(&v)
                .map_err(|e| Error::Format(format!("tensor '{key}': corrupt entry: {e}")))?;
            entries.insert(key, e);
        }
        let header = header.ok_or_else(|| {
            Error::Format("no bundle header (the entry with the empty key): not a TensorFlow checkpoint index".into())
        })?;
        if header.endianness.enum_value() != Ok(Endianness::LITTLE) {
            return Err(Error::Format(
                "a big-endian checkpoint: faceall reads little-endian bundles only".into(),
            ));
        }
        let num_shards = usize::try_from(header.num_shards)
            .ok()
            .filter(|&n| (1..=100_000).contains(&n))
            .ok_or_else(|| {
                Error::Format(format!("bundle header claims {} shards", header.num_shards))
            })?;
        Ok(Bundle {
            prefix: prefix.to_path_buf(),
            entries,
            num_shards,
            shards: (0..num_shards)
                .map(|_| std::sync::OnceLock::new())
                .collect(),
        })
    }

    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn contains(&self, key: &str) -> bool {
        self.entries.contains_key(key)
    }

    pub fn entry(&self, key: &str) -> Option<&BundleEntryProto> {
        self.entries.get(key)
    }

    /// `PREFIX.index` and every `PREFIX.data-*` shard, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        std::iter::once(index_path(&self.prefix))
            .chain((0..self.num_shards).map(|i| self.shard_path(i)))
            .collect()
    }

    /// `PREFIX.data-NNNNN-of-MMMMM`.
    pub fn shard_path(&self, shard: usize) -> PathBuf {
        let mut s = self.prefix.as_os_str().to_owned();
        s.push(format!(".data-{shard:05}-of-{:05}", self.num_shards));
        PathBuf::from(s)
    }

    fn shard(&self, shard: usize) -> Result<Bytes> {
        let path = self.shard_path(shard);
        let cell = self
            .shards
            .get(shard)
            .ok_or_else(|| Error::Format(format!("shard {shard} of {}", self.num_shards)))?;
        cell.get_or_init(|| {
            if !path.exists() {
                return Err(format!(
                    "missing: shard {shard} of {} of the checkpoint",
                    self.num_shards
                ));
            }
            map_file(&path).map_err(|e| e.to_string())
        })
        .clone()
        .map_err(|m| Error::Format(m).in_file(&path))
    }

    /// The stored bytes of tensor `key`, checked against its crc32c
    /// (numeric tensors: the crc of the bytes as stored).
    pub fn raw(&self, key: &str) -> Result<(&BundleEntryProto, Bytes)> {
        let (e, bytes, path) = self.stored(key)?;
        if e.dtype.enum_value() == Ok(DataType::DT_STRING) {
            return Err(Error::Format(format!(
                "tensor '{key}' is a string tensor, not a numeric weight"
            ))
            .in_file(&path));
        }
        let crc = crc32c::crc32c(&bytes);
        if crc != unmask_crc(e.crc32c) {
            return Err(Error::Format(format!(
                "tensor '{key}': crc32c mismatch (stored {:08x}, computed {crc:08x}): the data is corrupt",
                unmask_crc(e.crc32c)
            ))
            .in_file(&path));
        }
        Ok((e, bytes))
    }

    /// The bytes of tensor `key` in its shard, unchecked, with the shard's path.
    fn stored(&self, key: &str) -> Result<(&BundleEntryProto, Bytes, PathBuf)> {
        let e = self.entries.get(key).ok_or_else(|| {
            Error::Format(format!("no tensor '{key}' in the checkpoint"))
                .in_file(index_path(&self.prefix))
        })?;
        if !e.slices.is_empty() {
            return Err(Error::Format(format!(
                "tensor '{key}' is a partitioned variable ({} slices): not supported",
                e.slices.len()
            ))
            .in_file(index_path(&self.prefix)));
        }
        let shard = usize::try_from(e.shard_id).unwrap_or(usize::MAX);
        if shard >= self.num_shards {
            return Err(Error::Format(format!(
                "tensor '{key}' is in shard {} of a {}-shard bundle",
                e.shard_id, self.num_shards
            ))
            .in_file(index_path(&self.prefix)));
        }
        let data = self.shard(shard)?;
        let path = self.shard_path(shard);
        let (off, size) = (usize::try_from(e.offset), usize::try_from(e.size));
        let range = match (off, size) {
            (Ok(o), Ok(s)) => o
                .checked_add(s)
                .filter(|&end| end <= data.len())
                .map(|end| o..end),
            _ => None,
        };
        let range = range.ok_or_else(|| {
            Error::Format(format!(
                "tensor '{key}': bytes {}..+{} run past the end of the shard ({} bytes): truncated?",
                e.offset,
                e.size,
                data.len()
            ))
            .in_file(&path)
        })?;
        Ok((e, data.slice(range), path))
    }

    /// Tensor `key` as a TensorProto whose `tensor_content` is a slice of
    /// the mapped shard (what a frozen graph's Const would hold).
    pub fn tensor_proto(&self, key: &str) -> Result<TensorProto> {
        let (e, bytes) = self.raw(key)?;
        let dt = e.dtype.enum_value_or(DataType::DT_INVALID);
        let elem = match dt {
            DataType::DT_FLOAT | DataType::DT_INT32 | DataType::DT_UINT32 => 4,
            DataType::DT_DOUBLE | DataType::DT_INT64 | DataType::DT_UINT64 => 8,
            DataType::DT_HALF
            | DataType::DT_BFLOAT16
            | DataType::DT_INT16
            | DataType::DT_UINT16 => 2,
            DataType::DT_BOOL | DataType::DT_INT8 | DataType::DT_UINT8 => 1,
            other => {
                return Err(Error::Format(format!(
                    "tensor '{key}' has dtype {other:?}: not a numeric weight"
                ))
                .in_file(self.shard_path(e.shard_id.max(0) as usize)))
            }
        };
        let shape = e.shape.clone().into_option().unwrap_or_default();
        let n = shape.dim.iter().try_fold(1u64, |a, d| {
            u64::try_from(d.size).ok().and_then(|s| a.checked_mul(s))
        });
        if n.and_then(|n| n.checked_mul(elem)) != Some(bytes.len() as u64) {
            return Err(Error::Format(format!(
                "tensor '{key}': shape {:?} of {dt:?} does not fit its {} stored bytes",
                shape.dim.iter().map(|d| d.size).collect::<Vec<_>>(),
                bytes.len()
            ))
            .in_file(index_path(&self.prefix)));
        }
        let mut t = TensorProto::new();
        t.dtype = e.dtype;
        t.tensor_shape = MessageField::some(TensorShapeProto {
            dim: shape.dim.clone(),
            ..Default::default()
        });
        t.tensor_content = bytes;
        Ok(t)
    }

    /// A scalar string tensor (TF2's object graph). Stored as the varint64
    /// length, the masked crc32c of the length (as a little-endian u32 when
    /// it fits, else u64: older checkpoints wrote u32s), then the bytes; the
    /// entry's crc32c covers that length, its checksum and the bytes
    /// (TensorFlow's WriteStringTensor).
    pub fn string_scalar(&self, key: &str) -> Result<Bytes> {
        let (e, bytes, path) = self.stored(key)?;
        let bad = |m: &str| Error::Format(format!("tensor '{key}': {m}")).in_file(&path);
        if e.dtype.enum_value() != Ok(DataType::DT_STRING) {
            return Err(bad("is not a string tensor"));
        }
        let mut pos = 0;
        let len = varint(&bytes, &mut pos).ok_or_else(|| bad("bad string length"))?;
        let len_crc = match u32::try_from(len) {
            Ok(l) => crc32c::crc32c(&l.to_le_bytes()),
            Err(_) => crc32c::crc32c(&len.to_le_bytes()),
        };
        let stored = u32_at(&bytes, pos).ok_or_else(|| bad("no length checksum"))?;
        if unmask_crc(stored) != len_crc {
            return Err(bad(
                "crc32c mismatch of the string length: the data is corrupt",
            ));
        }
        let start = pos + 4;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&end| end == bytes.len())
            .ok_or_else(|| bad("string length does not match the stored bytes"))?;
        let value = bytes.slice(start..end);
        let crc = crc32c::crc32c_append(
            crc32c::crc32c_append(len_crc, &stored.to_le_bytes()),
            &value,
        );
        if crc != unmask_crc(e.crc32c) {
            return Err(bad(&format!(
                "crc32c mismatch (stored {:08x}, computed {crc:08x}): the data is corrupt",
                unmask_crc(e.crc32c)
            )));
        }
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_round_trips() {
        for c in [0u32, 1, 0xdead_beef, u32::MAX] {
            assert_eq!(unmask_crc(mask_crc(c)), c);
        }
        assert_ne!(mask_crc(5), 5);
    }

    #[test]
    fn varint_bounds() {
        let mut p = 0;
        assert_eq!(varint(&[0xac, 0x02], &mut p), Some(300));
        assert_eq!(p, 2);
        let mut p = 0;
        assert_eq!(varint(&[0x80, 0x80], &mut p), None);
        let mut p = 0;
        assert_eq!(varint(&[0xff; 11], &mut p), None);
    }

    /// A table written by hand in LevelDB's format (one data block, one
    /// index block, a footer) reads back, and any flipped byte in a block
    /// is caught by its checksum.
    #[test]
    fn reads_a_table_and_catches_corruption() {
        fn block(entries: &[(&[u8], &[u8])]) -> Vec<u8> {
            let mut b = vec![];
            for (k, v) in entries {
                b.push(0); // shared
                b.push(k.len() as u8);
                b.push(v.len() as u8);
                b.extend_from_slice(k);
                b.extend_from_slice(v);
            }
            b.extend_from_slice(&0u32.to_le_bytes()); // one restart at 0
            b.extend_from_slice(&1u32.to_le_bytes());
            b
        }
        fn put_block(file: &mut Vec<u8>, b: &[u8]) -> (u8, u8) {
            let off = file.len() as u8;
            file.extend_from_slice(b);
            file.push(0);
            let crc = crc32c::crc32c_append(crc32c::crc32c(b), &[0]);
            file.extend_from_slice(&mask_crc(crc).to_le_bytes());
            (off, b.len() as u8)
        }
        let mut file = vec![];
        let (doff, dlen) = put_block(&mut file, &block(&[(b"a", b"1"), (b"b", b"22")]));
        let (ioff, ilen) = put_block(&mut file, &block(&[(b"b", &[doff, dlen])]));
        let (moff, mlen) = put_block(&mut file, &block(&[]));
        let mut footer = vec![moff, mlen, ioff, ilen];
        footer.resize(40, 0);
        footer.extend_from_slice(&TABLE_MAGIC.to_le_bytes());
        file.extend_from_slice(&footer);
        let kv = read_table(&file).unwrap();
        assert_eq!(
            kv,
            vec![
                (b"a".to_vec(), b"1".to_vec()),
                (b"b".to_vec(), b"22".to_vec())
            ]
        );
        let mut bad = file.clone();
        bad[3] ^= 1;
        let e = read_table(&bad).unwrap_err().to_string();
        assert!(e.contains("crc32c mismatch"), "{e}");
        let e = read_table(&file[..file.len() - 1]).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");
    }
}
