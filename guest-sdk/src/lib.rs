//! Write runnel stream functions in Rust.
//!
//! A function is a filter, a map or a scorer. Write one plain Rust function (or
//! a type, when it needs state built from its config), put the matching
//! attribute on it, and build the crate for `wasm32-wasip2`:
//!
//! ```
//! use runnel_sdk::{Record, Result};
//!
//! /// Keeps the records whose value mentions "error".
//! #[runnel_sdk::filter]
//! fn errors_only(record: &Record) -> Result<bool> {
//!     Ok(record.value_str()?.contains("error"))
//! }
//! # fn main() {}
//! ```
//!
//! ```
//! use runnel_sdk::{Config, Filter, Record, Result};
//!
//! /// Keeps records whose JSON field `field` is at least `min`.
//! struct Threshold { field: String, min: f64 }
//!
//! #[runnel_sdk::filter]
//! impl Filter for Threshold {
//!     fn new(config: &Config) -> Result<Self> {
//!         Ok(Threshold { field: config.require("field")?.to_owned(), min: config.parse_or("min", 0.0)? })
//!     }
//!     fn filter(&mut self, record: &Record) -> Result<bool> {
//!         let value: serde_json::Value = record.value_json()?;
//!         Ok(value[&self.field].as_f64().is_some_and(|x| x >= self.min))
//!     }
//! }
//! # fn main() {}
//! ```
//!
//! What each kind receives and returns:
//!
//! | attribute | on | per record |
//! |---|---|---|
//! | `#[filter]` | `fn(&Record) -> Result<bool>` or `impl Filter for T` | keep (`true`) or drop |
//! | `#[map]` | `fn(&Record) -> Result<Vec<Output>>` or `impl Map for T` | zero or more outputs |
//! | `#[scorer]` | `impl Scorer for T` (built from config and model bytes) | one output |
//! | `#[processor]` | `fn(&Record, &mut ProcessorContext) -> Result<Vec<Output>>` or `impl Processor for T` | zero or more outputs, reading and writing keyed state ([`state`]) |
//!
//! An `Err` is an expected failure of that record: the host sends the record to
//! the dead-letter topic with the error's message, and the stream goes on. A
//! panic is a bug: the host throws the instance away and isolates the record.
//!
//! Records are views into the batch the host sent: accessors borrow, nothing is
//! copied until you build an [`Output`].

use std::fmt;

pub use runnel_sdk_macros::{filter, map, processor, scorer};

pub mod alloc;
mod record;
pub mod state;
pub use record::{Config, OUTPUT_HEADER, Output, Record};
pub use state::{Key, ProcessorContext, Store};

#[doc(hidden)]
pub mod __private;
pub mod testing;

/// Why one record could not be processed. It becomes the message of the
/// record's dead-letter entry.
///
/// Any error type converts into it with `?`, as with `anyhow`; use
/// [`Error::msg`] or the [`Context`] trait to say more.
pub struct Error {
    message: String,
}

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            message: message.to_string(),
        }
    }

    /// The message the host will report.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// This error with `context` put in front of it: "context: error".
    pub fn context(self, context: impl fmt::Display) -> Self {
        Self {
            message: format!("{context}: {}", self.message),
        }
    }
}

impl<E: std::error::Error> From<E> for Error {
    fn from(error: E) -> Self {
        Self::msg(error)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// `Result` with [`Error`] as its default error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to a failure, as `anyhow::Context` does.
pub trait Context<T> {
    /// Puts `context` in front of the error's message.
    fn context(self, context: impl fmt::Display) -> Result<T>;
    /// Like [`Context::context`], building the message only on failure.
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.map_err(|e| e.into().context(context))
    }
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.map_err(|e| e.into().context(context()))
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, context: impl fmt::Display) -> Result<T> {
        self.ok_or_else(|| Error::msg(context))
    }
    fn with_context<C: fmt::Display>(self, context: impl FnOnce() -> C) -> Result<T> {
        self.ok_or_else(|| Error::msg(context()))
    }
}

/// Returns early with an [`Error`] built like `format!`.
#[macro_export]
macro_rules! bail {
    ($($arg:tt)*) => {
        return ::core::result::Result::Err($crate::Error::msg(::std::format!($($arg)*)))
    };
}

/// A filter that keeps state built from its config. Put `#[runnel_sdk::filter]`
/// on the `impl`.
pub trait Filter: Sized {
    /// Builds the filter from the deployment's config. An error refuses the
    /// deployment, with this message.
    fn new(config: &Config) -> Result<Self>;
    /// Whether to keep `record`.
    fn filter(&mut self, record: &Record) -> Result<bool>;
}

/// A map that keeps state built from its config. Put `#[runnel_sdk::map]` on
/// the `impl`.
pub trait Map: Sized {
    /// Builds the map from the deployment's config. An error refuses the
    /// deployment, with this message.
    fn new(config: &Config) -> Result<Self>;
    /// The records `record` turns into: none, one or several.
    fn map(&mut self, record: &Record) -> Result<Vec<Output>>;
}

/// A scorer: a model, loaded from the deployment's model artifact, that scores
/// each record. Put `#[runnel_sdk::scorer]` on the `impl`.
pub trait Scorer: Sized {
    /// Loads the model. `model` is the model artifact's bytes; an error refuses
    /// the deployment (or the new model, on a swap), with this message.
    fn new(config: &Config, model: &[u8]) -> Result<Self>;
    /// The one output for `record`.
    fn score(&mut self, record: &Record) -> Result<Output>;
}

/// A processor that keeps values built from its config besides its keyed
/// state. Put `#[runnel_sdk::processor]` on the `impl`.
pub trait Processor: Sized {
    /// Builds the processor from the deployment's config. An error refuses
    /// the deployment, with this message.
    fn new(config: &Config) -> Result<Self>;
    /// The records `record` turns into, reading and writing state through
    /// `ctx`. On `Err` the record's state writes are forgotten.
    fn process(&mut self, record: &Record, ctx: &mut ProcessorContext) -> Result<Vec<Output>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_convert_and_take_context() {
        fn parse(s: &str) -> Result<i32> {
            let n: i32 = s.parse().context("field `n`")?;
            Ok(n)
        }
        assert_eq!(parse("7").unwrap(), 7);
        assert_eq!(
            parse("x").unwrap_err().message(),
            "field `n`: invalid digit found in string"
        );
        let missing: Option<u8> = None;
        assert_eq!(
            missing.context("no value").unwrap_err().to_string(),
            "no value"
        );
    }

    #[test]
    fn bail_formats() {
        fn f(x: i32) -> Result<()> {
            if x > 1 {
                bail!("{x} is too big");
            }
            Ok(())
        }
        assert_eq!(f(3).unwrap_err().message(), "3 is too big");
        assert!(f(0).is_ok());
    }
}
