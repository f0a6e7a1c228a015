//! The row split behind store format 2: any serde value (a `Sample`, and
//! whatever sections it grows) becomes a list of *rows*, each a *shape* (the
//! value's structure, field names and strings — what rarely changes) and a
//! list of *numbers* (every integer and float, in walk order — what changes
//! every second). Shapes are dictionary-coded per keyframe and numbers
//! delta-coded against the keyframe by `table.rs`; this module only splits
//! and joins.
//!
//! Where rows start (so that one interface's change re-codes one small row,
//! not the sample): the value itself is row 0; every struct or map that is
//! the value of a field of row 0 (a `Sample` section) is a child row; every
//! element of a sequence whose first element is a struct or map (links,
//! bridge ports, FDB entries, domains, …) is a child row. Rows are listed in
//! pre-order: a row, then its children's subtrees in order.
//!
//! Hand-written on purpose: no serde format crate separates structure from
//! numbers (CBOR, postcard, bincode interleave them), and that separation is
//! what lets one shape stand for an interface across seconds. The op codes
//! follow serde's data model one to one (see docs/store-format.md).

pub mod de;
pub mod ser;

pub use de::{decode_row, decode_value, DeError, Projection, RowsView, Select};
pub use ser::{RowBuf, Splitter};

/// A struct or map: varint n, then n × (key value).
pub const OP_MAP: u8 = 0x01;
/// A string: varint length, UTF-8 bytes.
pub const OP_STR: u8 = 0x02;
/// A byte string: varint length, bytes.
pub const OP_BYTES: u8 = 0x03;
pub const OP_TRUE: u8 = 0x04;
pub const OP_FALSE: u8 = 0x05;
pub const OP_NONE: u8 = 0x06;
/// `Some`: the value follows.
pub const OP_SOME: u8 = 0x07;
pub const OP_UNIT: u8 = 0x08;
/// An unsigned integer: the row's next number.
pub const OP_UINT: u8 = 0x09;
/// A signed integer: the row's next number (two's complement).
pub const OP_SINT: u8 = 0x0A;
/// An f64: the row's next number (IEEE 754 bits).
pub const OP_F64: u8 = 0x0B;
/// An f32: the row's next number (IEEE 754 bits in the low 32).
pub const OP_F32: u8 = 0x0C;
/// A sequence written inline: varint n, then n values.
pub const OP_SEQ: u8 = 0x0D;
/// A sequence of child rows: the row's next number is the count; the
/// elements are the next child rows.
pub const OP_ROWS: u8 = 0x0E;
/// One child row holds this value.
pub const OP_ROW: u8 = 0x0F;

/// What `table.rs` needs to know about a shape without walking it again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ShapeInfo {
    /// Numbers a row of this shape carries.
    pub nums: u32,
    /// Child rows: a fixed count (ROW ops) plus, for each ROWS op, the index
    /// of the number holding its count.
    pub fixed_children: u32,
    pub rows_counts: Vec<u32>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ShapeError {
    #[error("shape truncated at byte {0}")]
    Truncated(usize),
    #[error("unknown shape op 0x{op:02x} at byte {at}")]
    UnknownOp { op: u8, at: usize },
    #[error("shape nested too deeply at byte {0}")]
    TooDeep(usize),
    #[error("shape has {0} trailing bytes after its value")]
    Trailing(usize),
}

/// LEB128, as `integer-encoding` writes it (a test checks they agree).
/// Written out because pushing bytes straight into the Vec costs a tenth
/// of the crate's encode-into-a-buffer-then-copy in the writer's inner
/// loops (callgrind: 45 → 4 instructions for a one-byte varint).
#[inline]
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Zig-zag (as `integer-encoding` maps i64), then LEB128.
#[inline]
pub fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    put_varint(out, ((v << 1) ^ (v >> 63)) as u64);
}

#[inline]
pub fn get_varint(b: &[u8], pos: &mut usize) -> Option<u64> {
    use integer_encoding::VarInt;
    let (v, n) = u64::decode_var(b.get(*pos..)?)?;
    *pos += n;
    Some(v)
}

/// A zig-zag varint, as `integer-encoding`'s `i64::decode_var` reads it
/// (a test checks they agree), with the one-byte case inline: most numbers
/// of a delta are one byte, and the crate's general loop was a fifth of a
/// patched read (callgrind).
#[inline]
pub fn get_zigzag(b: &[u8], pos: &mut usize) -> Option<i64> {
    let &first = b.get(*pos)?;
    let v = if first < 0x80 {
        *pos += 1;
        first as u64
    } else {
        get_varint(b, pos)?
    };
    Some(((v >> 1) as i64) ^ -((v & 1) as i64))
}

/// Walks one value of a shape from `pos`, counting numbers and children.
fn walk(b: &[u8], pos: &mut usize, info: &mut ShapeInfo, depth: u32) -> Result<(), ShapeError> {
    if depth > 128 {
        return Err(ShapeError::TooDeep(*pos));
    }
    let at = *pos;
    let op = *b.get(at).ok_or(ShapeError::Truncated(at))?;
    *pos += 1;
    let len = |pos: &mut usize| get_varint(b, pos).ok_or(ShapeError::Truncated(*pos));
    match op {
        OP_MAP => {
            let n = len(pos)?;
            for _ in 0..n {
                walk(b, pos, info, depth + 1)?;
                walk(b, pos, info, depth + 1)?;
            }
        }
        OP_STR | OP_BYTES => {
            let n = len(pos)? as usize;
            if b.len() - *pos < n {
                return Err(ShapeError::Truncated(*pos));
            }
            *pos += n;
        }
        OP_TRUE | OP_FALSE | OP_NONE | OP_UNIT => {}
        OP_SOME => walk(b, pos, info, depth + 1)?,
        OP_UINT | OP_SINT | OP_F64 | OP_F32 => info.nums += 1,
        OP_SEQ => {
            let n = len(pos)?;
            for _ in 0..n {
                walk(b, pos, info, depth + 1)?;
            }
        }
        OP_ROWS => {
            info.rows_counts.push(info.nums);
            info.nums += 1;
        }
        OP_ROW => info.fixed_children += 1,
        op => return Err(ShapeError::UnknownOp { op, at }),
    }
    Ok(())
}

/// Checks a shape (exactly one value) and tells its numbers and children.
pub fn shape_info(b: &[u8]) -> Result<ShapeInfo, ShapeError> {
    let mut info = ShapeInfo::default();
    let mut pos = 0;
    walk(b, &mut pos, &mut info, 0)?;
    if pos != b.len() {
        return Err(ShapeError::Trailing(b.len() - pos));
    }
    Ok(info)
}

/// Walks one value of a shape from `pos` (which it moves past the value):
/// its numbers and child rows, counted from 0.
pub fn value_info(b: &[u8], pos: &mut usize) -> Result<ShapeInfo, ShapeError> {
    let mut info = ShapeInfo::default();
    walk(b, pos, &mut info, 1)?;
    Ok(info)
}

/// The string value of field `field` of a shape whose top is a map, if the
/// shape has one (used to select rows such as "the link named X" without
/// decoding them).
pub fn field_str<'a>(b: &'a [u8], field: &str) -> Option<&'a str> {
    let mut pos = 0;
    if *b.first()? != OP_MAP {
        return None;
    }
    pos += 1;
    let n = get_varint(b, &mut pos)?;
    let mut scratch = ShapeInfo::default();
    for _ in 0..n {
        let key = read_str(b, &mut pos)?;
        if key == field {
            return read_str(b, &mut pos);
        }
        walk(b, &mut pos, &mut scratch, 1).ok()?;
    }
    None
}

/// A STR op and its string at `pos` (moved past it).
pub fn read_str<'a>(b: &'a [u8], pos: &mut usize) -> Option<&'a str> {
    if *b.get(*pos)? != OP_STR {
        return None;
    }
    *pos += 1;
    let n = get_varint(b, pos)? as usize;
    let s = b.get(*pos..*pos + n)?;
    *pos += n;
    std::str::from_utf8(s).ok()
}

#[cfg(test)]
mod tests;
