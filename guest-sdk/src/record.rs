//! The author-facing record types: [`Record`] (a borrowed input), [`Output`]
//! (an owned output) and [`Config`].

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use runnel_abi::{Frame, RecordRef};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// One input record, borrowed from the batch the host sent.
#[derive(Clone, Copy)]
pub struct Record<'a> {
    raw: RecordRef<'a>,
    /// The batch's data, when outputs may share it (maps and scorers).
    batch: Option<&'a Arc<Vec<u8>>>,
}

impl fmt::Debug for Record<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.raw.fmt(f)
    }
}

impl<'a> Record<'a> {
    pub(crate) fn new(raw: RecordRef<'a>) -> Self {
        Self { raw, batch: None }
    }

    /// A record of `batch`, whose outputs can share the batch's bytes.
    pub(crate) fn in_batch(raw: RecordRef<'a>, batch: &'a Arc<Vec<u8>>) -> Self {
        Self {
            raw,
            batch: Some(batch),
        }
    }

    /// The record's key, if it has one.
    pub fn key(&self) -> Option<&'a [u8]> {
        self.raw.key()
    }

    /// The record's value; `None` for a tombstone.
    pub fn value(&self) -> Option<&'a [u8]> {
        self.raw.value()
    }

    /// The key as UTF-8 text, or an error saying why it is not.
    pub fn key_str(&self) -> Result<&'a str> {
        utf8(self.key(), "key")
    }

    /// The value as UTF-8 text, or an error saying why it is not.
    pub fn value_str(&self) -> Result<&'a str> {
        utf8(self.value(), "value")
    }

    /// The value parsed as JSON. Borrowing types (`&str`,
    /// `serde_json::value::RawValue`) borrow from the record.
    pub fn value_json<T: Deserialize<'a>>(&self) -> Result<T> {
        let value = self
            .value()
            .ok_or_else(|| Error::msg("the record has no value (a tombstone), expected JSON"))?;
        serde_json::from_slice(value)
            .map_err(|e| Error::msg(format!("the value is not the JSON expected: {e}")))
    }

    /// The headers in order, as `(name, value)`; a `None` value is a null header.
    pub fn headers(&self) -> impl Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a {
        // The host validated the frame, so every item is Ok.
        self.raw.headers().map_while(|h| h.ok())
    }

    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v)
    }

    /// The partition the record was read from.
    pub fn partition(&self) -> i32 {
        self.raw.partition()
    }

    /// The record's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.raw.offset()
    }

    /// The record's timestamp, in milliseconds since the Unix epoch.
    pub fn timestamp_ms(&self) -> Option<i64> {
        self.raw.timestamp_ms()
    }

    /// An output with this record's key, value and headers: the identity map.
    ///
    /// In a map or scorer the key and value are not copied: the output
    /// shares them with the batch they came in, which therefore stays in
    /// memory as long as the output does (normally until the call returns).
    /// Elsewhere (a record built for a native test) they are copied.
    #[inline]
    pub fn to_output(&self) -> Output {
        Output {
            key: self.key().map(|b| self.share(b)),
            value: self.value().map(|b| self.share(b)),
            headers: if self.raw.header_count() == 0 {
                Vec::new()
            } else {
                self.headers()
                    .map(|(n, v)| (n.to_owned(), v.map(<[u8]>::to_vec)))
                    .collect()
            },
            timestamp_ms: None,
        }
    }

    /// `bytes`, a part of this record, as output bytes: a span of the batch
    /// when there is one to share, else a copy.
    #[inline]
    fn share(&self, bytes: &[u8]) -> Bytes {
        if let Some(batch) = self.batch {
            let start = (bytes.as_ptr() as usize).wrapping_sub(batch.as_ptr() as usize);
            if start <= batch.len() && bytes.len() <= batch.len() - start {
                // A batch holds at most 4 GiB: its index is u32.
                if let (Ok(start), Ok(end)) =
                    (u32::try_from(start), u32::try_from(start + bytes.len()))
                {
                    return Bytes::Shared {
                        batch: Arc::clone(batch),
                        start,
                        end,
                    };
                }
            }
        }
        Bytes::Owned(bytes.to_vec())
    }
}

/// The bytes of an output's key or value: its own, or a span of the input
/// batch it was forwarded from (see [`Record::to_output`]).
#[derive(Clone)]
enum Bytes {
    Owned(Vec<u8>),
    Shared {
        batch: Arc<Vec<u8>>,
        start: u32,
        end: u32,
    },
}

impl Bytes {
    #[inline]
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Owned(v) => v,
            Bytes::Shared { batch, start, end } => &batch[*start as usize..*end as usize],
        }
    }
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Bytes {}

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.as_slice().fmt(f)
    }
}

fn utf8<'a>(bytes: Option<&'a [u8]>, what: &str) -> Result<&'a str> {
    let bytes = bytes.ok_or_else(|| Error::msg(format!("the record has no {what}")))?;
    std::str::from_utf8(bytes).map_err(|e| Error::msg(format!("the {what} is not UTF-8: {e}")))
}

/// The header an output picks its output topic with (see [`Output::to`]);
/// the host reads it and does not write it.
pub const OUTPUT_HEADER: &str = "runnel-output";

/// A record to write to the output topic.
///
/// Its key defaults to none (a map that wants to keep the input's key says so
/// with [`Output::with_key`]); its timestamp to the input record's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    key: Option<Bytes>,
    value: Option<Bytes>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    timestamp_ms: Option<i64>,
}

impl Output {
    /// An output with this value and no key.
    pub fn new(value: impl Into<Vec<u8>>) -> Self {
        Self {
            value: Some(Bytes::Owned(value.into())),
            ..Self::default()
        }
    }

    /// An output whose value is `value` serialised as JSON.
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self> {
        let bytes = serde_json::to_vec(value)
            .map_err(|e| Error::msg(format!("cannot serialise the output as JSON: {e}")))?;
        Ok(Self::new(bytes))
    }

    /// An output with no value: a tombstone on a compacted topic.
    pub fn tombstone() -> Self {
        Self::default()
    }

    /// Sets the key.
    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(Bytes::Owned(key.into()));
        self
    }

    /// Sets the key to `key`, or to none.
    pub fn with_key_opt(mut self, key: Option<&[u8]>) -> Self {
        self.key = key.map(|k| Bytes::Owned(k.to_vec()));
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), Some(value.into())));
        self
    }

    /// Sends this output to the deployment's output topic named `topic`
    /// instead of its first one (a deployment may name up to 8). A name
    /// that is not one of them fails the record as a whole, none of its
    /// outputs produced: a dead letter, not a trap.
    pub fn to(self, topic: &str) -> Self {
        self.route(topic.as_bytes().to_vec())
    }

    /// Sends this output to the deployment's output topic at `index` (`0`
    /// is the first, the default): see [`Output::to`].
    pub fn to_index(self, index: usize) -> Self {
        self.route(index.to_string().into_bytes())
    }

    fn route(mut self, choice: Vec<u8>) -> Self {
        self.headers.retain(|(n, _)| n != OUTPUT_HEADER);
        self.headers.push((OUTPUT_HEADER.to_owned(), Some(choice)));
        self
    }

    /// Sets the timestamp (milliseconds since the Unix epoch).
    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self
    }

    #[inline]
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_ref().map(Bytes::as_slice)
    }

    #[inline]
    pub fn value(&self) -> Option<&[u8]> {
        self.value.as_ref().map(Bytes::as_slice)
    }

    pub fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> {
        self.headers.iter().map(|(n, v)| (n.as_str(), v.as_deref()))
    }

    pub fn timestamp_ms(&self) -> Option<i64> {
        self.timestamp_ms
    }

    /// Appends this output to a packed batch.
    #[inline]
    pub(crate) fn encode(&self, into: &mut runnel_abi::BatchBuilder) {
        let frame = |headers| Frame {
            partition: -1,
            offset: -1,
            timestamp_ms: self.timestamp_ms,
            key: self.key(),
            value: self.value(),
            headers,
        };
        if self.headers.is_empty() {
            into.push(&frame(&[]));
        } else {
            let pairs: Vec<(&str, Option<&[u8]>)> = self.headers().collect();
            into.push(&frame(&pairs));
        }
    }
}

/// The deployment's config: key/value pairs given with `--config k=v`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Config {
    entries: Vec<(String, String)>,
}

impl Config {
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Self { entries }
    }

    /// The value of `key`, if set (the last one wins when set twice).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key`, or an error naming the missing key.
    pub fn require(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| {
            Error::msg(format!(
                "missing config `{key}` (set it with --config {key}=...)"
            ))
        })
    }

    /// The value of `key` parsed as `T`, or `default` when unset; an error
    /// names the key and the value that did not parse.
    pub fn parse_or<T: FromStr>(&self, key: &str, default: T) -> Result<T>
    where
        T::Err: fmt::Display,
    {
        match self.get(key) {
            None => Ok(default),
            Some(raw) => raw
                .parse()
                .map_err(|e| Error::msg(format!("config `{key}` = {raw:?} is not valid: {e}"))),
        }
    }

    /// Every entry, in the order given.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runnel_abi::{BatchBuilder, BatchRef};

    fn with_record<R>(value: Option<&[u8]>, f: impl FnOnce(Record<'_>) -> R) -> R {
        let mut b = BatchBuilder::default();
        b.push(&Frame {
            partition: 4,
            offset: 9,
            timestamp_ms: Some(77),
            key: Some(b"key-1"),
            value,
            headers: &[("trace", Some(b"abc")), ("empty", None)],
        });
        let view = BatchRef::new(b.data(), b.index());
        f(Record::new(view.get(0).unwrap()))
    }

    #[test]
    fn accessors_borrow_the_batch() {
        with_record(Some(br#"{"x": 3, "name": "ok"}"#), |r| {
            assert_eq!(r.key_str().unwrap(), "key-1");
            assert_eq!(
                (r.partition(), r.offset(), r.timestamp_ms()),
                (4, 9, Some(77))
            );
            assert_eq!(r.header("trace"), Some(&b"abc"[..]));
            assert_eq!(r.header("empty"), None);
            assert_eq!(r.headers().count(), 2);
            #[derive(Deserialize)]
            struct V<'a> {
                x: i64,
                name: &'a str,
            }
            let v: V<'_> = r.value_json().unwrap();
            assert_eq!((v.x, v.name), (3, "ok"));
        });
    }

    #[test]
    fn helpers_say_what_is_wrong() {
        with_record(None, |r| {
            assert_eq!(
                r.value_str().unwrap_err().message(),
                "the record has no value"
            );
            let e = r.value_json::<serde_json::Value>().unwrap_err();
            assert!(e.message().contains("tombstone"), "{e}");
        });
        with_record(Some(b"\xff\xfe"), |r| {
            assert!(
                r.value_str()
                    .unwrap_err()
                    .message()
                    .starts_with("the value is not UTF-8")
            );
        });
        with_record(Some(b"not json"), |r| {
            let e = r.value_json::<serde_json::Value>().unwrap_err();
            assert!(
                e.message()
                    .starts_with("the value is not the JSON expected"),
                "{e}"
            );
        });
    }

    #[test]
    fn identity_output_keeps_everything() {
        with_record(Some(b"v"), |r| {
            let out = r.to_output();
            assert_eq!(out.key(), Some(&b"key-1"[..]));
            assert_eq!(out.value(), Some(&b"v"[..]));
            assert_eq!(out.headers().count(), 2);
        });
    }

    #[test]
    fn forwarded_bytes_are_shared_with_the_batch_not_copied() {
        let mut b = BatchBuilder::default();
        b.push(&Frame {
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: Some(b"k"),
            value: Some(b"value"),
            headers: &[],
        });
        let (data, index) = b.into_parts();
        let data = Arc::new(data);
        let out = Record::in_batch(BatchRef::new(&data, &index).get(0).unwrap(), &data).to_output();
        assert!(matches!(out.value, Some(Bytes::Shared { .. })));
        assert_eq!(Arc::strong_count(&data), 3, "key and value share the batch");
        // Equal to the same output built by copying, and still valid once
        // every other owner of the batch is gone.
        let copied = Output::new(&b"value"[..]).with_key(&b"k"[..]);
        drop(data);
        assert_eq!(out, copied);
        assert_eq!(format!("{out:?}"), format!("{copied:?}"));
        // A slice that is not in the batch is copied.
        let other = vec![1u8, 2, 3];
        let batch = Arc::new(vec![0u8; 8]);
        let raw = BatchRef::new(&[0; 32], &[0]).get(0).unwrap();
        let r = Record::in_batch(raw, &batch);
        assert!(matches!(r.share(&other), Bytes::Owned(v) if v == other));
        assert!(matches!(
            r.share(&batch[2..5]),
            Bytes::Shared {
                start: 2,
                end: 5,
                ..
            }
        ));
    }

    #[test]
    fn config_lookups() {
        let c = Config::new(vec![
            ("min".into(), "1.5".into()),
            ("min".into(), "2".into()),
            ("bad".into(), "x".into()),
        ]);
        assert_eq!(c.get("min"), Some("2"));
        assert_eq!(c.parse_or("min", 0.0).unwrap(), 2.0);
        assert_eq!(c.parse_or("absent", 7).unwrap(), 7);
        assert_eq!(
            c.parse_or::<i32>("bad", 0).unwrap_err().message(),
            "config `bad` = \"x\" is not valid: invalid digit found in string"
        );
        assert_eq!(
            c.require("field").unwrap_err().message(),
            "missing config `field` (set it with --config field=...)"
        );
    }
}
