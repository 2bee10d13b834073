//! See README.md.
pub mod agent;
pub mod vm;
