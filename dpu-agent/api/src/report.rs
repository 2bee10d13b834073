//! Kind-specific status, typed: what a controller reports about one object
//! for people (flows, counters, where a volume is exported), beside the
//! common `phase` and `conditions` and the [`crate::object::StatusFacts`]
//! other controllers act on. Each report is a struct whose fields are
//! top-level fields of `status` on the wire (the stored form stays the
//! wire form); a controller writes its kind's report with
//! [`Status::set_report`] and reads it back with [`Status::report`], never
//! by string key. `tests/status_reports.rs` keeps each report's fields equal
//! to its kind's status schema in the served OpenAPI document.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Kind;
use crate::object::Status;

/// A kind's report: the status fields it owns.
pub trait Report: Serialize + DeserializeOwned + Default {
    /// The kind whose status carries it.
    const KIND: Kind;
    /// Every field it may write, so that [`Status::set_report`] removes
    /// those it leaves out (an `Option` that became `None`).
    const FIELDS: &'static [&'static str];
}

impl Status {
    /// The kind's report as last written; fields missing or of the wrong
    /// shape (a record from an older agent) read as their defaults.
    pub fn report<R: Report>(&self) -> R {
        // Every report field has a default: keep each stored field that
        // parses, one at a time.
        let mut kept = serde_json::Map::new();
        for f in R::FIELDS {
            if let Some(v) = self.fields.get(*f) {
                let mut trial = kept.clone();
                trial.insert((*f).to_string(), v.clone());
                if serde_json::from_value::<R>(Value::Object(trial.clone())).is_ok() {
                    kept = trial;
                }
            }
        }
        serde_json::from_value(Value::Object(kept)).unwrap_or_default()
    }

    /// Writes the kind's report: each of its fields set, or removed when
    /// the report leaves it out.
    pub fn set_report<R: Report>(&mut self, report: &R) {
        for f in R::FIELDS {
            self.fields.remove(*f);
        }
        if let Ok(Value::Object(map)) = serde_json::to_value(report) {
            for (k, v) in map {
                if !v.is_null() {
                    self.fields.insert(k, v);
                }
            }
        }
    }
}

/// Network and Endpoint: the flows installed for the object.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowsReport {
    #[serde(default)]
    pub flows: u64,
}

impl Report for FlowsReport {
    const KIND: Kind = Kind::Network;
    const FIELDS: &'static [&'static str] = &["flows"];
}

/// Function: what its controller reports beside the facts (VF,
/// representor, host device): its RDMA state when `spec.rdma` asks for it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma: Option<RdmaReport>,
}

/// A function's RDMA: whether the driver has RoCE on for it, the DPU-side
/// RDMA device when known, and the RDMA device the host stub found on the
/// function's host netdev.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RdmaReport {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_device: Option<String>,
}

impl Report for FunctionReport {
    const KIND: Kind = Kind::Function;
    const FIELDS: &'static [&'static str] = &["rdma"];
}

/// Port: its flows, its OpenFlow port and what the datapath says of the
/// flows entering from it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortReport {
    #[serde(default)]
    pub flows: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofport: Option<u32>,
    /// Datapath flows entering from the port's representor (while known).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_flows: Option<u64>,
    /// How many of them the datapath says are offloaded to hardware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloaded_flows: Option<u64>,
    /// Every datapath flow of the port is offloaded (and there is one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offloaded: Option<bool>,
}

impl Report for PortReport {
    const KIND: Kind = Kind::Port;
    const FIELDS: &'static [&'static str] = &[
        "flows",
        "ofport",
        "datapath_flows",
        "offloaded_flows",
        "offloaded",
    ];
}

/// Volume: the backend serving it, its size when local, where the host
/// connects to it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// `traddr:trsvcid` the host connects to, where the backend exports
    /// the volume over the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export: Option<String>,
}

impl Report for VolumeReport {
    const KIND: Kind = Kind::Volume;
    const FIELDS: &'static [&'static str] = &["backend", "size_bytes", "export"];
}

/// IPsec tunnel: the offload in use, traffic and error counters as the
/// kernel counts them, rekeys done, the tenant's XFRM interface.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpsecTunnelReport {
    /// `packet`, `crypto` or `none`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offload_active: Option<String>,
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    #[serde(default)]
    pub packets_in: u64,
    #[serde(default)]
    pub packets_out: u64,
    #[serde(default)]
    pub rekeys: u64,
    #[serde(default)]
    pub replay_window_drops: u64,
    #[serde(default)]
    pub replay_drops: u64,
    #[serde(default)]
    pub integrity_failures: u64,
    /// `ipsec0 in <namespace>`, or `not created: <why>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xfrm_interface: Option<String>,
}

impl Report for IpsecTunnelReport {
    const KIND: Kind = Kind::IpsecTunnel;
    const FIELDS: &'static [&'static str] = &[
        "offload_active",
        "bytes_in",
        "bytes_out",
        "packets_in",
        "packets_out",
        "rekeys",
        "replay_window_drops",
        "replay_drops",
        "integrity_failures",
        "xfrm_interface",
    ];
}

/// TLS listener: kernel TLS state and the proxy's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsListenerReport {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ktls_active: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ktls_reason: Option<String>,
    #[serde(default)]
    pub ktls_sessions: u64,
    #[serde(default)]
    pub ktls_failures: u64,
    #[serde(default)]
    pub ktls_fallbacks: u64,
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub connections_active: u64,
    #[serde(default)]
    pub handshake_failures: u64,
    #[serde(default)]
    pub refused_over_limit: u64,
    #[serde(default)]
    pub upstream_failures: u64,
    /// The tenant network namespace the listener serves in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

impl Report for TlsListenerReport {
    const KIND: Kind = Kind::TlsListener;
    const FIELDS: &'static [&'static str] = &[
        "ktls_active",
        "ktls_reason",
        "ktls_sessions",
        "ktls_failures",
        "ktls_fallbacks",
        "connections",
        "connections_active",
        "handshake_failures",
        "refused_over_limit",
        "upstream_failures",
        "netns",
    ];
}

/// Tenant: the objects it owns, by kind (`ports`, `ipsec_tunnels`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantReport {
    #[serde(default)]
    pub usage: BTreeMap<String, u64>,
}

impl Report for TenantReport {
    const KIND: Kind = Kind::Tenant;
    const FIELDS: &'static [&'static str] = &["usage"];
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_report_round_trips_and_clears_what_it_leaves_out() {
        let mut s = Status::default();
        s.fields.insert("unrelated".into(), json!(1));
        let full = PortReport {
            flows: 7,
            ofport: Some(3),
            datapath_flows: Some(2),
            offloaded_flows: Some(2),
            offloaded: Some(true),
        };
        s.set_report(&full);
        assert_eq!(s.report::<PortReport>(), full);
        assert_eq!(s.fields["ofport"], json!(3));
        s.set_report(&PortReport {
            flows: 1,
            ..PortReport::default()
        });
        assert!(!s.fields.contains_key("ofport"));
        assert!(!s.fields.contains_key("offloaded"));
        assert_eq!(s.fields["unrelated"], json!(1), "other fields are kept");
    }

    #[test]
    fn a_field_of_the_wrong_shape_reads_as_its_default_the_rest_is_kept() {
        let mut s = Status::default();
        s.fields.insert("rekeys".into(), json!("many"));
        s.fields.insert("bytes_in".into(), json!(5));
        let r = s.report::<IpsecTunnelReport>();
        assert_eq!((r.rekeys, r.bytes_in), (0, 5));
    }

    /// Every field a report serializes is in its `FIELDS`, so `set_report`
    /// never leaves a stale one behind.
    #[test]
    fn fields_name_every_serialized_field() {
        fn keys<R: Report>(full: R) {
            let Value::Object(map) = serde_json::to_value(full).unwrap() else {
                panic!("a report is an object")
            };
            let mut got: Vec<&str> = map.keys().map(String::as_str).collect();
            got.sort_unstable();
            let mut want = R::FIELDS.to_vec();
            want.sort_unstable();
            assert_eq!(got, want, "{:?}", R::KIND);
        }
        keys(FlowsReport { flows: 1 });
        keys(PortReport {
            flows: 1,
            ofport: Some(1),
            datapath_flows: Some(1),
            offloaded_flows: Some(1),
            offloaded: Some(true),
        });
        keys(VolumeReport {
            backend: Some("nvmet".into()),
            size_bytes: Some(1),
            export: Some("127.0.0.1:4420".into()),
        });
        keys(IpsecTunnelReport {
            offload_active: Some("none".into()),
            xfrm_interface: Some("ipsec0 in x".into()),
            ..IpsecTunnelReport::default()
        });
        keys(TlsListenerReport {
            ktls_active: Some(true),
            ktls_reason: Some("ok".into()),
            netns: Some("dpu-tn-acme".into()),
            ..TlsListenerReport::default()
        });
        keys(TenantReport::default());
    }
}
