//! Arbitrary datagrams from the NETLINK_KOBJECT_UEVENT socket must never
//! panic the host stub's uevent parser; what parses is an action, an
//! absolute devpath and KEY=VALUE variables.
#![no_main]

use host_stub::uevent::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(ev) = parse(data) {
        assert!(!ev.action.is_empty());
        assert!(ev.devpath.starts_with('/'));
        let _ = ev.is_relevant();
    }
});
