//! Generic netlink (`NETLINK_GENERIC`): the 4-byte `genlmsghdr` after the
//! netlink header, and family id lookup through the controller
//! (`include/uapi/linux/genetlink.h`).

use crate::msg::{self, NLM_F_ACK, NLM_F_REQUEST};
use crate::{Error, Socket, attr};

/// `sizeof(struct genlmsghdr)`: cmd, version, reserved u16.
pub const GENL_HDRLEN: usize = 4;
/// The controller's fixed family id.
pub const GENL_ID_CTRL: u16 = 0x10;
pub const CTRL_CMD_GETFAMILY: u8 = 3;
pub const CTRL_ATTR_FAMILY_ID: u16 = 1;
pub const CTRL_ATTR_FAMILY_NAME: u16 = 2;

/// A generic netlink message: nlmsghdr (type `family`) + genlmsghdr +
/// attributes.
pub fn message(family: u16, flags: u16, seq: u32, cmd: u8, version: u8, attrs: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(msg::NLMSG_HDRLEN + GENL_HDRLEN + attrs.len());
    msg::start(&mut m, family, flags, seq);
    m.extend_from_slice(&[cmd, version, 0, 0]);
    m.extend_from_slice(attrs);
    msg::finish(&mut m);
    m
}

/// The attributes of a generic netlink payload (after `nlmsghdr`): what
/// follows the genlmsghdr; empty when the payload is shorter than it.
pub fn attrs_of(payload: &[u8]) -> &[u8] {
    payload.get(GENL_HDRLEN..).unwrap_or(&[])
}

/// The `CTRL_CMD_GETFAMILY` request for family `name`.
pub fn get_family_request(name: &str, seq: u32) -> Vec<u8> {
    let mut a = Vec::new();
    attr::put_str(&mut a, CTRL_ATTR_FAMILY_NAME, name);
    message(
        GENL_ID_CTRL,
        NLM_F_REQUEST | NLM_F_ACK,
        seq,
        CTRL_CMD_GETFAMILY,
        1,
        &a,
    )
}

/// The family id in the controller's answers (payloads after `nlmsghdr`).
pub fn family_id(replies: &[Vec<u8>]) -> Option<u16> {
    replies
        .iter()
        .find_map(|r| attr::attrs(attrs_of(r)).get(CTRL_ATTR_FAMILY_ID))
        .and_then(|v| attr::u16(v).ok())
}

/// Resolves family `name` on `sock` (a `NETLINK_GENERIC` socket). A kernel
/// without the family answers `ENOENT` (an `Error::Kernel`).
pub fn resolve_family(sock: &mut Socket, name: &str) -> Result<u16, Error> {
    let replies = sock.request(&mut get_family_request(name, 0))?;
    family_id(&replies).ok_or_else(|| {
        Error::Malformed(format!(
            "no family id in the controller's answer for {name}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// devlink's vector: the lookup of "devlink" is a request to the
    /// controller (0x10), command 3, version 1, FAMILY_NAME "devlink\0".
    #[test]
    fn family_lookup_request_and_answer() {
        let req = get_family_request("devlink", 1);
        #[cfg(target_endian = "little")]
        assert_eq!(
            req,
            [
                32, 0, 0, 0, 0x10, 0, 5, 0, 1, 0, 0, 0, 0, 0, 0, 0, 3, 1, 0, 0, 12, 0, 2, 0, b'd',
                b'e', b'v', b'l', b'i', b'n', b'k', 0
            ]
        );
        let a: Vec<_> = attr::attrs(attrs_of(&req[16..])).collect();
        assert_eq!(a, vec![(2, &b"devlink\0"[..])]);
        // The controller's answer: NEWFAMILY with FAMILY_ID 0x15.
        let mut answer = vec![1, 2, 0, 0];
        attr::put_str(&mut answer, CTRL_ATTR_FAMILY_NAME, "devlink");
        attr::put_u16(&mut answer, CTRL_ATTR_FAMILY_ID, 0x15);
        assert_eq!(family_id(&[answer]), Some(0x15));
        assert_eq!(family_id(&[vec![1, 2]]), None);
        assert_eq!(attrs_of(&[1]), &[] as &[u8]);
    }

    /// Against the kernel: the controller resolves itself ("nlctrl", id
    /// 0x10); an unknown family is ENOENT.
    #[test]
    fn the_kernel_resolves_nlctrl() {
        let mut s = Socket::open(crate::NETLINK_GENERIC)
            .unwrap()
            .with_timeout(Some(std::time::Duration::from_secs(5)));
        assert_eq!(resolve_family(&mut s, "nlctrl").unwrap(), GENL_ID_CTRL);
        let e = resolve_family(&mut s, "nosuchfamily").unwrap_err();
        assert_eq!(e.errno(), Some(libc::ENOENT), "{e}");
    }
}
