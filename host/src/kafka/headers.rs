//! Reading record headers as Kafka defines them: a name is any bytes.
//!
//! rdkafka's own iterator (`Headers::iter`, `try_get`) unwraps the name's
//! conversion to `&str`, so a record whose header name is not UTF-8 — which
//! Kafka allows and C clients send — panics the thread that reads it. Every
//! place in runnel that reads headers a client wrote goes through
//! [`raw`] instead.
#![allow(unsafe_code)] // the two librdkafka calls below; see the SAFETY notes

use std::ffi::{CStr, CString, c_char, c_void};
use std::marker::PhantomData;

use rdkafka::bindings as rd;
use rdkafka::message::{BorrowedHeaders, OwnedHeaders};

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
