//! Native OVSDB (RFC 7047) client (see README.md).
