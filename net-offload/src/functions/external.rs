//! `external`: functions made outside the agent — VFs or scalable functions
//! that the DPU's provisioning (firmware `NUM_OF_VFS`, `mlxdevm` scripts, a
//! BFB's `bf.cfg`) already created, whose representors already exist. The
//! agent programs nothing on them: it only names each function's
//! representor by the BlueField pattern (`{pf}vf{vf}` → `pf0vf3`) so the
//! network pipeline can attach its ports, and forgets it on delete.
//!
//! It is also what the large-scale benchmarks use with an Open vSwitch
//! started with `--enable-dummy=override`, where every `system` port is a
//! dummy netdev: thousands of representors without thousands of kernel
//! devices. Whether the representor really exists is the switch's to tell
//! (a port whose representor is absent gets no ofport and stays Pending).

use super::{
    Applied, ExecuteFuture, FunctionAction, FunctionBackend, FunctionDesired, FunctionType, Slot,
    UnsupportedReason, foreign_action, naming, no_sub_functions,
};

/// Names representors; changes nothing.
#[derive(Debug, Clone)]
pub struct ExternalBackend {
    representor_pattern: String,
}

impl Default for ExternalBackend {
    fn default() -> Self {
        ExternalBackend {
            representor_pattern: naming::DEFAULT_REPRESENTOR_PATTERN.to_string(),
        }
    }
}

impl ExternalBackend {
    pub fn with_pattern(pattern: impl Into<String>) -> Self {
        ExternalBackend {
            representor_pattern: pattern.into(),
        }
    }

    fn representor(&self, d: &FunctionDesired, vf: u32) -> String {
        naming::representor_from_pattern(&self.representor_pattern, &d.pf, vf)
    }
}

impl FunctionBackend for ExternalBackend {
    fn name(&self) -> &'static str {
        "external"
    }

    fn plan_apply(&self, d: &FunctionDesired) -> Vec<FunctionAction> {
        if d.type_ != FunctionType::Net {
            return vec![FunctionAction::Unsupported {
                reason: UnsupportedReason::NoEmulation,
                message: "the external functions backend only names net representors; storage functions need the storage backend's emulation".into(),
            }];
        }
        // The pattern names VF representors; an SF's is not guessed.
        let Slot::Vf(vf) = d.slot else {
            return vec![no_sub_functions(self.name())];
        };
        vec![FunctionAction::NameRepresentor {
            pf: d.pf.clone(),
            vf,
            representor: self.representor(d, vf),
        }]
    }

    fn plan_remove(&self, id: &str, _slot: Option<(&str, Slot)>) -> Vec<FunctionAction> {
        vec![FunctionAction::Nothing {
            why: format!("function {id} is made outside the agent, nothing to remove"),
        }]
    }

    fn execute<'a>(&'a self, action: &'a FunctionAction) -> ExecuteFuture<'a> {
        Box::pin(async move {
            match action {
                FunctionAction::NameRepresentor { representor, .. } => Ok(Some(Applied::Ready {
                    representor: representor.clone(),
                    host_device: None,
                })),
                other => Err(foreign_action(self.name(), other)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(type_: FunctionType, vf: u32) -> FunctionDesired {
        FunctionDesired {
            id: "web-1".into(),
            type_,
            pf: "pf1".into(),
            slot: Slot::Vf(vf),
            mac: None,
            vlan: None,
            max_tx_rate_mbps: None,
            trust: false,
            spoof_check: true,
            rdma: false,
            tenant: None,
        }
    }

    #[tokio::test]
    async fn names_the_bluefield_representor_and_makes_nothing() {
        let b = ExternalBackend::default();
        let applied = b.apply(&desired(FunctionType::Net, 7)).await.unwrap();
        assert_eq!(
            applied,
            Applied::Ready {
                representor: "pf1vf7".into(),
                host_device: None
            }
        );
        assert!(b.observe().await.unwrap().is_empty());
        assert!(matches!(
            b.apply(&desired(FunctionType::Nvme, 0)).await.unwrap(),
            Applied::Unsupported { .. }
        ));
        let custom = ExternalBackend::with_pattern("rep{pfnum}-{vf}");
        assert_eq!(
            custom.representor(&desired(FunctionType::Net, 2), 2),
            "rep1-2"
        );
        let mut sf = desired(FunctionType::Net, 0);
        sf.slot = Slot::Sf(88);
        assert!(matches!(
            b.apply(&sf).await.unwrap(),
            Applied::Unsupported {
                reason: UnsupportedReason::NoSubFunctions,
                ..
            }
        ));
    }
}
