//! Streaming a model file whose weights are never all in memory: a
//! protobuf message is encoded with its large weight fields left empty,
//! then written with each weight's packed values spliced in, a run at a
//! time, as a writer computes them (Caffe's blobs, Core ML's WeightParams).
//!
//! Protobuf makes this possible without a second encoder: a message is its
//! fields one after another, a nested
//! message is a tag, its byte length and its bytes, and a packed repeated
//! float is a tag, a byte length and the little-endian values. Splicing
//! `n` floats into a message means appending one field to the innermost
//! message of a path and growing the length of every message around it;
//! the tests check the result is byte for byte the whole encoding.

use std::io::Write;

use crate::error::{Error, Result};
use crate::formats::layout::Sink;
use crate::ir::Graph;

/// Computes a deferred weight's values from the graph and hands them to
/// the sink in runs, in order.
pub type Fill = Box<FillFn>;

/// What a [`Fill`] boxes.
pub type FillFn = dyn Fn(&Graph, &mut Sink<'_>) -> std::result::Result<(), String>;

/// How a deferred weight is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Elem {
    /// Packed little-endian float32 (Caffe `data`, Core ML `floatValue`).
    F32,
    /// Bytes of little-endian float16 (Core ML `float16Value`).
    F16,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::F32 => 4,
            Elem::F16 => 2,
        }
    }
}

/// A weight left out of an encoded message, filled as it is written.
pub struct Deferred<'f> {
    /// The nested message that receives the field: (field number, which
    /// occurrence of it) from the outer message in.
    pub path: Vec<(u32, usize)>,
    /// Field number of the values in that message.
    pub field: u32,
    /// How many values `fill` gives.
    pub count: usize,
    pub elem: Elem,
    pub fill: &'f FillFn,
}

const LEN: u64 = 2;

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn write_varint(w: &mut dyn Write, mut v: u64) -> std::io::Result<()> {
    let mut buf = [0u8; 10];
    let mut i = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            buf[i] = b;
            i += 1;
            break;
        }
        buf[i] = b | 0x80;
        i += 1;
    }
    w.write_all(&buf[..i])
}

fn read_varint(b: &[u8], at: &mut usize) -> Result<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b
            .get(*at)
            .ok_or_else(|| Error::Format("internal: a truncated message while splicing".into()))?;
        *at += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(v);
        }
    }
    Err(Error::Format(
        "internal: an overlong varint while splicing".into(),
    ))
}

/// One field of an encoded message: its number, and where its tag starts,
/// its value starts (after a length, for LEN fields) and it ends.
struct Field {
    number: u64,
    wire: u64,
    tag_at: usize,
    value_at: usize,
    end: usize,
}

fn fields(b: &[u8]) -> Result<Vec<Field>> {
    let mut out = vec![];
    let mut at = 0;
    while at < b.len() {
        let tag_at = at;
        let tag = read_varint(b, &mut at)?;
        let wire = tag & 7;
        let (value_at, end) = match wire {
            0 => {
                let s = at;
                read_varint(b, &mut at)?;
                (s, at)
            }
            1 => (at, at + 8),
            5 => (at, at + 4),
            LEN => {
                let n = read_varint(b, &mut at)? as usize;
                (at, at.saturating_add(n))
            }
            w => {
                return Err(Error::Format(format!(
                    "internal: wire type {w} while splicing"
                )))
            }
        };
        if end > b.len() {
            return Err(Error::Format(
                "internal: a field runs past its message while splicing".into(),
            ));
        }
        at = end;
        out.push(Field {
            number: tag >> 3,
            wire,
            tag_at,
            value_at,
            end,
        });
    }
    Ok(out)
}

/// The nested message at `path[0]` in `msg`.
fn find(msg: &[u8], (number, nth): (u32, usize)) -> Result<Field> {
    fields(msg)?
        .into_iter()
        .filter(|f| f.number == u64::from(number) && f.wire == LEN)
        .nth(nth)
        .ok_or_else(|| {
            Error::Format(format!(
                "internal: no field {number} (#{nth}) to splice weights into"
            ))
        })
}

/// Length of `msg` once `d`'s values are spliced in.
pub fn spliced_len(msg: &[u8], d: &Deferred) -> Result<usize> {
    if d.count == 0 {
        // Protobuf writes no empty packed field.
        return Ok(msg.len());
    }
    grown(msg, &d.path, d.field, d.count * d.elem.size())
}

fn grown(msg: &[u8], path: &[(u32, usize)], field: u32, payload: usize) -> Result<usize> {
    match path.split_first() {
        None => Ok(msg.len()
            + varint_len(u64::from(field) << 3 | LEN)
            + varint_len(payload as u64)
            + payload),
        Some((&step, rest)) => {
            let f = find(msg, step)?;
            let inner = msg
                .get(f.value_at..f.end)
                .ok_or_else(|| Error::Format("internal: splice range".into()))?;
            let new = grown(inner, rest, field, payload)?;
            Ok(
                msg.len() - inner.len() + new - varint_len(inner.len() as u64)
                    + varint_len(new as u64),
            )
        }
    }
}

/// Write `msg` with `d`'s values spliced in, computed by `d.fill` from
/// `g` a run at a time (their count checked against `d.count`).
pub fn write_spliced(w: &mut dyn Write, msg: &[u8], d: &Deferred, g: &Graph) -> Result<()> {
    if d.count == 0 {
        w.write_all(msg)?;
        return write_values(w, d.count, d.elem, d.fill, g);
    }
    write_at(w, msg, &d.path, d, g)
}

fn write_at(
    w: &mut dyn Write,
    msg: &[u8],
    path: &[(u32, usize)],
    d: &Deferred,
    g: &Graph,
) -> Result<()> {
    let Some((&step, rest)) = path.split_first() else {
        // The innermost message: the values go last, where rust-protobuf
        // (which writes fields in declaration order) puts them in the
        // messages spliced here: a Caffe BlobProto holding only its
        // `shape` (declared first), an empty Core ML WeightParams.
        w.write_all(msg)?;
        write_varint(w, u64::from(d.field) << 3 | LEN)?;
        write_varint(w, (d.count * d.elem.size()) as u64)?;
        return write_values(w, d.count, d.elem, d.fill, g);
    };
    let f = find(msg, step)?;
    let inner = &msg[f.value_at..f.end];
    let new = grown(inner, rest, d.field, d.count * d.elem.size())?;
    // Up to the tag's end: the old length varint is replaced.
    let mut tag_end = f.tag_at;
    read_varint(msg, &mut tag_end)?;
    w.write_all(&msg[..tag_end])?;
    write_varint(w, new as u64)?;
    write_at(w, inner, rest, d, g)?;
    w.write_all(&msg[f.end..])?;
    Ok(())
}

/// All of `fill`'s values (small weights written inline, tests).
pub fn collect(fill: &FillFn, g: &Graph) -> std::result::Result<Vec<f32>, String> {
    let mut v = vec![];
    fill(g, &mut |run| {
        v.extend_from_slice(run);
        Ok(())
    })?;
    Ok(v)
}

/// `count` values from `fill`, written as `elem`s.
pub fn write_values(
    w: &mut dyn Write,
    count: usize,
    elem: Elem,
    fill: &FillFn,
    g: &Graph,
) -> Result<()> {
    let mut given = 0usize;
    let mut io: Option<std::io::Error> = None;
    let mut bytes: Vec<u8> = vec![];
    let filled = fill(g, &mut |run: &[f32]| {
        given += run.len();
        if given > count {
            return Err(format!("gave more than the {count} values declared"));
        }
        bytes.clear();
        let out: &[u8] = match elem {
            // The run's own bytes where they are little-endian already.
            Elem::F32 if cfg!(target_endian = "little") => bytemuck::cast_slice(run),
            Elem::F32 => {
                bytes.extend(run.iter().flat_map(|v| v.to_le_bytes()));
                &bytes
            }
            Elem::F16 => {
                bytes.extend(
                    run.iter()
                        .flat_map(|v| half::f16::from_f32(*v).to_le_bytes()),
                );
                &bytes
            }
        };
        w.write_all(out).map_err(|e| {
            let m = e.to_string();
            io = Some(e);
            m
        })
    });
    if let Some(e) = io {
        return Err(e.into());
    }
    filled.map_err(Error::Format)?;
    if given != count {
        return Err(Error::Format(format!(
            "internal: a weight gave {given} values, not the {count} declared"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Splicing floats into a nested message gives the bytes of encoding
    /// the message with them in place (lengths grown at every level,
    /// across a varint width boundary too).
    #[test]
    fn splice_is_the_whole_encoding() {
        use crate::proto::caffe::{BlobProto, BlobShape, LayerParameter};
        use protobuf::Message;
        for n in [0usize, 1, 31, 32, 5000] {
            let vals: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            let mut layer = LayerParameter::new();
            layer.set_name("conv".into());
            layer.top.push("conv".into());
            for (i, len) in [n, 3].into_iter().enumerate() {
                let mut b = BlobProto::new();
                let mut s = BlobShape::new();
                s.dim = vec![len as i64];
                b.shape = Some(s).into();
                if i == 1 {
                    b.data = vec![1.0, 2.0, 3.0];
                }
                layer.blobs.push(b);
            }
            layer.include.push(Default::default());
            let empty = layer.write_to_bytes().unwrap();
            layer.blobs[0].data = vals.clone();
            let whole = layer.write_to_bytes().unwrap();
            let v = vals.clone();
            let fill: Fill = Box::new(move |_, sink| {
                for run in v.chunks(7) {
                    sink(run)?;
                }
                Ok(())
            });
            let d = Deferred {
                path: vec![(7, 0)],
                field: 5,
                count: n,
                elem: Elem::F32,
                fill: &*fill,
            };
            let g = Graph::default();
            assert_eq!(spliced_len(&empty, &d).unwrap(), whole.len(), "n {n}");
            let mut out = vec![];
            write_spliced(&mut out, &empty, &d, &g).unwrap();
            assert_eq!(out, whole, "n {n}");
        }
    }

    /// A fill that gives fewer values than declared is an error, not a
    /// file with a wrong length.
    #[test]
    fn short_fill_is_an_error() {
        let d = Deferred {
            path: vec![],
            field: 1,
            count: 4,
            elem: Elem::F32,
            fill: &|_, sink| sink(&[1.0]),
        };
        assert!(write_spliced(&mut vec![], &[], &d, &Graph::default()).is_err());
    }
}
