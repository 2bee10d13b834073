//! Async client of the v1 API with mutual TLS (see README.md).
