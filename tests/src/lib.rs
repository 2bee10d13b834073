//! See README.md.
pub mod vm;
