//! Reading record headers as Kafka defines them: a name is any bytes.
//!
//! rdkafka's own iterator (`Headers::iter`, `try_get`) unwraps the name's
//! conversion to `&str`, so a record whose header name is not UTF-8 — which
//! Kafka allows and C clients send — panics the thread that reads it. Every
//! place in runnel that reads headers a client wrote goes through
//! [`raw`] instead.
#![allow(unsafe_code)] // the librdkafka calls below; see the SAFETY notes

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::marker::PhantomData;

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, BorrowedMessage, OwnedHeaders};

/// Whether a consumed record certainly has no headers, found without
/// asking librdkafka for them.
///
/// Asking (`rd_kafka_message_headers`, rdkafka's `Message::headers`) costs a
/// record without headers an allocation and a free: librdkafka reads the
/// header count out of the record's unparsed header bytes through a
/// temporary buffer object, finds 0, and throws the buffer away. That was
/// about 0.12 µs of CPU per record, 9% of a deployment's consumer thread, in
/// the Kafka bench (README). This reads those bytes where librdkafka keeps
/// them, in its private `rd_kafka_msg_t` (see [`Msg`]), and only once the
/// fields around them are found to hold what librdkafka's public getters
/// return for this record: in a librdkafka whose layout differs, the answer
/// is `false` and the record's headers are asked for as before.
/// `tests/tests/hardening.rs` checks that the layout is the one of the
/// librdkafka this build links. A produced record (a delivery report) is
/// never certain: its private fields are a producer's.
pub fn certainly_none(m: &BorrowedMessage<'_>) -> bool {
    let ptr = m.ptr().cast_const();
    let msg = ptr.cast::<Msg>();
    let mut tstype = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: `ptr` is a live consumed message, borrowed by `m`, and its
    // `rd_kafka_message_t` is the first field of the `rd_kafka_msg_t`
    // librdkafka allocated for it (its `rd_kafka_message2msg` is a cast),
    // which lies inside the larger operation object that carries a fetched
    // record: the reads below stay within librdkafka's allocation, of plain
    // integers and a pointer, aligned as a C compiler lays them out. Nothing
    // read is trusted until it matches the public getters: a timestamp, its
    // type, and the broker id and leader epoch on either side of the header
    // bytes. Only then is the first header byte read, through the pointer
    // librdkafka keeps to the record's own bytes, with its length checked.
    unsafe {
        let timestamp = rd::rd_kafka_message_timestamp(ptr, &raw mut tstype);
        let m = &*msg;
        if m.message.err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            || m.flags & MSG_F_PRODUCER != 0
            || !m.headers.is_null()
            || m.timestamp != timestamp
            || m.tstype != tstype as c_int
            || m.broker_id != rd::rd_kafka_message_broker_id(ptr)
            || m.leader_epoch != rd::rd_kafka_message_leader_epoch(ptr)
        {
            return false;
        }
        // librdkafka's own test (`rd_kafka_msg_headers_parse`): no header
        // bytes, or a count of 0 (the varint 0x00).
        m.header_bytes.len <= 0 || (!m.header_bytes.data.is_null() && *m.header_bytes.data == 0)
    }
}

/// The start of librdkafka's `rd_kafka_msg_t` (`src/rdkafka_msg.h` of
/// librdkafka 2.12.1, the version rdkafka-sys bundles): the public message,
/// then the private fields up to a consumed record's unparsed header bytes
/// and its leader epoch. See [`certainly_none`], which checks it against the
/// public getters before it believes it.
#[repr(C)]
struct Msg {
    message: rd::rd_kafka_message_t,
    /// `TAILQ_ENTRY(rd_kafka_msg_s) rkm_link`: two pointers.
    link: [*const c_void; 2],
    flags: c_int,
    /// `rd_kafka_timestamp_type_t`, a C enum.
    tstype: c_int,
    timestamp: i64,
    /// Parsed headers, if any: null until asked for.
    headers: *const rd::rd_kafka_headers_t,
    /// `rd_kafka_msg_status_t`, a C enum.
    status: c_int,
    broker_id: i32,
    /// `rkm_u.consumer.binhdrs`.
    header_bytes: KafkapBytes,
    /// `rkm_u.consumer.leader_epoch`.
    leader_epoch: i32,
}

/// `RD_KAFKA_MSG_F_PRODUCER` of `rd_kafka_msg_t`'s flags: the union after
/// the broker id holds a producer's fields, not a consumer's.
const MSG_F_PRODUCER: c_int = 0x40000;

/// librdkafka's `rd_kafkap_bytes_t`.
#[repr(C)]
struct KafkapBytes {
    len: i32,
    data: *const u8,
    _data: [u8; 1],
}

/// The headers of a record, in order, as `(name, value)` byte slices.
pub fn raw(headers: &BorrowedHeaders) -> RawHeaders<'_> {
    // `BorrowedHeaders` is a zero-sized type whose address is librdkafka's
    // `rd_kafka_headers_t *`: rdkafka makes it by casting that pointer
    // (`BorrowedHeaders::from_native_ptr`) and reads it back by casting the
    // reference (`as_native_ptr`). We cast the same way.
    let ptr = std::ptr::from_ref(headers).cast::<rd::rd_kafka_headers_t>();
    // SAFETY: `ptr` is a live headers object owned by the message (or the
    // `OwnedHeaders`) that `headers` borrows, for as long as the borrow.
    let count = unsafe { rd::rd_kafka_header_cnt(ptr) };
    RawHeaders {
        ptr,
        next: 0,
        count,
        _borrow: PhantomData,
    }
}

/// Removes every header whose name starts with `prefix`, keeping the others
/// in order as they are, whatever bytes their names are (rdkafka's API can
/// only add names that are UTF-8, so the headers cannot be rebuilt).
pub fn remove_prefixed(headers: &mut OwnedHeaders, prefix: &[u8]) {
    let mut names: Vec<CString> = Vec::new();
    for (name, _) in raw(headers.as_borrowed()) {
        if name.starts_with(prefix) && !names.iter().any(|n| n.as_bytes() == name) {
            // From a C string: no NUL inside.
            names.extend(CString::new(name).ok());
        }
    }
    let ptr = std::ptr::from_ref(headers.as_borrowed())
        .cast::<rd::rd_kafka_headers_t>()
        .cast_mut();
    for name in names {
        // SAFETY: `ptr` is the headers object `headers` owns (see `raw` for
        // the cast), borrowed mutably for the call, so nothing else reads
        // it; `name` is a NUL-terminated string that lives across the call.
        // librdkafka removes every header of that name; none is left (no
        // error) only if another name removed it first, which cannot be.
        let _ = unsafe { rd::rd_kafka_header_remove(ptr, name.as_ptr()) };
    }
}

/// An iterator over a record's headers; see [`raw`].
#[derive(Debug)]
pub struct RawHeaders<'a> {
    ptr: *const rd::rd_kafka_headers_t,
    next: usize,
    count: usize,
    _borrow: PhantomData<&'a BorrowedHeaders>,
}

impl<'a> Iterator for RawHeaders<'a> {
    type Item = (&'a [u8], Option<&'a [u8]>);

    fn next(&mut self) -> Option<Self::Item> {
        while self.next < self.count {
            let idx = self.next;
            self.next += 1;
            let mut name: *const c_char = std::ptr::null();
            let mut value: *const c_void = std::ptr::null();
            let mut size = 0usize;
            // SAFETY: `ptr` is live for 'a (see `raw`); `idx` is below the
            // count; librdkafka writes the three out-pointers, which point to
            // data owned by the headers object (a NUL-terminated name, and
            // `size` bytes of value or NULL for a null value).
            let err = unsafe {
                rd::rd_kafka_header_get_all(self.ptr, idx, &mut name, &mut value, &mut size)
            };
            if err != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR || name.is_null() {
                continue;
            }
            // SAFETY: as above; the slices live as long as the headers.
            let (name, value) = unsafe {
                (
                    CStr::from_ptr(name).to_bytes(),
                    (!value.is_null())
                        .then(|| std::slice::from_raw_parts(value.cast::<u8>(), size)),
                )
            };
            return Some((name, value));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders};

    #[test]
    fn reads_names_values_and_null_values_in_order() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "a",
                value: Some(&b"1"[..]),
            })
            .insert(Header::<&[u8]> {
                key: "b",
                value: None,
            })
            .insert(Header {
                key: "a",
                value: Some(&b""[..]),
            });
        let got: Vec<_> = super::raw(h.as_borrowed()).collect();
        assert_eq!(
            got,
            vec![
                (&b"a"[..], Some(&b"1"[..])),
                (&b"b"[..], None),
                (&b"a"[..], Some(&b""[..]))
            ]
        );
        assert_eq!(super::raw(OwnedHeaders::new().as_borrowed()).count(), 0);
    }

    #[test]
    fn prefixed_names_are_removed_and_the_rest_kept_in_order() {
        let mut h = OwnedHeaders::new();
        for name in ["a", "runnel-x", "b", "runnel-x", "runnel-y", "runnel", "c"] {
            h = h.insert(Header {
                key: name,
                value: Some(name.as_bytes()),
            });
        }
        super::remove_prefixed(&mut h, b"runnel-");
        let names: Vec<_> = super::raw(h.as_borrowed()).map(|(k, _)| k).collect();
        assert_eq!(names, [&b"a"[..], b"b", b"runnel", b"c"]);
    }
}
