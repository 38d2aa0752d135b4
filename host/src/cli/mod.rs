//! The `runnel` command line.

pub mod control;
pub mod new;
pub mod node;
pub mod run;
pub mod topic;
