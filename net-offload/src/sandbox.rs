//! A private Open vSwitch (ovsdb-server + ovs-vswitchd, userspace datapath) in a directory.
