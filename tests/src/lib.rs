//! See README.md.
pub mod agent;
pub mod fixtures;
pub mod image;
pub mod probe;
pub mod promtool;
pub mod storage;
pub mod vm;
