//! Helpers for testing functions natively, without a host: build records the
//! way the host would and call your function directly.
//!
//! ```
//! use runnel_sdk::testing::TestRecord;
//!
//! fn is_big(r: &runnel_sdk::Record) -> runnel_sdk::Result<bool> {
//!     Ok(r.value_str()?.len() > 3)
//! }
//!
//! let record = TestRecord::value("hello").with_key("k");
//! assert!(is_big(&record.view()).unwrap());
//! ```

use runnel_abi::{BatchBuilder, BatchRef, Frame};

use crate::Record;

/// An owned record that lends out [`Record`] views, as a batch from the host would.
#[derive(Debug, Clone, Default)]
pub struct TestRecord {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Option<Vec<u8>>)>,
    partition: i32,
    offset: i64,
    timestamp_ms: Option<i64>,
    packed: BatchBuilder,
}

impl TestRecord {
    /// A record with this value, no key, partition 0, offset 0.
    pub fn value(value: impl Into<Vec<u8>>) -> Self {
        Self {
            value: Some(value.into()),
            ..Self::default()
        }
        .pack()
    }

    pub fn with_key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self.pack()
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        self.headers.push((name.into(), Some(value.into())));
        self.pack()
    }

    pub fn at(mut self, partition: i32, offset: i64) -> Self {
        self.partition = partition;
        self.offset = offset;
        self.pack()
    }

    pub fn with_timestamp_ms(mut self, timestamp_ms: i64) -> Self {
        self.timestamp_ms = Some(timestamp_ms);
        self.pack()
    }

    fn pack(mut self) -> Self {
        let headers: Vec<(&str, Option<&[u8]>)> = self
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_deref()))
            .collect();
        let mut packed = BatchBuilder::default();
        packed.push(&Frame {
            partition: self.partition,
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: &headers,
        });
        self.packed = packed;
        self
    }

    /// The record as your function sees it.
    pub fn view(&self) -> Record<'_> {
        let batch = BatchRef::new(self.packed.data(), self.packed.index());
        Record::new(
            batch
                .get(0)
                .expect("a TestRecord always packs one valid frame"),
        )
    }
}

/// Packs values into a batch's two buffers, as the host sends them.
pub fn batch(values: &[&[u8]]) -> (Vec<u8>, Vec<u32>) {
    BatchBuilder::of_values(values.iter().copied()).into_parts()
}
