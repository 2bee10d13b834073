//! See README.md.
pub mod agent;
pub mod image;
pub mod vm;
