//! Talking to the DPU agent: the inventory report (`PUT /v1/host/inventory`),
//! the assignments list and watch (`GET /v1/host/assignments[?watch=1]`),
//! and the lease that says how long the agent may be silent before the
//! functions it assigned are marked unhealthy.
//!
//! The daemon uses the agent through [`AgentApi`], so that it runs in tests
//! against an in-memory agent; [`AgentApi`] is implemented for
//! `dpu_api::client::Client`, the mTLS client.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use dpu_api::object::{Event, HostDevice, HostInventory, HostRdma, ObjectList};
use futures_util::{Stream, StreamExt};

use crate::discover::Function;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
#[error("{what} failed")]
pub struct ReportError {
    pub what: &'static str,
    #[source]
    pub source: BoxError,
}

impl ReportError {
    pub fn new(what: &'static str, source: impl Into<BoxError>) -> Self {
        ReportError {
            what,
            source: source.into(),
        }
    }
}

pub type AssignmentStream = Pin<Box<dyn Stream<Item = Result<Event, ReportError>> + Send>>;

/// What the daemon needs from the agent.
pub trait AgentApi: Send + Sync {
    fn put_host_inventory(
        &self,
        inventory: &HostInventory,
    ) -> impl Future<Output = Result<(), ReportError>> + Send;
    fn host_assignments(&self) -> impl Future<Output = Result<ObjectList, ReportError>> + Send;
    fn watch_host_assignments(
        &self,
    ) -> impl Future<Output = Result<AssignmentStream, ReportError>> + Send;
}

impl AgentApi for dpu_api::client::Client {
    async fn put_host_inventory(&self, inventory: &HostInventory) -> Result<(), ReportError> {
        dpu_api::client::Client::put_host_inventory(self, inventory)
            .await
            .map_err(|e| ReportError::new("PUT /v1/host/inventory", e))
    }

    async fn host_assignments(&self) -> Result<ObjectList, ReportError> {
        dpu_api::client::Client::host_assignments(self)
            .await
            .map_err(|e| ReportError::new("GET /v1/host/assignments", e))
    }

    async fn watch_host_assignments(&self) -> Result<AssignmentStream, ReportError> {
        let stream = dpu_api::client::Client::watch_host_assignments(self)
            .await
            .map_err(|e| ReportError::new("GET /v1/host/assignments?watch=1", e))?;
        Ok(Box::pin(stream.map(|item| {
            item.map_err(|e| ReportError::new("assignment watch", e))
        })))
    }
}

/// The report body for the DPU's functions. `host` is left to the agent,
/// which takes it from the client certificate.
pub fn host_inventory(functions: &[Function]) -> HostInventory {
    HostInventory {
        host: None,
        devices: functions.iter().map(host_device).collect(),
    }
}

pub fn host_device(f: &Function) -> HostDevice {
    let hex4 = |v: Option<u16>| v.map(|v| format!("{v:04x}"));
    HostDevice {
        pci_address: f.pci_address.clone(),
        class: f.api_class().to_string(),
        vendor_id: hex4(f.vendor),
        device_id: hex4(f.device),
        driver: f.driver.clone(),
        physfn: f.physfn.clone(),
        vf_index: f.vf_index,
        netdev: f.netdevs.first().cloned(),
        block_device: f.block_devices.first().cloned(),
        iommu_group: f.iommu_group,
        numa_node: f.numa_node,
        kind: Some(f.kind().as_str().to_string()),
        card: f.card.clone(),
        sf_index: f.sf_index,
        aux_device: f.aux_device.clone(),
        rdma: f.rdma.as_ref().map(|r| HostRdma {
            device: r.device.clone(),
            uverbs: r.uverbs.clone(),
            rdma_cm: r.rdma_cm.clone(),
        }),
    }
}

/// Whether the agent has been heard from recently enough.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Healthy,
    /// The agent has been unreachable for longer than the lease.
    Unhealthy,
}

/// The agent counts as present while it answered within `duration`. The
/// lease starts running at start-up, so an agent that never answers makes
/// the functions unhealthy after one lease too.
#[derive(Debug, Clone, Copy)]
pub struct Lease {
    duration: Duration,
    last_contact: Instant,
}

impl Lease {
    pub fn new(duration: Duration, now: Instant) -> Self {
        Lease {
            duration,
            last_contact: now,
        }
    }

    pub fn renew(&mut self, now: Instant) {
        self.last_contact = self.last_contact.max(now);
    }

    pub fn health(&self, now: Instant) -> Health {
        if now.saturating_duration_since(self.last_contact) > self.duration {
            Health::Unhealthy
        } else {
            Health::Healthy
        }
    }

    /// When the lease runs out if not renewed.
    pub fn expires_at(&self) -> Instant {
        self.last_contact + self.duration
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::FunctionKind;

    #[test]
    fn lease_expires_only_after_its_duration() {
        let t0 = Instant::now();
        let mut lease = Lease::new(Duration::from_secs(10), t0);
        assert_eq!(lease.health(t0 + Duration::from_secs(10)), Health::Healthy);
        assert_eq!(
            lease.health(t0 + Duration::from_secs(11)),
            Health::Unhealthy
        );
        lease.renew(t0 + Duration::from_secs(11));
        assert_eq!(lease.health(t0 + Duration::from_secs(12)), Health::Healthy);
        // A late, out-of-order renewal does not move the lease back.
        lease.renew(t0);
        assert_eq!(lease.expires_at(), t0 + Duration::from_secs(21));
    }

    #[test]
    fn host_device_mapping() {
        let f = Function {
            pci_address: "0000:03:00.2".into(),
            kind: Some(FunctionKind::Vf),
            vendor: Some(0x15b3),
            device: Some(0x101e),
            class: Some(0x020000),
            physfn: Some("0000:03:00.0".into()),
            vf_index: Some(0),
            netdevs: vec!["ens1f0v0".into()],
            card: Some("dsn:01-02-03-04-05-06-07-08".into()),
            ..Function::default()
        };
        let d = host_device(&f);
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "pci_address": "0000:03:00.2", "class": "vf", "vendor_id": "15b3",
                "device_id": "101e", "physfn": "0000:03:00.0", "vf_index": 0,
                "netdev": "ens1f0v0", "kind": "vf", "card": "dsn:01-02-03-04-05-06-07-08"
            })
        );
        let rdma = Function {
            rdma: Some(crate::discover::RdmaDevice {
                device: "mlx5_3".into(),
                uverbs: Some("/dev/infiniband/uverbs3".into()),
                rdma_cm: Some("/dev/infiniband/rdma_cm".into()),
            }),
            ..f
        };
        assert_eq!(
            serde_json::to_value(host_device(&rdma)).unwrap()["rdma"],
            serde_json::json!({"device": "mlx5_3", "uverbs": "/dev/infiniband/uverbs3",
                               "rdma_cm": "/dev/infiniband/rdma_cm"})
        );
    }
}
