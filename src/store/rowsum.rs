//! Row checksums (docs/DESIGN.md "Row checksums"). SQLite checks none of the bytes it stores:
//! a flipped bit in a value reads back as another owner or mode. Every row of a table the
//! restore trusts therefore ends with `sum`, a 16-byte BLAKE3 of the table's name and the
//! row's values in column order; reading a row recomputes it, and a row that does not match
//! is damage.
//!
//! The sum covers the raw SQLite values, not their Rust meaning, so it is checked before any
//! value is interpreted, and one function serves every table.

use rusqlite::types::{Value, ValueRef};
use rusqlite::Row;

pub const SUM_LEN: usize = 16;

/// The damage a row check found; carried through rusqlite as a user error so that every
/// query's error mapping turns it into `Error::Damaged` (see `index::db`).
#[derive(Debug)]
pub struct RowDamaged(pub String);

impl std::fmt::Display for RowDamaged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for RowDamaged {}

pub fn damaged(what: impl Into<String>) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Null,
        Box::new(RowDamaged(what.into())),
    )
}

pub fn sum<'a>(table: &str, values: impl IntoIterator<Item = ValueRef<'a>>) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(table.as_bytes());
    h.update(&[0]);
    for v in values {
        match v {
            ValueRef::Null => h.update(&[0]),
            ValueRef::Integer(i) => h.update(&[1]).update(&i.to_le_bytes()),
            ValueRef::Real(r) => h.update(&[2]).update(&r.to_le_bytes()),
            ValueRef::Text(t) => h
                .update(&[3])
                .update(&(t.len() as u64).to_le_bytes())
                .update(t),
            ValueRef::Blob(b) => h
                .update(&[4])
                .update(&(b.len() as u64).to_le_bytes())
                .update(b),
        };
    }
    h.finalize().as_bytes()[..SUM_LEN].to_vec()
}

/// `values` followed by their sum: the parameters of an insert of the whole row.
pub fn sealed(table: &str, mut values: Vec<Value>) -> Vec<Value> {
    let s = sum(table, values.iter().map(ValueRef::from));
    values.push(Value::Blob(s));
    values
}

/// Checks the row's first `n` columns against column `n` (its sum). `what` names the row for
/// the message.
pub fn check(
    row: &Row,
    table: &str,
    n: usize,
    what: impl FnOnce() -> String,
) -> rusqlite::Result<()> {
    let mut values = Vec::with_capacity(n);
    for i in 0..n {
        values.push(row.get_ref(i)?);
    }
    let want = sum(table, values);
    match row.get_ref(n)? {
        ValueRef::Blob(b) if b == want.as_slice() => Ok(()),
        ValueRef::Null => Err(damaged(format!("{}: no checksum", what()))),
        _ => Err(damaged(format!(
            "{}: the row does not match its checksum",
            what()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_depends_on_table_types_and_every_value() {
        let a = sum("t", [ValueRef::Integer(1), ValueRef::Blob(b"x")]);
        assert_eq!(a.len(), SUM_LEN);
        assert_ne!(a, sum("u", [ValueRef::Integer(1), ValueRef::Blob(b"x")]));
        assert_ne!(a, sum("t", [ValueRef::Integer(1), ValueRef::Text(b"x")]));
        assert_ne!(a, sum("t", [ValueRef::Integer(2), ValueRef::Blob(b"x")]));
        assert_ne!(a, sum("t", [ValueRef::Integer(1), ValueRef::Null]));
        // Lengths are framed: moving a byte across a boundary changes the sum.
        assert_ne!(
            sum("t", [ValueRef::Blob(b"ab"), ValueRef::Blob(b"c")]),
            sum("t", [ValueRef::Blob(b"a"), ValueRef::Blob(b"bc")])
        );
    }
}
