//! The headers runnel adds to the records it writes.
//!
//! Every output carries [`DEPLOYMENT`], [`VERSION`] and [`MODULE`] (and
//! [`MODEL`] for a scorer), so a swap point or a replay is visible in the
//! data; or, as the deployment's `provenance` says, all of them in one
//! [`PROVENANCE`] header, or none. A dead letter always carries them, and why it failed and
//! where it came from. Headers with runnel's [`PREFIX`] that an input or a
//! function brings are dropped from outputs and dead letters alike (a
//! record whose header names are not UTF-8 included): what runnel writes
//! cannot be spoofed.

/// The prefix of runnel's headers. On an output every header with it is
/// runnel's own: those the input or the function carried are dropped, so
/// that provenance cannot be spoofed.
pub const PREFIX: &str = "runnel-";

/// The deployment that produced the record.
pub const DEPLOYMENT: &str = "runnel-deployment";
/// `sha256:<hex>` of the module that produced the record.
pub const MODULE: &str = "runnel-module";
/// The deployment's version that produced the record: 1 when it starts,
/// one more at each swap.
pub const VERSION: &str = "runnel-version";
/// `sha256:<hex>` of the model that produced the record (scorers).
pub const MODEL: &str = "runnel-model";
/// All of the above in one header, for `provenance = "compact"`:
/// `DEPLOYMENT/VERSION/sha256:MODULE[/sha256:MODEL]`.
pub const PROVENANCE: &str = "runnel-provenance";
/// Why the record failed (dead letters).
pub const ERROR: &str = "runnel-error";
/// Why, in one word: `error` (the function rejected the record), `trap` (the
/// record made it crash), `bad-header` (a header name is not UTF-8, so the
/// record never reached the function), or, for an output the broker would
/// not take, `too-large`, `invalid-timestamp`, `not-authorized`,
/// `topic-missing` or `refused` (`dead-letter-too-large` when the dead
/// letter itself had to be cut to fit).
pub const ERROR_KIND: &str = "runnel-error-kind";
/// The value's size in bytes, when the dead letter leaves the value out
/// because it was too large.
pub const ORIGINAL_SIZE: &str = "runnel-original-size";
/// The key's size in bytes, when the dead letter leaves a large key out.
pub const ORIGINAL_KEY_SIZE: &str = "runnel-original-key-size";
/// How many headers a dead letter cut to fit left out.
pub const HEADERS_DROPPED: &str = "runnel-headers-dropped";
/// Where the failed record was read from (dead letters).
pub const SOURCE_TOPIC: &str = "runnel-source-topic";
pub const SOURCE_PARTITION: &str = "runnel-source-partition";
pub const SOURCE_OFFSET: &str = "runnel-source-offset";
