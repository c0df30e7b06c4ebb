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
    with_row_bytes(|buf| {
        begin(buf, table);
        values.into_iter().for_each(|v| put(buf, v));
        digest(buf).to_vec()
    })
}

/// The row's bytes are framed into one buffer and hashed at once: the same BLAKE3 as feeding
/// them piece by piece (so every stored sum stays valid), at a fraction of the cost for rows of
/// a hundred bytes, which a no-change snapshot reads once per path.
fn with_row_bytes<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    thread_local! {
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with(|b| match b.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

fn begin(buf: &mut Vec<u8>, table: &str) {
    buf.clear();
    buf.extend_from_slice(table.as_bytes());
    buf.push(0);
}

fn put(buf: &mut Vec<u8>, v: ValueRef) {
    match v {
        ValueRef::Null => buf.push(0),
        ValueRef::Integer(i) => {
            buf.push(1);
            buf.extend_from_slice(&i.to_le_bytes());
        }
        ValueRef::Real(r) => {
            buf.push(2);
            buf.extend_from_slice(&r.to_le_bytes());
        }
        ValueRef::Text(t) => {
            buf.push(3);
            buf.extend_from_slice(&(t.len() as u64).to_le_bytes());
            buf.extend_from_slice(t);
        }
        ValueRef::Blob(b) => {
            buf.push(4);
            buf.extend_from_slice(&(b.len() as u64).to_le_bytes());
            buf.extend_from_slice(b);
        }
    }
}

fn digest(buf: &[u8]) -> [u8; SUM_LEN] {
    blake3::hash(buf).as_bytes()[..SUM_LEN]
        .try_into()
        .expect("SUM_LEN bytes")
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
    let want = with_row_bytes(|buf| {
        begin(buf, table);
        for i in 0..n {
            put(buf, row.get_ref(i)?);
        }
        Ok::<_, rusqlite::Error>(digest(buf))
    })?;
    match row.get_ref(n)? {
        ValueRef::Blob(b) if b == want => Ok(()),
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
        // Sums written before are still valid: the sum of a fixed row never changes.
        let fixed = sum(
            "entries",
            [
                ValueRef::Blob(b"usr/bin/ls"),
                ValueRef::Integer(-5),
                ValueRef::Null,
                ValueRef::Real(1.5),
                ValueRef::Text(b"txt"),
            ],
        );
        let hex: String = fixed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "9bd1248069324d361e5fb5da21ffba80");
        // Lengths are framed: moving a byte across a boundary changes the sum.
        assert_ne!(
            sum("t", [ValueRef::Blob(b"ab"), ValueRef::Blob(b"c")]),
            sum("t", [ValueRef::Blob(b"a"), ValueRef::Blob(b"bc")])
        );
    }
}
