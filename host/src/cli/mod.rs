//! The `runnel` command line.

pub mod node;
pub mod run;
pub mod topic;
