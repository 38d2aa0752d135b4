//! The `runnel` command line.

pub mod run;
