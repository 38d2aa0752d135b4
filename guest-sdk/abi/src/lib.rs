//! The packed record-batch layout of `runnel:stream@0.1.0`, shared by the host
//! and the guest SDK.
//!
//! A batch is one byte buffer holding every record's frame back to back, and an
//! index of where each frame starts. `wit/runnel.wit` documents the frame layout;
//! this crate is its only implementation. It has no dependencies and allocates
//! nothing when decoding: a [`RecordRef`] borrows from the batch.
//!
//! ```
//! use runnel_abi::{BatchBuilder, BatchRef, Frame};
//!
//! let mut batch = BatchBuilder::default();
//! batch.push(&Frame {
//!     partition: 3,
//!     offset: 42,
//!     timestamp_ms: Some(1_700_000_000_000),
//!     key: Some(b"k"),
//!     value: Some(b"hello"),
//!     headers: &[("source", Some(b"test".as_slice()))],
//! });
//! let view = BatchRef::new(batch.data(), batch.index());
//! let record = view.get(0).unwrap();
//! assert_eq!(record.value(), Some(&b"hello"[..]));
//! assert_eq!(record.offset(), 42);
//! assert_eq!(record.headers().next().unwrap().unwrap(), ("source", Some(&b"test"[..])));
//! ```

use std::fmt;

/// Size of the fixed part of a frame.
pub const FRAME_HEADER_LEN: usize = 32;
/// Length field value meaning "absent" (no key, no value, null header value).
pub const ABSENT: u32 = u32::MAX;
/// Timestamp field value meaning "no timestamp".
pub const NO_TIMESTAMP: i64 = i64::MIN;

/// A record to encode. Outputs use `partition: -1` and `offset: -1`.
#[derive(Debug, Clone, Copy)]
pub struct Frame<'a> {
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// Which record of the batch.
    pub record: usize,
    /// What was wrong with it.
    pub reason: &'static str,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "record {} of the batch is malformed: {}",
            self.record, self.reason
        )
    }
}

impl std::error::Error for FrameError {}

/// Builds a packed batch. Reuse one across batches with [`BatchBuilder::clear`]
/// to keep its buffers.
#[derive(Debug, Default, Clone)]
pub struct BatchBuilder {
    data: Vec<u8>,
    index: Vec<u32>,
}

impl BatchBuilder {
    /// A builder with room for `records` records of `bytes` bytes in all.
    pub fn with_capacity(records: usize, bytes: usize) -> Self {
        Self {
            data: Vec::with_capacity(bytes),
            index: Vec::with_capacity(records),
        }
    }

    /// Appends one record.
    ///
    /// # Panics
    ///
    /// If the batch would grow past 4 GiB, or a field past `u32::MAX - 1`
    /// bytes: the index and lengths are `u32`. Callers bound batches well below.
    #[inline(always)]
    pub fn push(&mut self, frame: &Frame<'_>) {
        let start = u32::try_from(self.data.len()).expect("a packed batch is limited to 4 GiB");
        self.index.push(start);
        let key = frame.key.unwrap_or_default();
        let value = frame.value.unwrap_or_default();
        // This runs for every record the host sends, so it must cost about a
        // memcpy: one reservation, then the fixed header built in a register-
        // sized array and copied at once, then the bytes. Headers, which most
        // records lack, are written out of line.
        self.data
            .reserve(FRAME_HEADER_LEN + key.len() + value.len());
        let mut fixed = [0u8; FRAME_HEADER_LEN];
        fixed[0..4].copy_from_slice(&frame.partition.to_le_bytes());
        fixed[4..12].copy_from_slice(&frame.offset.to_le_bytes());
        fixed[12..20].copy_from_slice(&frame.timestamp_ms.unwrap_or(NO_TIMESTAMP).to_le_bytes());
        fixed[20..24].copy_from_slice(&len_field(frame.key).to_le_bytes());
        fixed[24..28].copy_from_slice(&len_field(frame.value).to_le_bytes());
        fixed[28..32].copy_from_slice(&len_u32(frame.headers.len()).to_le_bytes());
        let d = &mut self.data;
        d.extend_from_slice(&fixed);
        d.extend_from_slice(key);
        d.extend_from_slice(value);
        if !frame.headers.is_empty() {
            push_headers(d, frame.headers);
        }
    }

    /// A batch of records with these values and nothing else, at partition
    /// 0 and offsets 0, 1, 2…: for tests.
    pub fn of_values<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Self {
        let mut b = Self::default();
        for (i, value) in values.into_iter().enumerate() {
            b.push(&Frame {
                partition: 0,
                offset: i as i64,
                timestamp_ms: None,
                key: None,
                value: Some(value),
                headers: &[],
            });
        }
        b
    }

    /// Number of records pushed.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Forgets the records from the `len`-th on.
    pub fn truncate(&mut self, len: usize) {
        if let Some(&start) = self.index.get(len) {
            self.data.truncate(start as usize);
            self.index.truncate(len);
        }
    }

    /// Forgets every record, keeping the buffers.
    pub fn clear(&mut self) {
        self.data.clear();
        self.index.clear();
    }

    pub fn data(&self) -> &[u8] {
        &self.data
    }

    pub fn index(&self) -> &[u32] {
        &self.index
    }

    /// A builder over buffers that already hold a packed batch, such as one a
    /// function returned. Nothing is checked here: decode with [`BatchRef`].
    pub fn from_parts(data: Vec<u8>, index: Vec<u32>) -> Self {
        Self { data, index }
    }

    /// The two buffers, to hand over to the canonical ABI.
    pub fn into_parts(self) -> (Vec<u8>, Vec<u32>) {
        (self.data, self.index)
    }

    /// Mutable access to both buffers, for callers that swap them in and out
    /// of a call without reallocating.
    pub fn parts_mut(&mut self) -> (&mut Vec<u8>, &mut Vec<u32>) {
        (&mut self.data, &mut self.index)
    }
}

#[inline(never)]
fn push_headers(d: &mut Vec<u8>, headers: &[(&str, Option<&[u8]>)]) {
    let len: usize = headers
        .iter()
        .map(|(n, v)| 8 + n.len() + v.map_or(0, <[u8]>::len))
        .sum();
    d.reserve(len);
    for (name, value) in headers {
        d.extend_from_slice(&len_u32(name.len()).to_le_bytes());
        d.extend_from_slice(name.as_bytes());
        d.extend_from_slice(&len_field(*value).to_le_bytes());
        if let Some(value) = value {
            d.extend_from_slice(value);
        }
    }
}

#[inline]
fn len_u32(len: usize) -> u32 {
    match u32::try_from(len) {
        Ok(n) if n != ABSENT => n,
        _ => too_long(),
    }
}

#[cold]
fn too_long() -> ! {
    panic!("a record field is limited to 4 GiB - 2 bytes")
}

#[inline]
fn len_field(bytes: Option<&[u8]>) -> u32 {
    bytes.map_or(ABSENT, |b| len_u32(b.len()))
}

/// A packed batch, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct BatchRef<'a> {
    data: &'a [u8],
    index: &'a [u32],
}

impl<'a> BatchRef<'a> {
    pub fn new(data: &'a [u8], index: &'a [u32]) -> Self {
        Self { data, index }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// Decodes record `i`. Every length is checked against the buffer, so a
    /// corrupt batch is an error, never a panic or an out-of-bounds read.
    pub fn get(&self, i: usize) -> Result<RecordRef<'a>, FrameError> {
        let start = *self.index.get(i).ok_or(FrameError {
            record: i,
            reason: "index out of range",
        })?;
        self.decode_at(start)
            .map_err(|reason| FrameError { record: i, reason })
    }

    #[inline]
    fn decode_at(&self, start: u32) -> Result<RecordRef<'a>, &'static str> {
        let frame = self
            .data
            .get(start as usize..)
            .ok_or("frame starts past the end of the data")?;
        RecordRef::decode(frame)
    }

    /// The record `span` says, without decoding it again: `span` is what
    /// [`RecordRef::span`] said of a record decoded from this batch. The
    /// fields are sliced where the span puts them and the headers are not
    /// walked again. `None` if the span does not fit this batch's data (a
    /// span of another batch); a span of another batch that fits gives a
    /// record of garbage whose headers iterate to an error, never a panic.
    #[inline]
    pub fn at(&self, span: Span) -> Option<RecordRef<'a>> {
        let len = |l: u32| if l == ABSENT { 0 } else { l as usize };
        let start = span.start as usize;
        let (key_at, value_at) = (
            start + FRAME_HEADER_LEN,
            start + FRAME_HEADER_LEN + len(span.key),
        );
        let headers_at = value_at + len(span.value);
        let frame = self.data.get(start..headers_at + span.headers as usize)?;
        let field = |at: usize, l: u32| (l != ABSENT).then(|| &self.data[at..at + l as usize]);
        let i64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&frame[at..at + 8]);
            i64::from_le_bytes(x)
        };
        Some(RecordRef {
            partition: read_u32(frame, 0) as i32,
            offset: i64_at(4),
            timestamp_ms: i64_at(12),
            key: field(key_at, span.key),
            value: field(value_at, span.value),
            header_count: span.header_count,
            headers: &self.data[headers_at..headers_at + span.headers as usize],
        })
    }

    /// Decodes every record in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Result<RecordRef<'a>, FrameError>> + '_ {
        let batch = *self;
        self.index.iter().enumerate().map(move |(i, &start)| {
            batch
                .decode_at(start)
                .map_err(|reason| FrameError { record: i, reason })
        })
    }
}

/// Where a decoded record's fields lie in its batch: kept by a caller that
/// decoded (and so checked) a batch once, to view its records again with
/// [`BatchRef::at`] without decoding them again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    start: u32,
    /// The key's and the value's lengths ([`ABSENT`] when absent).
    key: u32,
    value: u32,
    /// The bytes of the headers, and how many there are.
    headers: u32,
    header_count: u32,
}

/// One decoded record, borrowing its batch.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    partition: i32,
    offset: i64,
    timestamp_ms: i64,
    key: Option<&'a [u8]>,
    value: Option<&'a [u8]>,
    header_count: u32,
    headers: &'a [u8],
}

impl fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordRef")
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp_ms", &self.timestamp_ms())
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("value", &self.value.map(String::from_utf8_lossy))
            .field("headers", &self.header_count)
            .finish()
    }
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Splits an optional length-prefixed field off the front of `rest`.
fn take<'a>(rest: &mut &'a [u8], len: u32) -> Result<Option<&'a [u8]>, &'static str> {
    if len == ABSENT {
        return Ok(None);
    }
    let len = len as usize;
    if rest.len() < len {
        return Err("a length runs past the end of the data");
    }
    let (field, tail) = rest.split_at(len);
    *rest = tail;
    Ok(Some(field))
}

impl<'a> RecordRef<'a> {
    #[inline]
    fn decode(frame: &'a [u8]) -> Result<Self, &'static str> {
        // One length check for the fixed header; the reads below are then at
        // constant offsets into an array and need none. This runs once per
        // record in every call, so it is kept to a few loads and compares.
        let (fixed, mut rest) = frame
            .split_first_chunk::<FRAME_HEADER_LEN>()
            .ok_or("frame shorter than its fixed header")?;
        let u32_at = |at: usize| {
            u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]])
        };
        let i64_at = |at: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&fixed[at..at + 8]);
            i64::from_le_bytes(x)
        };
        let partition = u32_at(0) as i32;
        let offset = i64_at(4);
        let timestamp_ms = i64_at(12);
        let key_len = u32_at(20);
        let value_len = u32_at(24);
        let header_count = u32_at(28);
        let key = take(&mut rest, key_len)?;
        let value = take(&mut rest, value_len)?;
        let headers = if header_count == 0 {
            &[]
        } else {
            check_headers(rest, header_count)?
        };
        Ok(Self {
            partition,
            offset,
            timestamp_ms,
            key,
            value,
            header_count,
            headers,
        })
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    pub fn offset(&self) -> i64 {
        self.offset
    }

    pub fn timestamp_ms(&self) -> Option<i64> {
        (self.timestamp_ms != NO_TIMESTAMP).then_some(self.timestamp_ms)
    }

    pub fn key(&self) -> Option<&'a [u8]> {
        self.key
    }

    pub fn value(&self) -> Option<&'a [u8]> {
        self.value
    }

    pub fn header_count(&self) -> usize {
        self.header_count as usize
    }

    /// How many bytes this record's frame takes in its batch: where the next
    /// frame may start at the earliest.
    #[inline]
    pub fn frame_len(&self) -> usize {
        FRAME_HEADER_LEN
            + self.key.map_or(0, <[u8]>::len)
            + self.value.map_or(0, <[u8]>::len)
            + self.headers.len()
    }

    /// Where this record lies in its batch, given where its frame starts
    /// (its index entry), for [`BatchRef::at`].
    #[inline]
    pub fn span(&self, start: u32) -> Span {
        let len = |f: Option<&[u8]>| f.map_or(ABSENT, |f| f.len() as u32);
        Span {
            start,
            key: len(self.key),
            value: len(self.value),
            headers: self.headers.len() as u32,
            header_count: self.header_count,
        }
    }

    /// The headers in order, as `(name, value)`; a `None` value is a null header.
    pub fn headers(&self) -> Headers<'a> {
        Headers {
            rest: self.headers,
            remaining: self.header_count,
        }
    }

    /// Turns this record back into a [`Frame`] whose headers live in `headers`.
    pub fn to_frame<'b>(&self, headers: &'b [(&'b str, Option<&'b [u8]>)]) -> Frame<'b>
    where
        'a: 'b,
    {
        Frame {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms(),
            key: self.key,
            value: self.value,
            headers,
        }
    }
}

/// Walks `count` headers at the front of `rest` and returns the bytes they
/// span. Headers are checked once, when the record is decoded, so that a
/// corrupt frame fails then and not halfway through an author's loop; names
/// are checked for UTF-8 then. Kept out of line: most records have no
/// headers, and the per-record loop stays small without this.
#[inline(never)]
fn check_headers(frame_rest: &[u8], count: u32) -> Result<&[u8], &'static str> {
    let mut rest = frame_rest;
    for _ in 0..count {
        let name_len = read_len(&mut rest)?;
        let name = take(&mut rest, name_len)?.ok_or("a header name cannot be absent")?;
        std::str::from_utf8(name).map_err(|_| "a header name is not UTF-8")?;
        let value_len = read_len(&mut rest)?;
        take(&mut rest, value_len)?;
    }
    Ok(&frame_rest[..frame_rest.len() - rest.len()])
}

fn read_len(rest: &mut &[u8]) -> Result<u32, &'static str> {
    if rest.len() < 4 {
        return Err("a header runs past the end of the data");
    }
    let n = read_u32(rest, 0);
    *rest = &rest[4..];
    Ok(n)
}

/// Iterator over a record's headers. Frames are validated when decoded, so
/// items are `Ok` for any record obtained from [`BatchRef::get`].
#[derive(Debug, Clone)]
pub struct Headers<'a> {
    rest: &'a [u8],
    remaining: u32,
}

impl<'a> Iterator for Headers<'a> {
    type Item = Result<(&'a str, Option<&'a [u8]>), &'static str>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let mut next = || {
            let name_len = read_len(&mut self.rest)?;
            let name = take(&mut self.rest, name_len)?.ok_or("a header name cannot be absent")?;
            let name = std::str::from_utf8(name).map_err(|_| "a header name is not UTF-8")?;
            let value_len = read_len(&mut self.rest)?;
            let value = take(&mut self.rest, value_len)?;
            Ok((name, value))
        };
        let item = next();
        if item.is_err() {
            self.remaining = 0;
        }
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.remaining as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> BatchBuilder {
        let mut b = BatchBuilder::default();
        b.push(&Frame {
            partition: 1,
            offset: 10,
            timestamp_ms: None,
            key: None,
            value: Some(b"v1"),
            headers: &[],
        });
        b.push(&Frame {
            partition: 2,
            offset: 11,
            timestamp_ms: Some(5),
            key: Some(b""),
            value: None,
            headers: &[("a", Some(b"1")), ("b", None)],
        });
        b
    }

    #[test]
    fn frame_len_is_where_the_next_frame_starts() {
        let b = sample();
        let view = BatchRef::new(b.data(), b.index());
        assert_eq!(view.get(0).unwrap().frame_len(), b.index()[1] as usize);
        assert_eq!(
            b.index()[1] as usize + view.get(1).unwrap().frame_len(),
            b.data().len()
        );
    }

    #[test]
    fn a_span_views_its_record_again() {
        let b = sample();
        let view = BatchRef::new(b.data(), b.index());
        for (i, &start) in b.index().iter().enumerate() {
            let r = view.get(i).unwrap();
            let again = view.at(r.span(start)).unwrap();
            assert_eq!(format!("{again:?}"), format!("{r:?}"));
            assert_eq!(
                again.headers().collect::<Vec<_>>(),
                r.headers().collect::<Vec<_>>()
            );
            assert_eq!(again.frame_len(), r.frame_len());
        }
        // A span that runs past the data is refused, not a panic.
        let last = view.get(1).unwrap().span(b.index()[1]);
        let small = BatchRef::new(&b.data()[..b.data().len() - 1], b.index());
        assert!(small.at(last).is_none());
    }

    #[test]
    fn round_trip() {
        let b = sample();
        let view = BatchRef::new(b.data(), b.index());
        assert_eq!(view.len(), 2);
        let r0 = view.get(0).unwrap();
        assert_eq!(
            (r0.partition(), r0.offset(), r0.timestamp_ms()),
            (1, 10, None)
        );
        assert_eq!((r0.key(), r0.value()), (None, Some(&b"v1"[..])));
        assert_eq!(r0.headers().count(), 0);
        let r1 = view.get(1).unwrap();
        assert_eq!(
            (r1.partition(), r1.offset(), r1.timestamp_ms()),
            (2, 11, Some(5))
        );
        assert_eq!((r1.key(), r1.value()), (Some(&b""[..]), None));
        let headers: Vec<_> = r1.headers().map(Result::unwrap).collect();
        assert_eq!(headers, vec![("a", Some(&b"1"[..])), ("b", None)]);
    }

    #[test]
    fn corrupt_frames_are_errors() {
        let b = sample();
        // Truncate the data at every length: each decode must fail or succeed, never panic.
        for cut in 0..b.data().len() {
            let view = BatchRef::new(&b.data()[..cut], b.index());
            for i in 0..view.len() {
                let _ = view.get(i);
            }
        }
        let view = BatchRef::new(&b.data()[..40], b.index());
        assert!(view.get(1).is_err());
        let err = BatchRef::new(b.data(), &[9999]).get(0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 0 of the batch is malformed: frame starts past the end of the data"
        );
        assert!(BatchRef::new(b.data(), b.index()).get(2).is_err());
    }

    #[test]
    fn bad_header_name_is_rejected() {
        let mut b = BatchBuilder::default();
        b.push(&Frame {
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            key: None,
            value: None,
            headers: &[("é", None)],
        });
        let mut data = b.data().to_vec();
        // The name's first byte, after the fixed header and its u32 length.
        data[FRAME_HEADER_LEN + 4] = 0xff;
        let err = BatchRef::new(&data, b.index()).get(0).unwrap_err();
        assert_eq!(err.reason, "a header name is not UTF-8");
    }
}
