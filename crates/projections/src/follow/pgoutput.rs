//! The messages of Postgres's logical replication protocol (`pgoutput`, protocol version 1)
//! that following needs: a transaction's begin and commit, the description of a table
//! (relation), and a row inserted, updated or deleted, with its columns in text form.
//! Messages a follower has no use for (origins, types, logical messages) are read and skipped;
//! truncation is reported so that it can be refused, never silently ignored.

use std::fmt;

/// A position in the old system's write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl std::str::FromStr for Lsn {
    type Err = DecodeError;

    /// Postgres's text form, `X/Y` in hexadecimal.
    fn from_str(text: &str) -> Result<Self, DecodeError> {
        let bad = || DecodeError(format!("not a WAL position: {text:?}"));
        let (high, low) = text.split_once('/').ok_or_else(bad)?;
        let high = u64::from_str_radix(high, 16).map_err(|_| bad())?;
        let low = u64::from_str_radix(low, 16).map_err(|_| bad())?;
        if high > u64::from(u32::MAX) || low > u64::from(u32::MAX) {
            return Err(bad());
        }
        Ok(Self(high << 32 | low))
    }
}

/// A message that does not read as the protocol says.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an unreadable logical replication message: {0}")]
pub struct DecodeError(String);

impl DecodeError {
    pub(super) fn new(what: String) -> Self {
        Self(what)
    }
}

/// The elements of a one-dimensional array in Postgres's text form (`{a,"b c",NULL}`), as the
/// stream sends an array column: `None` for a NULL element.
///
/// # Errors
/// Text that is not such an array.
pub fn text_array(text: &str) -> Result<Vec<Option<String>>, DecodeError> {
    let bad = |why: &str| DecodeError(format!("{why}: {text:?}"));
    let inner = text
        .strip_prefix('{')
        .and_then(|rest| rest.strip_suffix('}'))
        .ok_or_else(|| bad("not an array"))?;
    let mut elements = Vec::new();
    if inner.is_empty() {
        return Ok(elements);
    }
    let mut chars = inner.chars().peekable();
    loop {
        let element = if chars.peek() == Some(&'"') {
            chars.next();
            let mut element = String::new();
            loop {
                match chars.next() {
                    Some('"') => break,
                    Some('\\') => {
                        element.push(chars.next().ok_or_else(|| bad("an unfinished escape"))?)
                    }
                    Some(c) => element.push(c),
                    None => return Err(bad("an unfinished quoted element")),
                }
            }
            Some(element)
        } else {
            let mut element = String::new();
            while let Some(c) = chars.peek().copied().filter(|c| *c != ',') {
                if matches!(c, '{' | '}' | '"') {
                    return Err(bad("more than one dimension, or a stray quote"));
                }
                element.push(c);
                chars.next();
            }
            (element != "NULL").then_some(element)
        };
        elements.push(element);
        match chars.next() {
            None => return Ok(elements),
            Some(',') => {}
            Some(_) => return Err(bad("text after a quoted element")),
        }
    }
}

/// One column's value in a row image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// A large value the update did not change, which the protocol does not send again.
    Unchanged,
    Text(String),
}

/// A table as the stream describes it before its first row (and again after a change).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub schema: String,
    pub table: String,
    pub columns: Vec<String>,
}

/// One message of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        /// Where the transaction's commit record is.
        final_lsn: Lsn,
        /// Its commit time, in microseconds since 2000-01-01 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        commit_lsn: Lsn,
        /// The end of the commit record: where a follower that applied it resumes.
        end_lsn: Lsn,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        /// The key columns (or the whole row, under `REPLICA IDENTITY FULL`); the others null.
        old: Vec<Value>,
    },
    Truncate {
        relations: Vec<u32>,
    },
    /// A message a follower does not use (origin, type, logical message).
    Other,
}

/// A cursor over one message's bytes.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.bytes.len() < n {
            return Err(DecodeError(format!(
                "{n} bytes wanted, {} left",
                self.bytes.len()
            )));
        }
        let (taken, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(taken)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let b = self.take(8)?;
        let mut array = [0; 8];
        array.copy_from_slice(b);
        Ok(u64::from_be_bytes(array))
    }

    /// A NUL-terminated string.
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .bytes
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| DecodeError("a string without its terminating NUL".into()))?;
        let text = utf8(self.take(end)?)?;
        self.take(1)?;
        Ok(text)
    }

    /// A row image: its column count, then each column.
    fn tuple(&mut self) -> Result<Vec<Value>, DecodeError> {
        let count = self.u16()?;
        (0..count)
            .map(|_| match self.u8()? {
                b'n' => Ok(Value::Null),
                b'u' => Ok(Value::Unchanged),
                b't' => {
                    let len = self.u32()? as usize;
                    Ok(Value::Text(utf8(self.take(len)?)?))
                }
                kind => Err(DecodeError(format!("a column of kind {:?}", kind as char))),
            })
            .collect()
    }
}

fn utf8(bytes: &[u8]) -> Result<String, DecodeError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError("text that is not UTF-8".into()))
}

/// Reads one message (one row of `pg_logical_slot_peek_binary_changes`).
///
/// # Errors
/// A message cut short or of an unknown kind.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { bytes };
    let message = match r.u8()? {
        b'B' => Message::Begin {
            final_lsn: Lsn(r.u64()?),
            commit_time: r.u64()? as i64,
            xid: r.u32()?,
        },
        b'C' => {
            r.u8()?; // flags, unused
            Message::Commit {
                commit_lsn: Lsn(r.u64()?),
                end_lsn: Lsn(r.u64()?),
            }
        }
        b'R' => {
            let id = r.u32()?;
            let schema = r.string()?;
            let table = r.string()?;
            r.u8()?; // replica identity setting
            let count = r.u16()?;
            let mut columns = Vec::with_capacity(usize::from(count));
            for _ in 0..count {
                r.u8()?; // flags: part of the key
                columns.push(r.string()?);
                r.u32()?; // type oid
                r.u32()?; // type modifier
            }
            Message::Relation(Relation {
                id,
                schema,
                table,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            kind(&mut r, b"N", "an insert")?;
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            if kind(&mut r, b"KON", "an update")? != b'N' {
                r.tuple()?; // the old key or row, not needed: the new row says it all
                kind(&mut r, b"N", "an update's new row")?;
            }
            Message::Update {
                relation,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            kind(&mut r, b"KO", "a delete")?;
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let count = r.u32()?;
            r.u8()?; // options
            let relations = (0..count).map(|_| r.u32()).collect::<Result<_, _>>()?;
            Message::Truncate { relations }
        }
        b'O' | b'Y' | b'M' => Message::Other,
        kind => return Err(DecodeError(format!("a message of kind {:?}", kind as char))),
    };
    Ok(message)
}

/// The next byte, a tuple's kind, which must be one of `allowed` (in `what`).
fn kind(r: &mut Reader<'_>, allowed: &[u8], what: &str) -> Result<u8, DecodeError> {
    let kind = r.u8()?;
    if allowed.contains(&kind) {
        Ok(kind)
    } else {
        Err(DecodeError(format!(
            "{what} with a tuple of kind {:?}",
            kind as char
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_arrays_read_as_postgres_writes_them() {
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(text_array("{}").unwrap(), Vec::<Option<String>>::new());
        assert_eq!(
            text_array(r#"{ann,"b c","q\"d","back\\slash",NULL,"NULL",été}"#).unwrap(),
            [
                some("ann"),
                some("b c"),
                some("q\"d"),
                some("back\\slash"),
                None,
                some("NULL"),
                some("été")
            ]
        );
        for bad in ["", "ann", "{ann", r#"{"open}"#, "{{a},{b}}", r#"{"a"b}"#] {
            assert!(text_array(bad).is_err(), "{bad}");
        }
    }

    fn tuple(columns: &[Option<&str>]) -> Vec<u8> {
        let mut bytes = u16::try_from(columns.len()).unwrap().to_be_bytes().to_vec();
        for column in columns {
            match column {
                None => bytes.push(b'n'),
                Some(text) => {
                    bytes.push(b't');
                    bytes.extend(u32::try_from(text.len()).unwrap().to_be_bytes());
                    bytes.extend(text.as_bytes());
                }
            }
        }
        bytes
    }

    #[test]
    fn positions_read_and_print_as_postgres_writes_them() {
        let lsn: Lsn = "16/B374D848".parse().unwrap();
        assert_eq!(lsn, Lsn(0x16_B374_D848));
        assert_eq!(lsn.to_string(), "16/B374D848");
        assert!("16".parse::<Lsn>().is_err());
        assert!("1/100000000".parse::<Lsn>().is_err());
    }

    #[test]
    fn an_update_with_its_old_key_reads_as_its_new_row() {
        let mut bytes = vec![b'U'];
        bytes.extend(7_u32.to_be_bytes());
        bytes.push(b'K');
        bytes.extend(tuple(&[Some("k")]));
        bytes.push(b'N');
        bytes.extend(tuple(&[Some("k"), None, Some("é'\"")]));
        assert_eq!(
            decode(&bytes).unwrap(),
            Message::Update {
                relation: 7,
                new: vec![
                    Value::Text("k".into()),
                    Value::Null,
                    Value::Text("é'\"".into())
                ],
            }
        );
    }

    #[test]
    fn a_message_cut_short_is_an_error_not_a_panic() {
        let mut bytes = vec![b'I'];
        bytes.extend(7_u32.to_be_bytes());
        bytes.push(b'N');
        bytes.extend(tuple(&[Some("abc")]));
        for end in 0..bytes.len() {
            assert!(decode(&bytes[..end]).is_err(), "{end}");
        }
        assert!(decode(b"Z").is_err());
    }
}
