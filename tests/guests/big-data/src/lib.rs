//! A filter whose data segments hold 3 MiB: instantiating it needs that much
//! linear memory before any code runs, so a smaller memory limit refuses it
//! at instantiation.

use runnel_sdk::{Record, Result};

/// Not zero, so it is stored in a data segment rather than left to zeroed memory.
static TABLE: [u8; 3 << 20] = [0x5a; 3 << 20];

#[runnel_sdk::filter]
fn lookup(record: &Record) -> Result<bool> {
    let i = record.value().map_or(0, <[u8]>::len);
    Ok(std::hint::black_box(&TABLE)[i % TABLE.len()] == 0x5a)
}
