//! The headers runnel adds to the records it writes.
//!
//! Every output carries [`DEPLOYMENT`], [`VERSION`] and [`MODULE`] (and
//! [`MODEL`] for a scorer), so a swap point or a replay is visible in the data. A dead letter also carries why it failed and
//! where it came from.

/// The deployment that produced the record.
pub const DEPLOYMENT: &str = "runnel-deployment";
/// `sha256:<hex>` of the module that produced the record.
pub const MODULE: &str = "runnel-module";
/// The deployment's version that produced the record: 1 when it starts,
/// one more at each swap.
pub const VERSION: &str = "runnel-version";
/// `sha256:<hex>` of the model that produced the record (scorers).
pub const MODEL: &str = "runnel-model";
/// Why the record failed (dead letters).
pub const ERROR: &str = "runnel-error";
/// `error` (the function rejected the record) or `trap` (the record made it crash).
pub const ERROR_KIND: &str = "runnel-error-kind";
/// Where the failed record was read from (dead letters).
pub const SOURCE_TOPIC: &str = "runnel-source-topic";
pub const SOURCE_PARTITION: &str = "runnel-source-partition";
pub const SOURCE_OFFSET: &str = "runnel-source-offset";
