//! The end of a partition as a client last heard it, without asking.
//!
//! librdkafka keeps each fetched partition's high watermark from the fetch
//! responses it receives (every `fetch.wait.max.ms` even when idle) and
//! answers `rd_kafka_get_watermark_offsets` from that cache. rust-rdkafka
//! offers only `fetch_watermarks`, a request to the broker, so the status's
//! lag used librdkafka's statistics instead: a JSON document of every
//! client, built and parsed every 2 s per deployment, which cost an idle
//! node more than the lag is worth (issue 22).
#![allow(unsafe_code)] // the librdkafka call below; see the SAFETY note

use std::ffi::CString;

use rdkafka::bindings as rd;
use rdkafka::client::{Client, ClientContext};

/// The high watermark of `topic`'s `partition` that `client` last received
/// in a fetch response; `None` before the first or for a partition it does
/// not fetch.
pub fn cached_high<C: ClientContext>(
    client: &Client<C>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let topic = CString::new(topic).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: `client.native_ptr()` is a live `rd_kafka_t` for as long as
    // `client` is borrowed; `topic` is a NUL-terminated string that lives
    // across the call, and `low` and `high` are valid for writes. librdkafka
    // reads its own cache under its lock and writes the two offsets only.
    let err = unsafe {
        rd::rd_kafka_get_watermark_offsets(
            client.native_ptr(),
            topic.as_ptr(),
            partition,
            &raw mut low,
            &raw mut high,
        )
    };
    // An unknown watermark is `RD_KAFKA_OFFSET_INVALID` (-1001).
    (err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0).then_some(high)
}
