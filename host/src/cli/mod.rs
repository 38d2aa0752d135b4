//! The `runnel` command line.

pub mod build;
pub mod control;
pub mod new;
pub mod new_python;
pub mod node;
pub mod run;
pub mod topic;
