//! OpenFlow 1.4 codec and client (see README.md).
