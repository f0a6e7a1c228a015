//! Splitting a serde value into rows (a serde `Serializer`). The buffers are
//! kept between calls, so splitting the next sample allocates nothing once
//! the first one has sized them.

use serde::ser::{self, Serialize};

use super::*;

/// One row: its shape bytes and its numbers.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RowBuf {
    pub shape: Vec<u8>,
    pub nums: Vec<u64>,
    /// Containers open inside this row while splitting.
    depth: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    #[error("{0}")]
    Custom(String),
    #[error("128-bit integers are not supported by the row format")]
    Int128,
}

impl ser::Error for SplitError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        SplitError::Custom(msg.to_string())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
enum Pending {
    #[default]
    Plain,
    /// The value of a field of row 0: a struct or map here becomes a child row.
    RootField,
    /// The first element of a sequence: decides inline or rows.
    SeqFirst,
    /// A later element of a sequence of rows.
    SeqRow,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Undecided,
    Inline,
    Rows,
}

#[derive(Debug)]
struct SeqFrame {
    mode: Mode,
    /// The row holding the sequence op, and where its count goes (a byte
    /// position in the shape for inline, a number index for rows).
    row: usize,
    slot: usize,
    n: u64,
}

#[derive(Debug)]
struct MapFrame {
    row: usize,
    /// Position of the one-byte count placeholder after OP_MAP.
    slot: usize,
    n: u64,
}

/// Splits values into rows; reuse one for a stream of samples.
#[derive(Debug, Default)]
pub struct Splitter {
    rows: Vec<RowBuf>,
    n: usize,
    stack: Vec<usize>,
    /// The row ops go to (the top of `stack`).
    cur: usize,
    pending: Pending,
    seqs: Vec<SeqFrame>,
    maps: Vec<MapFrame>,
}

impl Splitter {
    pub fn new() -> Splitter {
        Splitter::default()
    }

    /// Splits `value`; the rows are valid until the next call.
    pub fn split<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<&[RowBuf], SplitError> {
        self.n = 0;
        self.stack.clear();
        self.seqs.clear();
        self.maps.clear();
        self.pending = Pending::Plain;
        value.serialize(&mut *self)?;
        Ok(&self.rows[..self.n])
    }

    fn open_row(&mut self) {
        let idx = self.n;
        self.n += 1;
        if self.rows.len() < self.n {
            self.rows.push(RowBuf::default());
        } else {
            let r = &mut self.rows[idx];
            r.shape.clear();
            r.nums.clear();
            r.depth = 0;
        }
        self.stack.push(idx);
        self.cur = idx;
    }

    /// Back to the row that was open at `mark` (the stack's length then).
    #[inline]
    fn pop_to(&mut self, mark: usize) {
        if self.stack.len() > mark {
            self.stack.truncate(mark);
            self.cur = self.stack.last().copied().unwrap_or(0);
        }
    }

    fn top(&self) -> usize {
        self.cur
    }

    #[inline]
    fn cur(&mut self) -> &mut RowBuf {
        &mut self.rows[self.cur]
    }

    /// Where the value about to be written goes; opens rows as needed.
    #[inline]
    fn begin(&mut self, is_map: bool) {
        if self.pending == Pending::Plain && !self.stack.is_empty() {
            return;
        }
        self.begin_slow(is_map);
    }

    #[inline(never)]
    fn begin_slow(&mut self, is_map: bool) {
        if self.stack.is_empty() {
            self.open_row();
            self.pending = Pending::Plain;
            return;
        }
        match std::mem::take(&mut self.pending) {
            Pending::Plain => {}
            Pending::RootField => {
                if is_map {
                    self.cur().shape.push(OP_ROW);
                    self.open_row();
                }
            }
            Pending::SeqFirst => {
                let row = self.top();
                let f = self.seqs.last_mut().expect("in a sequence");
                if is_map {
                    f.mode = Mode::Rows;
                    let r = &mut self.rows[row];
                    r.shape.push(OP_ROWS);
                    f.slot = r.nums.len();
                    r.nums.push(0);
                    self.open_row();
                } else {
                    f.mode = Mode::Inline;
                    let r = &mut self.rows[row];
                    r.shape.push(OP_SEQ);
                    f.slot = r.shape.len();
                    r.shape.push(0);
                }
            }
            Pending::SeqRow => self.open_row(),
        }
    }

    /// The pending state for a map/struct value about to be serialized.
    #[inline]
    fn value_pending(&self) -> Pending {
        if self.cur == 0 && self.rows[0].depth == 1 {
            Pending::RootField
        } else {
            Pending::Plain
        }
    }

    #[inline]
    fn scalar(&mut self, op: u8) {
        self.begin(false);
        self.cur().shape.push(op);
    }

    #[inline]
    fn number(&mut self, op: u8, v: u64) {
        self.begin(false);
        let r = self.cur();
        r.shape.push(op);
        r.nums.push(v);
    }

    #[inline]
    fn bytes_op(&mut self, op: u8, b: &[u8]) {
        self.begin(false);
        let shape = &mut self.cur().shape;
        if b.len() < 0x80 {
            shape.reserve(2 + b.len());
            shape.push(op);
            shape.push(b.len() as u8);
        } else {
            shape.push(op);
            put_varint(shape, b.len() as u64);
        }
        shape.extend_from_slice(b);
    }

    fn open_map(&mut self) {
        self.begin(true);
        let row = self.top();
        let r = &mut self.rows[row];
        r.shape.push(OP_MAP);
        let slot = r.shape.len();
        r.shape.push(0);
        r.depth += 1;
        self.maps.push(MapFrame { row, slot, n: 0 });
    }

    fn close_map(&mut self) {
        let f = self.maps.pop().expect("map open");
        let r = &mut self.rows[f.row];
        r.depth -= 1;
        patch_count(&mut r.shape, f.slot, f.n);
    }

    /// A map key or struct field name, then its value.
    fn entry<V: Serialize + ?Sized>(
        &mut self,
        key: Option<&str>,
        value: &V,
    ) -> Result<(), SplitError> {
        if let Some(k) = key {
            self.pending = Pending::Plain;
            self.bytes_op(OP_STR, k.as_bytes());
        }
        if let Some(m) = self.maps.last_mut() {
            m.n += 1;
        }
        self.pending = self.value_pending();
        let mark = self.stack.len();
        value.serialize(&mut *self)?;
        self.pop_to(mark);
        Ok(())
    }

    fn open_seq(&mut self) {
        self.begin(false);
        let row = self.top();
        self.rows[row].depth += 1;
        self.seqs.push(SeqFrame {
            mode: Mode::Undecided,
            row,
            slot: 0,
            n: 0,
        });
    }

    fn element<V: Serialize + ?Sized>(&mut self, value: &V) -> Result<(), SplitError> {
        let f = self.seqs.last_mut().expect("seq open");
        f.n += 1;
        self.pending = match f.mode {
            Mode::Undecided => Pending::SeqFirst,
            Mode::Inline => Pending::Plain,
            Mode::Rows => Pending::SeqRow,
        };
        let mark = self.stack.len();
        value.serialize(&mut *self)?;
        self.pop_to(mark);
        Ok(())
    }

    fn close_seq(&mut self) {
        let f = self.seqs.pop().expect("seq open");
        let r = &mut self.rows[f.row];
        r.depth -= 1;
        match f.mode {
            Mode::Undecided => {
                r.shape.push(OP_SEQ);
                r.shape.push(0);
            }
            Mode::Inline => patch_count(&mut r.shape, f.slot, f.n),
            Mode::Rows => r.nums[f.slot] = f.n,
        }
    }
}

/// Writes count `n` as a varint over the one-byte placeholder at `slot`.
fn patch_count(shape: &mut Vec<u8>, slot: usize, n: u64) {
    if n < 0x80 {
        shape[slot] = n as u8;
    } else {
        let mut v = Vec::with_capacity(10);
        put_varint(&mut v, n);
        shape.splice(slot..slot + 1, v);
    }
}

impl ser::Serializer for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn serialize_bool(self, v: bool) -> Result<(), SplitError> {
        self.scalar(if v { OP_TRUE } else { OP_FALSE });
        Ok(())
    }
    fn serialize_i8(self, v: i8) -> Result<(), SplitError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i16(self, v: i16) -> Result<(), SplitError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i32(self, v: i32) -> Result<(), SplitError> {
        self.serialize_i64(v as i64)
    }
    fn serialize_i64(self, v: i64) -> Result<(), SplitError> {
        self.number(OP_SINT, v as u64);
        Ok(())
    }
    fn serialize_i128(self, _: i128) -> Result<(), SplitError> {
        Err(SplitError::Int128)
    }
    fn serialize_u8(self, v: u8) -> Result<(), SplitError> {
        self.serialize_u64(v as u64)
    }
    fn serialize_u16(self, v: u16) -> Result<(), SplitError> {
        self.serialize_u64(v as u64)
    }
    fn serialize_u32(self, v: u32) -> Result<(), SplitError> {
        self.serialize_u64(v as u64)
    }
    fn serialize_u64(self, v: u64) -> Result<(), SplitError> {
        self.number(OP_UINT, v);
        Ok(())
    }
    fn serialize_u128(self, _: u128) -> Result<(), SplitError> {
        Err(SplitError::Int128)
    }
    fn serialize_f32(self, v: f32) -> Result<(), SplitError> {
        self.number(OP_F32, v.to_bits() as u64);
        Ok(())
    }
    fn serialize_f64(self, v: f64) -> Result<(), SplitError> {
        self.number(OP_F64, v.to_bits());
        Ok(())
    }
    fn serialize_char(self, v: char) -> Result<(), SplitError> {
        self.serialize_str(v.encode_utf8(&mut [0u8; 4]))
    }
    fn serialize_str(self, v: &str) -> Result<(), SplitError> {
        self.bytes_op(OP_STR, v.as_bytes());
        Ok(())
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<(), SplitError> {
        self.bytes_op(OP_BYTES, v);
        Ok(())
    }
    fn serialize_none(self) -> Result<(), SplitError> {
        self.scalar(OP_NONE);
        Ok(())
    }
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Result<(), SplitError> {
        if self.pending == Pending::RootField {
            // Option<Section>: SOME stays in row 0, the section is the child row.
            self.cur().shape.push(OP_SOME);
        } else {
            self.scalar(OP_SOME);
        }
        value.serialize(self)
    }
    fn serialize_unit(self) -> Result<(), SplitError> {
        self.scalar(OP_UNIT);
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Result<(), SplitError> {
        self.serialize_unit()
    }
    fn serialize_unit_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
    ) -> Result<(), SplitError> {
        self.serialize_str(variant)
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        value: &T,
    ) -> Result<(), SplitError> {
        value.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        value: &T,
    ) -> Result<(), SplitError> {
        self.open_map();
        self.entry(Some(variant), value)?;
        self.close_map();
        Ok(())
    }
    fn serialize_seq(self, _: Option<usize>) -> Result<Self, SplitError> {
        self.open_seq();
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, SplitError> {
        self.open_seq();
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, SplitError> {
        self.open_seq();
        Ok(self)
    }
    fn serialize_tuple_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, SplitError> {
        // {variant: [..]}: the map is closed in end().
        self.open_map();
        self.bytes_op(OP_STR, variant.as_bytes());
        self.maps.last_mut().expect("map open").n += 1;
        self.pending = self.value_pending();
        self.open_seq();
        Ok(self)
    }
    fn serialize_map(self, _: Option<usize>) -> Result<Self, SplitError> {
        self.open_map();
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, SplitError> {
        self.open_map();
        Ok(self)
    }
    fn serialize_struct_variant(
        self,
        _: &'static str,
        _: u32,
        variant: &'static str,
        _: usize,
    ) -> Result<Self, SplitError> {
        self.open_map();
        self.bytes_op(OP_STR, variant.as_bytes());
        self.maps.last_mut().expect("map open").n += 1;
        self.pending = Pending::Plain;
        self.open_map();
        Ok(self)
    }
}

impl ser::SerializeSeq for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SplitError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SplitError> {
        self.close_seq();
        Ok(())
    }
}

impl ser::SerializeTuple for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SplitError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SplitError> {
        self.close_seq();
        Ok(())
    }
}

impl ser::SerializeTupleStruct for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SplitError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SplitError> {
        self.close_seq();
        Ok(())
    }
}

impl ser::SerializeTupleVariant for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SplitError> {
        self.element(value)
    }
    fn end(self) -> Result<(), SplitError> {
        self.close_seq();
        self.close_map();
        Ok(())
    }
}

impl ser::SerializeMap for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), SplitError> {
        self.maps.last_mut().expect("map open").n += 1;
        self.pending = Pending::Plain;
        let mark = self.stack.len();
        key.serialize(&mut **self)?;
        self.pop_to(mark);
        Ok(())
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), SplitError> {
        self.pending = self.value_pending();
        let mark = self.stack.len();
        value.serialize(&mut **self)?;
        self.pop_to(mark);
        Ok(())
    }
    fn end(self) -> Result<(), SplitError> {
        self.close_map();
        Ok(())
    }
}

impl ser::SerializeStruct for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SplitError> {
        self.entry(Some(key), value)
    }
    fn end(self) -> Result<(), SplitError> {
        self.close_map();
        Ok(())
    }
}

impl ser::SerializeStructVariant for &mut Splitter {
    type Ok = ();
    type Error = SplitError;
    fn serialize_field<T: Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), SplitError> {
        self.entry(Some(key), value)
    }
    fn end(self) -> Result<(), SplitError> {
        self.close_map();
        self.close_map();
        Ok(())
    }
}
