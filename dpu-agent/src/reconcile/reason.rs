//! The closed set of reasons a controller writes into a status condition
//! (and into a [`super::ReconcileError`]). Each renders to the same text the
//! API has always carried in `conditions[].reason`; metrics label failures
//! with it, so their label set is this enum (plus `Other` for a stored
//! condition written by an older agent with a reason no longer here).

use std::fmt;

macro_rules! reasons {
    ($($(#[$doc:meta])* $name:ident,)*) => {
        /// Why a condition is what it is; `as_str` is the wire text.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Reason {
            $($(#[$doc])* $name,)*
        }

        impl Reason {
            /// Every reason, in declaration order.
            pub const ALL: &'static [Reason] = &[$(Reason::$name,)*];

            /// The text in `conditions[].reason` and in metric labels.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $(Reason::$name => stringify!($name),)*
                }
            }
        }
    };
}

reasons! {
    // Success reasons (a condition that is True).
    /// A function is programmed (VF configured, representor found).
    Programmed,
    /// A tunnel's or function's changes are in place.
    Applied,
    /// A tenant's usage was counted.
    UsageCounted,
    /// A network's flows are installed in the switch.
    FlowsInstalled,
    /// A tunnel's SAs and policies are installed.
    SasAndPoliciesInstalled,
    /// A TLS listener is bound and listening.
    Listening,
    /// A function's RoCE is on (switched by the backend, or its host
    /// reports an RDMA device on it).
    RdmaEnabled,

    // Progress and failure reasons.
    /// An emulated storage function waits for a volume to be attached.
    AwaitingVolume,
    /// Changes were applied; the next observation confirms them.
    Converging,
    /// The backend refused or failed an operation.
    BackendError,
    /// The backend does not answer.
    BackendUnreachable,
    /// The object conflicts with another one in the kernel.
    Conflict,
    /// The function the object needs is not available.
    FunctionUnavailable,
    /// A volume's host NQN is another volume's or a function's.
    HostNqnRefused,
    /// An agent-internal failure (a worker task died).
    Internal,
    /// Sealed key material does not open or is malformed.
    InvalidKey,
    /// The stored spec does not parse or is not realizable as written.
    InvalidSpec,
    /// The kernel refused a change.
    KernelRefused,
    /// The backend cannot emulate this kind of function.
    NoEmulation,
    /// Every VF of the PF is taken.
    NoFreeVf,
    /// Every SF number the tenant may be given on the PF is taken.
    NoFreeSf,
    /// No XFRM interface id could be given to the tunnel.
    NoIfId,
    /// No XFRM reqid could be given to the tunnel.
    NoReqid,
    /// The tenant's network context could not be made.
    NoTenantContext,
    /// The backend for this kind is not configured.
    NotConfigured,
    /// Applied, but a fresh observation still differs.
    NotConverged,
    /// No RDMA device is reported on the function yet, and its backend has
    /// no RoCE switch of its own.
    RdmaNotReported,
    /// A running listener refused the new configuration.
    ReloadRefused,
    /// The function's representor netdev is missing.
    RepresentorMissing,
    /// Another volume holds the same source.
    SourceInUse,
    /// The SF number is held by another function.
    SfInUse,
    /// A listener could not start.
    StartFailed,
    /// The switch reconciler has not processed the change yet.
    SwitchBusy,
    /// The switch (OVS) is not reachable or not programmed.
    SwitchUnavailable,
    /// Tearing down what the object owned failed.
    TeardownFailed,
    /// The tenant's network context could not be released.
    TenantContextNotRemoved,
    /// This backend cannot do what the spec asks.
    Unsupported,
    /// The VF is held by another function.
    VfInUse,
    /// The kernel's XFRM netlink is not usable.
    XfrmUnavailable,
}

impl Reason {
    /// The reason whose wire text is `s`.
    pub fn parse(s: &str) -> Option<Reason> {
        Reason::ALL.iter().copied().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<storage_offload::plan::RefusalReason> for Reason {
    fn from(r: storage_offload::plan::RefusalReason) -> Reason {
        use storage_offload::plan::RefusalReason;
        match r {
            RefusalReason::HostNqn => Reason::HostNqnRefused,
            RefusalReason::SourceInUse => Reason::SourceInUse,
        }
    }
}

impl From<net_offload::functions::UnsupportedReason> for Reason {
    fn from(r: net_offload::functions::UnsupportedReason) -> Reason {
        match r {
            net_offload::functions::UnsupportedReason::NoEmulation => Reason::NoEmulation,
            net_offload::functions::UnsupportedReason::SwitchdevField
            | net_offload::functions::UnsupportedReason::NoSubFunctions => Reason::Unsupported,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire text is the variant's name and parses back; no two share
    /// one (the API contract: condition reasons keep their text).
    #[test]
    fn reasons_render_to_their_wire_text_and_parse_back() {
        assert_eq!(Reason::InvalidSpec.as_str(), "InvalidSpec");
        assert_eq!(Reason::NoFreeVf.to_string(), "NoFreeVf");
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::ALL.len());
        assert_eq!(Reason::parse("anything a controller invents"), None);
    }
}
