//! Joining rows back into a value (a serde `Deserializer`), optionally
//! projected: sections a query does not need are left out (their serde
//! default) and rows of one sequence can be selected by a string field, so
//! `history --iface X` materializes one interface, not five hundred.

use std::collections::BTreeSet;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

use super::*;

/// One record's rows, ready to be joined.
#[derive(Debug, Default)]
pub struct RowsView<'a> {
    /// The shape of each row.
    pub shapes: Vec<&'a [u8]>,
    /// Every row's numbers; row r's are `nums[num_off[r]..num_off[r + 1]]`.
    pub nums: &'a [u64],
    pub num_off: &'a [u32],
    /// The index after row r's subtree (its last descendant + 1).
    pub subtree_end: &'a [u32],
}

/// Rows of the sequence in row-0 field `seq` whose string field `field` is
/// one of `values`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Select {
    pub seq: String,
    pub field: String,
    pub values: BTreeSet<String>,
}

/// What a query needs of a record.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    /// Row-0 fields held in child rows to decode (None: all); the others are
    /// left out, so they take their serde default.
    pub fields: Option<BTreeSet<String>>,
    pub select: Option<Select>,
}

impl Projection {
    pub fn all() -> Projection {
        Projection::default()
    }
    fn keeps(&self, field: &str) -> bool {
        self.fields.as_ref().is_none_or(|f| f.contains(field))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DeError {
    #[error("{0}")]
    Custom(String),
    #[error("row {row}: {what} at shape byte {at}")]
    Bad {
        row: usize,
        at: usize,
        what: &'static str,
    },
}

impl de::Error for DeError {
    fn custom<T: std::fmt::Display>(msg: T) -> Self {
        DeError::Custom(msg.to_string())
    }
}

/// Joins the rows of `view` into a `T`.
pub fn decode_value<'a, T: de::Deserialize<'a>>(
    view: &RowsView<'a>,
    proj: &Projection,
) -> Result<T, DeError> {
    if view.shapes.is_empty() {
        return Err(DeError::Custom("no rows".into()));
    }
    let mut d = De::at(view, proj, 0);
    T::deserialize(&mut d)
}

/// Joins the subtree of row `row` alone into a `T` (the reader's fast path
/// re-reads a section it has no in-place patch for this way).
pub fn decode_row<'a, T: de::Deserialize<'a>>(
    view: &RowsView<'a>,
    proj: &Projection,
    row: usize,
) -> Result<T, DeError> {
    if row >= view.shapes.len() {
        return Err(DeError::Custom(format!("no row {row}")));
    }
    let mut d = De::at(view, proj, row);
    T::deserialize(&mut d)
}

struct De<'v, 'a> {
    v: &'v RowsView<'a>,
    proj: &'v Projection,
    row: usize,
    shape: &'a [u8],
    pos: usize,
    num: usize,
    num_end: usize,
    child: usize,
    /// The next ROWS op is the selected sequence.
    select_next: bool,
}

impl<'v, 'a> De<'v, 'a> {
    fn at(v: &'v RowsView<'a>, proj: &'v Projection, row: usize) -> De<'v, 'a> {
        De {
            v,
            proj,
            row,
            shape: v.shapes[row],
            pos: 0,
            num: v.num_off[row] as usize,
            num_end: v.num_off[row + 1] as usize,
            child: row + 1,
            select_next: false,
        }
    }

    #[cold]
    #[inline(never)]
    fn bad(&self, what: &'static str) -> DeError {
        DeError::Bad {
            row: self.row,
            at: self.pos,
            what,
        }
    }

    #[inline]
    fn peek(&self) -> Result<u8, DeError> {
        self.shape
            .get(self.pos)
            .copied()
            .ok_or_else(|| self.bad("shape ends early"))
    }

    fn op(&mut self) -> Result<u8, DeError> {
        let o = self.peek()?;
        self.pos += 1;
        Ok(o)
    }

    fn varint(&mut self) -> Result<u64, DeError> {
        get_varint(self.shape, &mut self.pos).ok_or_else(|| self.bad("bad length"))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DeError> {
        let n = self.varint()? as usize;
        let s = self
            .shape
            .get(self.pos..self.pos.saturating_add(n))
            .ok_or_else(|| self.bad("string runs past the shape"))?;
        self.pos += n;
        Ok(s)
    }

    fn str(&mut self) -> Result<&'a str, DeError> {
        let b = self.bytes()?;
        std::str::from_utf8(b).map_err(|_| self.bad("string is not UTF-8"))
    }

    #[inline]
    fn num(&mut self) -> Result<u64, DeError> {
        if self.num >= self.num_end {
            return Err(self.bad("row has too few numbers"));
        }
        let v = self.v.nums[self.num];
        self.num += 1;
        Ok(v)
    }

    /// Takes the next child row (and steps over its subtree).
    fn take_child(&mut self) -> Result<usize, DeError> {
        let c = self.child;
        if c >= self.v.shapes.len() {
            return Err(self.bad("missing child row"));
        }
        self.child = self.v.subtree_end[c] as usize;
        Ok(c)
    }

    /// If the next op is ROW, a deserializer for that child row.
    fn enter_row(&mut self) -> Result<Option<De<'v, 'a>>, DeError> {
        if self.peek()? != OP_ROW {
            return Ok(None);
        }
        self.pos += 1;
        let c = self.take_child()?;
        Ok(Some(De::at(self.v, self.proj, c)))
    }

    /// Steps over one value: its ops, numbers and child rows.
    fn skip(&mut self) -> Result<(), DeError> {
        match self.op()? {
            OP_MAP => {
                let n = self.varint()?;
                for _ in 0..n {
                    self.skip()?;
                    self.skip()?;
                }
            }
            OP_STR | OP_BYTES => {
                self.bytes()?;
            }
            OP_TRUE | OP_FALSE | OP_NONE | OP_UNIT => {}
            OP_SOME => self.skip()?,
            OP_UINT | OP_SINT | OP_F64 | OP_F32 => {
                self.num()?;
            }
            OP_SEQ => {
                let n = self.varint()?;
                for _ in 0..n {
                    self.skip()?;
                }
            }
            OP_ROWS => {
                let n = self.num()?;
                for _ in 0..n {
                    self.take_child()?;
                }
            }
            OP_ROW => {
                self.take_child()?;
            }
            _ => return Err(self.bad("unknown op")),
        }
        Ok(())
    }

    /// Whether the value at `pos` (after any SOMEs) lives in child rows.
    fn value_in_rows(&self) -> bool {
        let mut p = self.pos;
        while self.shape.get(p) == Some(&OP_SOME) {
            p += 1;
        }
        matches!(self.shape.get(p), Some(&OP_ROW) | Some(&OP_ROWS))
    }

    fn selected(&self, row: usize) -> bool {
        match &self.proj.select {
            Some(s) => {
                field_str(self.v.shapes[row], &s.field).is_some_and(|v| s.values.contains(v))
            }
            None => true,
        }
    }
}

macro_rules! forward_row {
    ($self:ident, $method:ident, $($arg:expr),*) => {
        if let Some(mut c) = $self.enter_row()? {
            return c.$method($($arg),*);
        }
    };
}

impl<'de, 'v> de::Deserializer<'de> for &mut De<'v, 'de> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        forward_row!(self, deserialize_any, visitor);
        let at = self.pos;
        match self.op()? {
            OP_MAP => {
                let n = self.varint()?;
                // Row 0's outermost map holds the sections a projection picks from.
                let top = self.row == 0 && at == 0;
                visitor.visit_map(MapAcc {
                    de: self,
                    left: n,
                    top,
                })
            }
            OP_STR => visitor.visit_borrowed_str(self.str()?),
            OP_BYTES => visitor.visit_borrowed_bytes(self.bytes()?),
            OP_TRUE => visitor.visit_bool(true),
            OP_FALSE => visitor.visit_bool(false),
            OP_NONE => visitor.visit_none(),
            OP_SOME => visitor.visit_some(self),
            OP_UNIT => visitor.visit_unit(),
            OP_UINT => visitor.visit_u64(self.num()?),
            OP_SINT => visitor.visit_i64(self.num()? as i64),
            OP_F64 => visitor.visit_f64(f64::from_bits(self.num()?)),
            OP_F32 => visitor.visit_f32(f32::from_bits(self.num()? as u32)),
            OP_SEQ => {
                let n = self.varint()?;
                visitor.visit_seq(SeqAcc { de: self, left: n })
            }
            OP_ROWS => {
                let n = self.num()?;
                let select = std::mem::take(&mut self.select_next);
                visitor.visit_seq(RowsAcc {
                    de: self,
                    left: n,
                    select,
                })
            }
            _ => Err(self.bad("unknown op")),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        forward_row!(self, deserialize_option, visitor);
        match self.peek()? {
            OP_NONE => {
                self.pos += 1;
                visitor.visit_none()
            }
            OP_SOME => {
                self.pos += 1;
                visitor.visit_some(self)
            }
            _ => visitor.visit_some(self),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        forward_row!(self, deserialize_enum, name, variants, visitor);
        match self.peek()? {
            OP_STR => {
                self.pos += 1;
                let s = self.str()?;
                visitor.visit_enum(s.into_deserializer())
            }
            OP_MAP => {
                self.pos += 1;
                if self.varint()? != 1 {
                    return Err(self.bad("enum map with more than one entry"));
                }
                visitor.visit_enum(EnumAcc { de: self })
            }
            _ => Err(self.bad("expected an enum")),
        }
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Field and variant names as bytes: serde's derived visitors match
        // them without a UTF-8 check (a fifth of the read time otherwise).
        if self.peek()? == OP_STR {
            self.pos += 1;
            return visitor.visit_borrowed_bytes(self.bytes()?);
        }
        self.deserialize_any(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.skip()?;
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map struct
    }
}

struct MapAcc<'d, 'v, 'a> {
    de: &'d mut De<'v, 'a>,
    left: u64,
    top: bool,
}

impl<'de> de::MapAccess<'de> for MapAcc<'_, '_, 'de> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        loop {
            if self.left == 0 {
                return Ok(None);
            }
            self.left -= 1;
            if self.top && self.de.peek()? == OP_STR {
                let save = self.de.pos;
                self.de.pos += 1;
                let key = self.de.str()?;
                let keep = !self.de.value_in_rows() || self.de.proj.keeps(key);
                if !keep {
                    self.de.skip()?;
                    continue;
                }
                self.de.select_next = self.de.proj.select.as_ref().is_some_and(|s| s.seq == key);
                self.de.pos = save;
            }
            return seed.deserialize(&mut *self.de).map(Some);
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left as usize)
    }
}

struct SeqAcc<'d, 'v, 'a> {
    de: &'d mut De<'v, 'a>,
    left: u64,
}

impl<'de> de::SeqAccess<'de> for SeqAcc<'_, '_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.left as usize)
    }
}

struct RowsAcc<'d, 'v, 'a> {
    de: &'d mut De<'v, 'a>,
    left: u64,
    select: bool,
}

impl<'de> de::SeqAccess<'de> for RowsAcc<'_, '_, 'de> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        while self.left > 0 {
            self.left -= 1;
            let c = self.de.take_child()?;
            if self.select && !self.de.selected(c) {
                continue;
            }
            let mut child = De::at(self.de.v, self.de.proj, c);
            return seed.deserialize(&mut child).map(Some);
        }
        Ok(None)
    }

    fn size_hint(&self) -> Option<usize> {
        (!self.select).then_some(self.left as usize)
    }
}

struct EnumAcc<'d, 'v, 'a> {
    de: &'d mut De<'v, 'a>,
}

impl<'de, 'd, 'v> de::EnumAccess<'de> for EnumAcc<'d, 'v, 'de> {
    type Error = DeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), DeError> {
        let v = seed.deserialize(&mut *self.de)?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for EnumAcc<'_, '_, 'de> {
    type Error = DeError;

    fn unit_variant(self) -> Result<(), DeError> {
        de::Deserialize::deserialize(&mut *self.de)
    }
    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, DeError> {
        seed.deserialize(&mut *self.de)
    }
    fn tuple_variant<V: Visitor<'de>>(self, _: usize, visitor: V) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }
    fn struct_variant<V: Visitor<'de>>(
        self,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        de::Deserializer::deserialize_any(&mut *self.de, visitor)
    }
}
