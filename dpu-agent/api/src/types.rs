//! Values that specs carry as strings on the wire but that are parsed once,
//! when a spec is decoded: a unicast MAC address, an IPv4 network with its
//! host bits zero, a port or port range, a physical function's name, an
//! NVMe Qualified Name. Each serializes back to its
//! canonical string, and a bad one is refused by decoding with the message
//! of [`crate::validate`]'s parser, at the field's path (`spec.mac`,
//! `spec.security.ingress[0].ports`).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::validate;

/// Serializes through `Display`, deserializes through `FromStr` with the
/// parser's message.
macro_rules! string_form {
    ($t:ty, $expecting:literal) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl serde::de::Visitor<'_> for V {
                    type Value = $t;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<$t, E> {
                        s.parse().map_err(E::custom)
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

/// A unicast MAC address other than all zeros, `02:00:00:00:00:01`
/// (printed in lower case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Mac, String> {
        validate::parse_mac("", s).map(Mac).map_err(|e| e.message)
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

string_form!(Mac, "a MAC address like 02:00:00:00:00:01");

/// An IPv4 network whose host bits are zero, `10.0.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr(pub Ipv4Net);

impl Ipv4Cidr {
    pub fn addr(&self) -> Ipv4Addr {
        self.0.network()
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn contains(&self, ip: &Ipv4Addr) -> bool {
        self.0.contains(ip)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Ipv4Cidr, String> {
        validate::parse_ipv4_cidr("", s)
            .map(Ipv4Cidr)
            .map_err(|e| e.message)
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

string_form!(Ipv4Cidr, "an IPv4 network like 10.0.0.0/24");

/// A TCP/UDP port (`"80"`) or ascending range (`"1000-2000"`) in 1-65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<PortRange, String> {
        validate::parse_port_range("", s)
            .map(|(lo, hi)| PortRange { lo, hi })
            .map_err(|e| e.message)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

string_form!(PortRange, "a port like \"80\" or range like \"1000-2000\"");

/// A name checked once at decoding, kept as the string it was; reads as a
/// `&str` everywhere a name is used.
macro_rules! checked_name {
    ($t:ident, $check:path) => {
        impl FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<$t, String> {
                $check("", s).map_err(|e| e.message)?;
                Ok($t(s.to_string()))
            }
        }

        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::ops::Deref for $t {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::borrow::Borrow<str> for $t {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $t {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $t {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl PartialEq<$t> for String {
            fn eq(&self, other: &$t) -> bool {
                *self == other.0
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    };
}

/// A physical function's netdev name, like `pf0` or `p0`: 1 to
/// [`crate::limits::PF_BYTES`] of ASCII letters, digits, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PfName(String);

impl PfName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

checked_name!(PfName, validate::check_pf_name);
string_form!(PfName, "a physical function name like pf0");

/// An NVMe Qualified Name, `nqn.2014-08.org.example:vol1` (at most 223
/// bytes, no whitespace or control characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nqn(String);

impl Nqn {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

checked_name!(Nqn, validate::check_nqn);
string_form!(Nqn, "an NQN like nqn.2014-08.org.example:vol1");

/// Key material a spec carries (an IPsec key, a TLS private key): a
/// write-only string that never prints — `Debug` shows `<redacted>`, there
/// is no `Display` — and is read only through [`Secret::expose`]. On the
/// wire it is the string itself; the agent's store seals it before it
/// reaches the disk and hands it out withheld (empty). What it must look
/// like depends on other fields (a key's length on the cipher), so
/// [`crate::validate`] checks it.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The key material itself, for the code that must use it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Withheld (taken out, or never sent back).
    pub fn is_withheld(&self) -> bool {
        self.0.is_empty()
    }

    /// Takes the key material out, leaving this withheld.
    pub fn take(&mut self) -> String {
        std::mem::take(&mut self.0)
    }

    /// Withholds it (drops the key material).
    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Secret {
        Secret(s)
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<withheld>"
        } else {
            "<redacted>"
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_never_print_and_keep_their_wire_form() {
        let mut k: Secret = serde_json::from_value(json!("c0ffee")).unwrap();
        assert_eq!(format!("{k:?}"), "<redacted>");
        assert_eq!(serde_json::to_value(&k).unwrap(), json!("c0ffee"));
        assert_eq!(k.take(), "c0ffee");
        assert!(k.is_withheld());
        assert_eq!(format!("{k:?}"), "<withheld>");
    }

    #[test]
    fn names_are_checked_once_and_kept_as_given() {
        let pf: PfName = serde_json::from_value(json!("pf0")).unwrap();
        assert_eq!(pf, "pf0");
        assert_eq!(serde_json::to_value(&pf).unwrap(), json!("pf0"));
        for bad in ["", "pf 0", "pf0/../x", &"p".repeat(100)] {
            let err = serde_json::from_value::<PfName>(json!(bad)).unwrap_err();
            assert!(
                err.to_string().contains("physical function"),
                "{bad}: {err}"
            );
        }
        let nqn: Nqn = serde_json::from_value(json!("nqn.2014-08.org.example:vol1")).unwrap();
        assert_eq!(nqn.as_str(), "nqn.2014-08.org.example:vol1");
        for bad in [
            "",
            "iqn.2014-08.org.example:x",
            "nqn.2014-08.org.example:a b",
        ] {
            let err = serde_json::from_value::<Nqn>(json!(bad)).unwrap_err();
            assert!(err.to_string().contains("NQN"), "{bad}: {err}");
        }
    }

    #[test]
    fn canonical_strings_round_trip() {
        let mac: Mac = serde_json::from_value(json!("02:AB:00:00:00:0a")).unwrap();
        assert_eq!(mac.0, [2, 0xab, 0, 0, 0, 10]);
        assert_eq!(
            serde_json::to_value(mac).unwrap(),
            json!("02:ab:00:00:00:0a")
        );
        let net: Ipv4Cidr = serde_json::from_value(json!("10.1.0.0/16")).unwrap();
        assert_eq!(
            (net.addr(), net.prefix_len()),
            ("10.1.0.0".parse().unwrap(), 16)
        );
        assert_eq!(serde_json::to_value(net).unwrap(), json!("10.1.0.0/16"));
        for (s, lo, hi) in [("80", 80, 80), ("1000-2000", 1000, 2000)] {
            let r: PortRange = serde_json::from_value(json!(s)).unwrap();
            assert_eq!((r.lo, r.hi), (lo, hi));
            assert_eq!(serde_json::to_value(r).unwrap(), json!(s));
        }
    }

    #[test]
    fn bad_values_are_refused_with_the_parsers_message() {
        let cases = [
            (err::<Mac>(json!("01:00:00:00:00:01")), "multicast"),
            (err::<Mac>(json!("02:00:00:00:00")), "not a MAC address"),
            (err::<Ipv4Cidr>(json!("10.0.0.1/24")), "host bits"),
            (err::<Ipv4Cidr>(json!("fd00::/64")), "only IPv4"),
            (err::<PortRange>(json!("2000-1000")), "backwards"),
            (err::<PortRange>(json!(80)), "port like"),
        ];
        for (msg, want) in cases {
            assert!(msg.contains(want), "{want}: {msg}");
        }
    }

    fn err<T: serde::de::DeserializeOwned + fmt::Debug>(v: serde_json::Value) -> String {
        serde_json::from_value::<T>(v).unwrap_err().to_string()
    }
}
