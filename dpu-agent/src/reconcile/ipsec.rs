//! The `ipsec-tunnels` controller: each tunnel becomes two ESP SAs and its
//! policies in the kernel's XFRM database (via `dpu_crypto`), with status
//! read back from the kernel (offload really active, byte/packet counters,
//! rekeys).
//!
//! Ownership is the reqid: each tunnel gets one from `dpu_crypto::plan::
//! REQID_RANGE`, recorded in `status.reqid` so it survives restarts. Agent
//! state whose reqid no stored tunnel holds is removed; other state is left
//! alone. Keys are opened from the store only to build the SAs, live in
//! zeroizing buffers, and appear in no status, log, error or plan line.
//!
//! Scope (TENANCY.md invariant 2): a `tenant`-scope tunnel's SAs and
//! policies all carry `XFRMA_IF_ID` = its tenant's id, so they match only
//! packets that pass through that tenant's XFRM interface — never the
//! agent's, the underlay's or another tenant's traffic, whatever the
//! selectors say. The id is allocated per tenant from [`TENANT_IF_ID_RANGE`]
//! (first candidate derived from the tenant name, then the next free one),
//! recorded in each tunnel's `status.if_id` so it survives restarts, and is
//! never 0. The tenant's network context (namespace) exists while it has a
//! tenant-scope tunnel. `infrastructure` tunnels (underlay, fleet
//! controller only) carry no `if_id`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::error_chain;
use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, Phase, Status, WriteOutcome};
use dpu_api::report::IpsecTunnelReport;
use dpu_api::spec::{self, IpsecTunnelSpec};
use dpu_crypto::apply::{ApplyReport, IpsecBackend, XfrmBackend, apply};
use dpu_crypto::keys::SaKey;
use dpu_crypto::model::{Cipher, Ipv4Net, Mode, OffloadActive, OffloadRequest, SaSpec, Tunnel};
use dpu_crypto::plan::{Observed, Plan, REQID_RANGE, TunnelState, plan, plan_teardown};
use dpu_crypto::xfrm::socket::XfrmError;

use super::set_programmed;
use super::spec_error::{AllocError, SpecError};
use super::tenant_netns::TenantContexts;
use super::{
    Context, Controller, Outcome, Reason, ReconcileError, Reconciling, condition, not_ready,
    unparsable_spec,
};
use crate::store::StoredObject;

/// XFRM interface ids of tenants: "DR" in the top byte pair, 65536 tenants.
pub const TENANT_IF_ID_RANGE: std::ops::Range<u32> = 0x0d52_0000..0x0d53_0000;

/// How the controller reaches the kernel.
#[derive(Debug, Clone, Default)]
pub struct IpsecConfig {
    /// Program XFRM in this network namespace (`/run/netns/NAME`) instead of
    /// the agent's own.
    pub netns: Option<PathBuf>,
    /// The uplink netdev offload is requested on; none → software only.
    pub uplink: Option<String>,
    /// How long an old SA outlives its replacement after a rekey.
    pub rekey_grace: Option<Duration>,
    /// Program a private network namespace held only by the agent's socket
    /// (dev mode: never touch the host's IPsec state). Lost on restart and
    /// re-programmed by the next reconcile.
    pub private_netns: bool,
}

const DEFAULT_GRACE: Duration = Duration::from_secs(30);
/// Counters are polled this often.
const POLL: Duration = Duration::from_secs(30);

type Opener = dyn Fn() -> Result<Box<dyn IpsecBackend>, XfrmError> + Send + Sync;

pub struct IpsecTunnels {
    config: IpsecConfig,
    opener: Box<Opener>,
    backend: Arc<Mutex<Option<Box<dyn IpsecBackend>>>>,
    /// Object `tenant/id` → reqid; seeded from stored status.
    reqids: Mutex<BTreeMap<String, u32>>,
    /// Tenant → XFRM interface id; seeded from stored status.
    if_ids: Mutex<BTreeMap<String, u32>>,
    contexts: Arc<TenantContexts>,
    /// The last kernel observation, for `plan` (which must not do I/O).
    last_observed: Arc<Mutex<Option<Observed>>>,
    connected: Arc<std::sync::atomic::AtomicBool>,
    /// Per tunnel `(tenant, id)`: the kernel's counters as the last
    /// reconcile read them, and the agent's rekey count, for `/metrics`.
    counters: Mutex<BTreeMap<(String, String), (TunnelState, u64)>>,
    /// Why `offload: auto` fell back, per tunnel, as the kernel said when
    /// its SAs were installed (kept while the SAs stand; the status says
    /// it at every reconcile, not only at the one that installed them).
    fallbacks: Mutex<BTreeMap<(String, String), String>>,
}

impl std::fmt::Debug for IpsecTunnels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IpsecTunnels")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl IpsecTunnels {
    pub fn new(config: IpsecConfig) -> Self {
        let netns = config.netns.clone();
        let private = config.private_netns;
        Self::with_backend(config, move || {
            let backend = if private {
                XfrmBackend::open_private()?
            } else {
                XfrmBackend::open(netns.as_deref())?
            };
            Ok(Box::new(backend) as Box<dyn IpsecBackend>)
        })
    }

    /// The controller for the agent's mode: `run` programs the host's XFRM
    /// (offload on the uplink of `[ipsec] uplink`); `dev` programs a
    /// private namespace so trying the agent never changes the host's IPsec.
    ///
    /// `DPU_IPSEC_NETNS=/run/netns/NAME` programs that namespace's XFRM
    /// database instead, in either mode (tests that watch the XFRM state
    /// and traffic of a namespace they made).
    pub fn for_config(cfg: &crate::config::Config) -> Self {
        if let Some(ns) = std::env::var_os("DPU_IPSEC_NETNS").filter(|v| !v.is_empty()) {
            return IpsecTunnels::new(IpsecConfig {
                netns: Some(ns.into()),
                ..IpsecConfig::default()
            });
        }
        match cfg.mode {
            crate::config::Mode::Run => IpsecTunnels::new(IpsecConfig {
                uplink: cfg.ipsec_uplink.clone(),
                ..IpsecConfig::default()
            }),
            crate::config::Mode::Dev => IpsecTunnels::new(IpsecConfig {
                private_netns: true,
                ..IpsecConfig::default()
            }),
        }
    }

    /// With another backend (tests).
    pub fn with_backend(
        config: IpsecConfig,
        opener: impl Fn() -> Result<Box<dyn IpsecBackend>, XfrmError> + Send + Sync + 'static,
    ) -> Self {
        IpsecTunnels {
            config,
            opener: Box::new(opener),
            backend: Arc::new(Mutex::new(None)),
            reqids: Mutex::new(BTreeMap::new()),
            if_ids: Mutex::new(BTreeMap::new()),
            contexts: Default::default(),
            last_observed: Arc::new(Mutex::new(None)),
            connected: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            counters: Mutex::new(BTreeMap::new()),
            fallbacks: Mutex::new(BTreeMap::new()),
        }
    }

    /// Uses the tenant namespaces of `contexts` (shared with the TLS
    /// controller).
    pub fn with_contexts(mut self, contexts: Arc<TenantContexts>) -> Self {
        self.contexts = contexts;
        self
    }

    /// The `if_id` of `obj`'s tunnel: its tenant's for tenant scope (allocated
    /// unless `peek`), none for infrastructure scope.
    fn if_id(
        &self,
        ctx: &Context,
        obj: &StoredObject,
        s: &IpsecTunnelSpec,
        peek: bool,
    ) -> Result<Option<u32>, AllocError> {
        if s.scope() == spec::IpsecScope::Infrastructure {
            return Ok(None);
        }
        let mut guard = self.if_ids.lock().unwrap_or_else(|e| e.into_inner());
        if peek {
            let mut copy = guard.clone();
            return allocate_if_id(&mut copy, ctx, &obj.tenant).map(Some);
        }
        allocate_if_id(&mut guard, ctx, &obj.tenant).map(Some)
    }

    fn grace(&self) -> Duration {
        self.config.rekey_grace.unwrap_or(DEFAULT_GRACE)
    }

    /// Reqids of every stored tunnel (allocating for `obj` if needed), and
    /// `obj`'s.
    fn reqids(
        &self,
        ctx: &Context,
        obj: &StoredObject,
    ) -> Result<(u32, BTreeSet<u32>), AllocError> {
        let mut table = self.reqids.lock().unwrap_or_else(|e| e.into_inner());
        allocate(&mut table, ctx, obj)
    }

    /// Like `reqids` but without recording an allocation (for `plan`).
    fn reqids_peek(
        &self,
        ctx: &Context,
        obj: &StoredObject,
    ) -> Result<(u32, BTreeSet<u32>), AllocError> {
        let mut table = self
            .reqids
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        allocate(&mut table, ctx, obj)
    }

    fn uplink_ifindex(&self) -> Option<u32> {
        // An ifindex only means something in our own namespace.
        if self.config.netns.is_some() {
            return None;
        }
        let name = std::ffi::CString::new(self.config.uplink.clone()?).ok()?;
        // SAFETY: name is a valid NUL-terminated string.
        let idx = unsafe { libc::if_nametoindex(name.as_ptr()) };
        (idx != 0).then_some(idx)
    }
}

/// Syncs `table` with the stored tunnels' `status.reqid` and returns
/// `obj`'s reqid (the lowest free one if it has none) and everyone else's.
fn allocate(
    table: &mut BTreeMap<String, u32>,
    ctx: &Context,
    obj: &StoredObject,
) -> Result<(u32, BTreeSet<u32>), AllocError> {
    let all = ctx.store.list(Kind::IpsecTunnel, None);
    let me = name(obj);
    let present: BTreeSet<String> = all.iter().map(|o| name(o)).collect();
    table.retain(|k, _| present.contains(k) || *k == me);
    for o in &all {
        if let Some(r) = o.status.facts.reqid
            && REQID_RANGE.contains(&r)
        {
            table.entry(name(o)).or_insert(r);
        }
    }
    let mine = match table.get(&me) {
        Some(r) => *r,
        None => {
            let used: BTreeSet<u32> = table.values().copied().collect();
            let free = REQID_RANGE
                .clone()
                .find(|r| !used.contains(r))
                .ok_or(AllocError::Reqids)?;
            table.insert(me.clone(), free);
            free
        }
    };
    let others = table
        .iter()
        .filter(|(k, _)| **k != me)
        .map(|(_, r)| *r)
        .collect();
    Ok((mine, others))
}

/// FNV-1a, for a stable first candidate of a tenant's `if_id`.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// Syncs `table` with the stored tenant-scope tunnels' `status.if_id` and
/// returns `tenant`'s: the recorded one, else the first free id from
/// `fnv1a(tenant)` on (so ids rarely move, and two tenants never share one).
fn allocate_if_id(
    table: &mut BTreeMap<String, u32>,
    ctx: &Context,
    tenant: &str,
) -> Result<u32, AllocError> {
    let all = ctx.store.list(Kind::IpsecTunnel, None);
    let present: BTreeSet<&str> = all.iter().map(|o| o.tenant.as_str()).collect();
    table.retain(|t, _| present.contains(t.as_str()) || t == tenant);
    for o in &all {
        if let Some(v) = o.status.facts.if_id
            && TENANT_IF_ID_RANGE.contains(&v)
        {
            let taken = table.iter().any(|(t, id)| *id == v && *t != o.tenant);
            if !taken {
                table.entry(o.tenant.clone()).or_insert(v);
            }
        }
    }
    if let Some(id) = table.get(tenant) {
        return Ok(*id);
    }
    let used: BTreeSet<u32> = table.values().copied().collect();
    let len = TENANT_IF_ID_RANGE.end - TENANT_IF_ID_RANGE.start;
    let first = fnv1a(tenant) % len;
    let id = (0..len)
        .map(|i| TENANT_IF_ID_RANGE.start + (first + i) % len)
        .find(|id| !used.contains(id))
        .ok_or(AllocError::IfIds)?;
    table.insert(tenant.to_string(), id);
    Ok(id)
}

/// Replaces the placeholder for ipsec-tunnels with the controller for
/// `cfg`'s mode (see [`IpsecTunnels::for_config`]), and the TLS listeners'
/// controller with one sharing the same tenant network contexts
/// ([`TenantContexts::for_config`]).
pub fn with_configured(
    cfg: &crate::config::Config,
    controllers: Vec<Arc<dyn Controller>>,
) -> Vec<Arc<dyn Controller>> {
    let contexts = Arc::new(TenantContexts::for_config(cfg));
    controllers
        .into_iter()
        .map(|c| {
            if c.kind() == Kind::IpsecTunnel && c.backend().is_none() {
                Arc::new(IpsecTunnels::for_config(cfg).with_contexts(contexts.clone()))
                    as Arc<dyn Controller>
            } else if c.kind() == Kind::TlsListener {
                Arc::new(super::tls::TlsListeners::default().with_contexts(contexts.clone()))
                    as Arc<dyn Controller>
            } else {
                c
            }
        })
        .collect()
}

fn name(o: &StoredObject) -> String {
    format!("{}/{}", o.tenant, o.id)
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn typed_spec(obj: &StoredObject) -> Option<IpsecTunnelSpec> {
    obj.spec.as_ipsec_tunnel().cloned()
}

fn open_key(
    ctx: &Context,
    obj: &StoredObject,
    field: &'static str,
    cipher: Cipher,
) -> Result<SaKey, SpecError> {
    let text = ctx
        .store
        .open_secret(obj, field)
        .map_err(|source| SpecError::Sealed { field, source })?
        .ok_or(SpecError::NotSet { field })?;
    SaKey::from_hex(&text, cipher).map_err(|source| SpecError::Key { field, source })
}

/// The crypto crate's tunnel for a stored object; errors name the field.
fn tunnel(
    ctx: &Context,
    obj: &StoredObject,
    s: &IpsecTunnelSpec,
    reqid: u32,
    offload_dev: Option<u32>,
    if_id: Option<u32>,
) -> Result<Tunnel, SpecError> {
    let cipher = match s.cipher {
        spec::Cipher::AesGcm128 => Cipher::AesGcm128,
        spec::Cipher::AesGcm256 => Cipher::AesGcm256,
    };
    let addr = |field: &'static str, v: &str| {
        v.parse()
            .map_err(|source| SpecError::NotIpv4 { field, source })
    };
    let nets = |field: &'static str, v: &[String]| -> Result<Vec<Ipv4Net>, SpecError> {
        v.iter()
            .enumerate()
            .map(|(index, n)| {
                n.parse().map_err(|source| SpecError::NotIpv4Cidr {
                    field,
                    index,
                    source,
                })
            })
            .collect()
    };
    Ok(Tunnel {
        name: name(obj),
        reqid,
        local: addr("local", &s.local)?,
        remote: addr("remote", &s.remote)?,
        local_subnets: nets("local_subnets", &s.local_subnets)?,
        remote_subnets: nets("remote_subnets", &s.remote_subnets)?,
        mode: match s.mode {
            spec::IpsecMode::Tunnel => Mode::Tunnel,
            spec::IpsecMode::Transport => Mode::Transport,
        },
        cipher,
        inbound: SaSpec {
            spi: s.spi_in,
            key: open_key(ctx, obj, "key_in", cipher)?,
        },
        outbound: SaSpec {
            spi: s.spi_out,
            key: open_key(ctx, obj, "key_out", cipher)?,
        },
        replay_window: s.replay_window.unwrap_or(128),
        esn: s.esn.unwrap_or(false),
        offload: match s.offload {
            spec::OffloadRequest::Auto => OffloadRequest::Auto,
            spec::OffloadRequest::Packet => OffloadRequest::Packet,
            spec::OffloadRequest::Crypto => OffloadRequest::Crypto,
            spec::OffloadRequest::None => OffloadRequest::None,
        },
        offload_dev,
        if_id,
    })
}

fn backend_error(e: &XfrmError) -> ReconcileError {
    ReconcileError {
        reason: Reason::XfrmUnavailable,
        message: format!(
            "cannot talk to the kernel's XFRM netlink: {}; check that xfrm_user is loaded and the agent has CAP_NET_ADMIN",
            error_chain(e)
        ),
    }
}

/// Runs `f` with the backend on a blocking thread, opening it if needed and
/// dropping it after an I/O error so the next reconcile reopens it.
async fn with_backend<T: Send + 'static>(
    ctrl: &IpsecTunnels,
    f: impl FnOnce(&mut dyn IpsecBackend) -> Result<T, XfrmError> + Send + 'static,
) -> Result<T, ReconcileError> {
    let slot = ctrl.backend.clone();
    let opened = {
        let guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        guard.is_some()
    };
    let fresh = if opened {
        None
    } else {
        Some((ctrl.opener)().map_err(|e| {
            ctrl.connected
                .store(false, std::sync::atomic::Ordering::Relaxed);
            backend_error(&e)
        })?)
    };
    let connected = ctrl.connected.clone();
    tokio::task::spawn_blocking(move || {
        let mut guard = slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = fresh {
            *guard = Some(b);
        }
        let Some(backend) = guard.as_mut() else {
            return Err(ReconcileError {
                reason: Reason::XfrmUnavailable,
                message: "the XFRM backend is not open".into(),
            });
        };
        match f(backend.as_mut()) {
            Ok(v) => {
                connected.store(true, std::sync::atomic::Ordering::Relaxed);
                Ok(v)
            }
            Err(e) => {
                connected.store(false, std::sync::atomic::Ordering::Relaxed);
                *guard = None;
                Err(backend_error(&e))
            }
        }
    })
    .await
    .map_err(|e| ReconcileError {
        reason: Reason::Internal,
        message: format!("the XFRM worker failed: {e}"),
    })?
}

/// The spec's name of an offload request.
fn offload_name(o: spec::OffloadRequest) -> &'static str {
    match o {
        spec::OffloadRequest::Auto => "auto",
        spec::OffloadRequest::Packet => "packet",
        spec::OffloadRequest::Crypto => "crypto",
        spec::OffloadRequest::None => "none",
    }
}

/// What one reconcile of a tunnel applied and then observed, for its status.
struct TunnelRound<'a> {
    spec: &'a IpsecTunnelSpec,
    reqid: u32,
    /// The tenant's XFRM interface id (tenant scope), `None` for
    /// infrastructure scope.
    if_id: Option<u32>,
    /// Whether an uplink is configured for offload.
    uplink: bool,
    /// The tenant's XFRM interface as the report shows it, and what the
    /// condition adds when it could not be made.
    xfrm_interface: Option<&'a str>,
    xfrm_note: &'a str,
    /// The plan applied, what applying it did, and the tunnel's state
    /// observed afterwards with the agent's rekey count.
    first: &'a Plan,
    applied: &'a ApplyReport,
    state: &'a TunnelState,
    rekeys: u64,
    /// Why `offload: auto` fell back (the kernel's refusals), when known.
    fallback: Option<&'a str>,
}

/// A tunnel's status from one reconcile (`r`): the typed report from the
/// state observed after applying; `Degraded` when a change failed or a
/// foreign policy holds a selector, `Ready` when both SAs and all policies
/// are in place, else `Pending` (`Converging`). Pure.
fn tunnel_status(mut status: Status, r: &TunnelRound<'_>) -> Status {
    let offload = r.state.offload_active.unwrap_or(OffloadActive::None);
    status.set_report(&IpsecTunnelReport {
        offload_active: Some(offload.name().to_string()),
        bytes_in: r.state.bytes_in,
        bytes_out: r.state.bytes_out,
        packets_in: r.state.packets_in,
        packets_out: r.state.packets_out,
        rekeys: r.rekeys,
        replay_window_drops: r.state.replay_window_drops,
        replay_drops: r.state.replay_drops,
        integrity_failures: r.state.integrity_failures,
        xfrm_interface: r.xfrm_interface.map(str::to_string),
    });
    let requested = r.spec.offload;
    let offload_note = match (requested, r.uplink) {
        (spec::OffloadRequest::None, _) => String::new(),
        (_, false) => "; no uplink configured for offload, running in software".into(),
        (spec::OffloadRequest::Auto, true) if offload != OffloadActive::Packet => match r.fallback {
            Some(why) => format!("; offload auto fell back to {}: {why}", offload.name()),
            None => "; offload auto: packet offload not in use (refused when the SAs were installed, before this agent started)".into(),
        },
        _ => String::new(),
    };
    // An offload the spec insists on (`packet` / `crypto`) that the
    // uplink refused leaves the tunnel without its SAs: nothing is carried,
    // so it is Failed, not Degraded (`auto` would have fallen back).
    let offload_refused = matches!(
        requested,
        spec::OffloadRequest::Packet | spec::OffloadRequest::Crypto
    ) && r.uplink
        && !r.state.programmed
        && r.first.conflicts.is_empty()
        && !r.applied.failures.is_empty()
        && r.applied.failures.iter().all(|f| {
            matches!(
                f.error.errno(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | libc::ENODEV | libc::EPROTONOSUPPORT)
            )
        });
    if !r.applied.failures.is_empty() || !r.first.conflicts.is_empty() {
        status.phase = if offload_refused {
            Phase::Failed
        } else {
            Phase::Degraded
        };
        let mut problems: Vec<String> = r.applied.failures.iter().map(|f| error_chain(f)).collect();
        problems.extend(r.first.conflicts.iter().cloned());
        status.set_condition(condition(
            "Programmed",
            ConditionStatus::False,
            if r.first.conflicts.is_empty() {
                Reason::KernelRefused
            } else {
                Reason::Conflict
            },
            format!(
                "{}{} of {} changes failed: {}",
                if offload_refused {
                    format!(
                        "offload {} refused by the uplink, nothing carried (offload auto would fall back): ",
                        offload_name(requested)
                    )
                } else {
                    String::new()
                },
                problems.len(),
                r.first.actions.len() + r.first.conflicts.len(),
                problems.join("; ")
            ),
        ));
    } else if r.state.programmed {
        set_programmed(
            &mut status,
            Phase::Ready,
            ConditionStatus::True,
            Reason::SasAndPoliciesInstalled,
            format!(
                "SAs in 0x{:08x} / out 0x{:08x}, reqid 0x{:08x}, offload {}, {}{offload_note}",
                r.spec.spi_in,
                r.spec.spi_out,
                r.reqid,
                offload.name(),
                match r.if_id {
                    Some(id) => format!(
                        "tenant scope: if_id 0x{id:08x} on every SA and policy, so only traffic entering the tenant's XFRM interface is carried{}",
                        r.xfrm_note
                    ),
                    None => "infrastructure scope (no if_id)".into(),
                }
            ),
        );
    } else {
        set_programmed(
            &mut status,
            Phase::Pending,
            ConditionStatus::False,
            Reason::Converging,
            format!("{} changes applied; checking again", r.applied.applied),
        );
    }
    status
}

impl Controller for IpsecTunnels {
    fn kind(&self) -> Kind {
        Kind::IpsecTunnel
    }

    fn reconcile<'a>(&'a self, ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a> {
        Box::pin(async move {
            let mut status = obj.status.clone();
            let mut report = status.report::<IpsecTunnelReport>();
            let (reqid, others) = self
                .reqids(ctx, obj)
                .map_err(|e| ReconcileError::new(Reason::NoReqid, e.to_string()))?;
            status.facts.reqid = Some(reqid);

            if obj.deleting {
                let who = name(obj);
                let applied = with_backend(self, move |b| {
                    let observed = b.observe()?;
                    Ok(apply(b, &plan_teardown(reqid, &who, &observed)))
                })
                .await?;
                if let Some(f) = applied.failures.first() {
                    return Err(ReconcileError {
                        reason: Reason::TeardownFailed,
                        message: error_chain(f),
                    });
                }
                self.reqids
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name(obj));
                self.counters
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(obj.tenant.clone(), obj.id.clone()));
                self.fallbacks
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&(obj.tenant.clone(), obj.id.clone()));
                self.contexts
                    .release_unless_needed(&ctx.store, &obj.tenant)
                    .await
                    .map_err(|e| ReconcileError {
                        reason: Reason::TenantContextNotRemoved,
                        message: error_chain(&e),
                    })?;
                return Ok(Outcome::finalized(status));
            }

            let Some(spec) = typed_spec(obj) else {
                return Ok(unparsable_spec(status, "Programmed"));
            };
            let if_id = self
                .if_id(ctx, obj, &spec, false)
                .map_err(|e| ReconcileError::new(Reason::NoIfId, e.to_string()))?;
            let mut tenant_ns = None;
            match if_id {
                Some(id) => {
                    status.facts.if_id = Some(id);
                    // The tenant's network context exists while it has a
                    // tenant-scope tunnel.
                    match self.contexts.ensure(&ctx.store, &obj.tenant).await {
                        Ok(ns) => tenant_ns = Some(ns),
                        Err(e) => {
                            return Ok(not_ready(
                                status,
                                Phase::Failed,
                                "Programmed",
                                Reason::NoTenantContext,
                                format!("{}; nothing programmed", error_chain(&e)),
                            ));
                        }
                    }
                }
                None => {
                    status.facts.if_id = None;
                    report.xfrm_interface = None;
                    status.set_report(&report);
                    // A tunnel that became infrastructure-scope may have
                    // been the tenant's last reason for a context.
                    if let Err(e) = self
                        .contexts
                        .release_unless_needed(&ctx.store, &obj.tenant)
                        .await
                    {
                        tracing::warn!(tunnel = %name(obj), error = %error_chain(&e), "cannot release the tenant network context");
                    }
                }
            }
            let desired = match tunnel(ctx, obj, &spec, reqid, self.uplink_ifindex(), if_id) {
                Ok(t) => t,
                Err(e) => {
                    return Ok(not_ready(
                        status,
                        Phase::Failed,
                        "Programmed",
                        Reason::InvalidKey,
                        error_chain(&e),
                    ));
                }
            };
            // The tenant's XFRM interface: what feeds its scoped policies.
            // Not for the private dev namespace (no path to make it in).
            let mut xfrm_note = String::new();
            if let (Some(ns), Some(id)) = (&tenant_ns, if_id) {
                if self.config.private_netns {
                    xfrm_note = "; no XFRM interface in dev mode's private XFRM namespace".into();
                } else {
                    let mut routes: Vec<(std::net::Ipv4Addr, u8)> = desired
                        .selector_pairs()
                        .into_iter()
                        .map(|(_, r)| (r.network(), r.prefix_len()))
                        .collect();
                    routes.sort();
                    routes.dedup();
                    let made = self
                        .contexts
                        .ensure_xfrm_interface(
                            ns,
                            self.config.netns.as_deref(),
                            self.uplink_ifindex().unwrap_or(0),
                            id,
                            routes,
                        )
                        .await;
                    let value = match made {
                        Ok(()) => format!("{} in {}", super::tenant_netns::XFRM_IFNAME, ns.name),
                        Err(e) => {
                            xfrm_note = format!(
                                "; no XFRM interface ({}): the tunnel carries only traffic entering an XFRM interface with if_id 0x{id:08x}",
                                error_chain(&e)
                            );
                            format!("not created: {}", error_chain(&e))
                        }
                    };
                    report.xfrm_interface = Some(value);
                    status.set_report(&report);
                }
            }
            let grace = self.grace();
            let last = self.last_observed.clone();
            let (first, applied, after) = with_backend(self, move |b| {
                let observed = b.observe()?;
                let first = plan(
                    std::slice::from_ref(&desired),
                    &others,
                    &observed,
                    now_secs(),
                    grace,
                );
                let report = apply(b, &first.actions);
                let observed = b.observe()?;
                let after = plan(
                    std::slice::from_ref(&desired),
                    &others,
                    &observed,
                    now_secs(),
                    grace,
                );
                *last.lock().unwrap_or_else(|e| e.into_inner()) = Some(observed);
                Ok((first, report, after))
            })
            .await?;

            let me = name(obj);
            let state = after.state.get(&me).cloned().unwrap_or_default();
            let mut rekeys = report.rekeys;
            if first.rekeys.contains(&me) && applied.failures.is_empty() {
                rekeys += 1;
            }
            self.counters
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    (obj.tenant.clone(), obj.id.clone()),
                    (state.clone(), rekeys),
                );
            let fallback = {
                let key = (obj.tenant.clone(), obj.id.clone());
                let mut fallbacks = self.fallbacks.lock().unwrap_or_else(|e| e.into_inner());
                if spec.offload != spec::OffloadRequest::Auto
                    || state.offload_active == Some(OffloadActive::Packet)
                {
                    fallbacks.remove(&key);
                } else if !applied.offload_fallbacks.is_empty() {
                    let why: Vec<String> = applied
                        .offload_fallbacks
                        .iter()
                        .map(|f| error_chain(f))
                        .collect();
                    fallbacks.insert(key.clone(), why.join("; "));
                }
                fallbacks.get(&key).cloned()
            };
            let status = tunnel_status(
                status,
                &TunnelRound {
                    spec: &spec,
                    reqid,
                    if_id,
                    uplink: self.uplink_ifindex().is_some(),
                    xfrm_interface: report.xfrm_interface.as_deref(),
                    xfrm_note: &xfrm_note,
                    first: &first,
                    applied: &applied,
                    state: &state,
                    rekeys,
                    fallback: fallback.as_deref(),
                },
            );
            let requeue = [first.requeue_after, after.requeue_after, Some(POLL)]
                .into_iter()
                .flatten()
                .min();
            Ok(Outcome {
                status,
                finalized: false,
                requeue_after: requeue,
            })
        })
    }

    fn plan(&self, ctx: &Context, obj: &StoredObject, outcome: WriteOutcome) -> Vec<String> {
        let observed = self
            .last_observed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let note = if observed.is_none() {
            " (kernel not yet observed: planned against an empty XFRM database)"
        } else {
            ""
        };
        let observed = observed.unwrap_or_default();
        let Ok((reqid, others)) = self.reqids_peek(ctx, obj) else {
            return vec!["nothing: no free reqid for this tunnel".into()];
        };
        if outcome == WriteOutcome::Deleted || obj.deleting {
            return plan_teardown(reqid, &name(obj), &observed)
                .iter()
                .map(|a| format!("{a}{note}"))
                .collect();
        }
        let Some(spec) = typed_spec(obj) else {
            return vec!["nothing: the spec does not parse".into()];
        };
        let if_id = match self.if_id(ctx, obj, &spec, true) {
            Ok(id) => id,
            Err(e) => return vec![format!("nothing: {e}")],
        };
        match tunnel(ctx, obj, &spec, reqid, self.uplink_ifindex(), if_id) {
            Err(e) => vec![format!("nothing: {}", error_chain(&e))],
            Ok(t) => {
                let p = plan(&[t], &others, &observed, now_secs(), self.grace());
                p.actions
                    .iter()
                    .map(|a| format!("{a}{note}"))
                    .chain(p.conflicts.iter().map(|c| format!("conflict: {c}")))
                    .collect()
            }
        }
    }

    /// Connected when the XFRM socket opens (it is opened here if no
    /// reconcile has yet), so `/readyz` holds without any tunnel too.
    fn metrics(&self, out: &mut String) {
        let counters = self
            .counters
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        render_tunnel_metrics(out, &counters);
    }

    fn backend(&self) -> Option<(String, bool)> {
        // A reconcile holding the socket knows best: keep its verdict.
        if let Ok(mut slot) = self.backend.try_lock()
            && slot.is_none()
        {
            let opened = (self.opener)();
            self.connected
                .store(opened.is_ok(), std::sync::atomic::Ordering::Relaxed);
            *slot = opened.ok();
        }
        Some((
            "xfrm".into(),
            self.connected.load(std::sync::atomic::Ordering::Relaxed),
        ))
    }
}

/// The per-tunnel families of `/metrics`. Labels: `tenant` and `tunnel` (an
/// authenticated tenant's object id; tunnels count against its quota), and
/// closed sets for `direction` and `reason`.
pub fn render_tunnel_metrics(
    out: &mut String,
    counters: &BTreeMap<(String, String), (TunnelState, u64)>,
) {
    use crate::metrics::{header, sample};
    let families: [(&str, &str, &str); 5] = [
        (
            "dpu_agent_ipsec_bytes_total",
            "counter",
            "Bytes through a tunnel's SAs by direction, from the kernel's XFRM lifetime counters (an SA replaced by a rekey takes its count with it: a counter reset).",
        ),
        (
            "dpu_agent_ipsec_packets_total",
            "counter",
            "Packets through a tunnel's SAs by direction, from the kernel's XFRM lifetime counters.",
        ),
        (
            "dpu_agent_ipsec_dropped_packets_total",
            "counter",
            "Inbound packets the kernel dropped on a tunnel's SAs, by reason: replay_window, replay, integrity (xfrm_stats).",
        ),
        (
            "dpu_agent_ipsec_rekeys_total",
            "counter",
            "Rekeys of a tunnel the agent carried out (kept in status, so it survives restarts).",
        ),
        (
            "dpu_agent_ipsec_tunnel_established",
            "gauge",
            "1 when both current SAs and every policy of the tunnel are in the kernel.",
        ),
    ];
    for (i, (name, type_, help)) in families.iter().enumerate() {
        header(out, name, type_, help);
        for ((tenant, tunnel), (s, rekeys)) in counters {
            let base = [("tenant", tenant.as_str()), ("tunnel", tunnel.as_str())];
            let with = |k: &'static str, v: &'static str| [base[0], base[1], (k, v)];
            match i {
                0 => {
                    sample(out, name, &with("direction", "in"), s.bytes_in);
                    sample(out, name, &with("direction", "out"), s.bytes_out);
                }
                1 => {
                    sample(out, name, &with("direction", "in"), s.packets_in);
                    sample(out, name, &with("direction", "out"), s.packets_out);
                }
                2 => {
                    sample(
                        out,
                        name,
                        &with("reason", "replay_window"),
                        s.replay_window_drops,
                    );
                    sample(out, name, &with("reason", "replay"), s.replay_drops);
                    sample(
                        out,
                        name,
                        &with("reason", "integrity"),
                        s.integrity_failures,
                    );
                }
                3 => sample(out, name, &base, rekeys),
                _ => sample(out, name, &base, u8::from(s.programmed)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use dpu_api::object::{EventType, ObjectKey};
    use serde_json::json;

    use super::*;
    use crate::reconcile::testing::{assert_root, context};
    use crate::store::{Store, StoreError};

    const KEY_IN: &str = "c0ffee00c0ffee00c0ffee00c0ffee00deadbeef";
    const KEY_OUT: &str = "facade00facade00facade00facade00feedf00d";

    struct Netns(String);
    impl Netns {
        fn new(tag: &str) -> Option<Netns> {
            assert_root("network namespaces");
            let name = format!("dpuag-{tag}-{}", std::process::id());
            let st = Command::new("ip")
                .args(["netns", "add", &name])
                .status()
                .ok()?;
            assert!(st.success());
            Some(Netns(name))
        }
        fn ip(&self, args: &str) -> String {
            let out = Command::new("ip")
                .args(["-n", &self.0])
                .args(args.split_whitespace())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
    }
    impl Drop for Netns {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
        }
    }

    /// Status derivation (pure): what the kernel shows after applying
    /// becomes the typed report; both SAs and policies in place is Ready
    /// (naming SPIs, reqid, offload and scope), not yet is Pending, a
    /// failed change or a foreign policy on a selector is Degraded with
    /// `KernelRefused` or `Conflict`.
    #[test]
    fn status_of_a_tunnel_from_what_the_kernel_shows() {
        let spec: IpsecTunnelSpec = serde_json::from_value(json!({
            "local": "192.0.2.1", "remote": "192.0.2.2",
            "local_subnets": ["10.1.0.0/16"], "remote_subnets": ["10.2.0.0/16"],
            "mode": "tunnel", "cipher": "aes-gcm-128",
            "spi_in": 4097, "spi_out": 8193,
            "key_in": KEY_IN, "key_out": KEY_OUT, "offload": "auto"
        }))
        .unwrap();
        let state = TunnelState {
            offload_active: Some(OffloadActive::Crypto),
            bytes_in: 10,
            packets_in: 1,
            bytes_out: 20,
            packets_out: 2,
            programmed: true,
            ..TunnelState::default()
        };
        let (first, applied) = (Plan::default(), ApplyReport::default());
        let round = TunnelRound {
            spec: &spec,
            reqid: 0x100,
            if_id: Some(0x0d52_0001),
            uplink: true,
            xfrm_interface: Some("xfrm-t in t-acme"),
            xfrm_note: "",
            first: &first,
            applied: &applied,
            state: &state,
            rekeys: 3,
            fallback: None,
        };
        let status = tunnel_status(Status::default(), &round);
        assert_eq!(status.phase, Phase::Ready);
        let cond = status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, Reason::SasAndPoliciesInstalled.as_str());
        assert!(
            cond.message.starts_with(
                "SAs in 0x00001001 / out 0x00002001, reqid 0x00000100, offload crypto, tenant scope: if_id 0x0d520001"
            ),
            "{cond:?}"
        );
        assert_no_key(&cond.message);
        let report: IpsecTunnelReport = status.report();
        assert_eq!(report.offload_active.as_deref(), Some("crypto"));
        assert_eq!((report.bytes_in, report.bytes_out), (10, 20));
        assert_eq!((report.packets_in, report.packets_out), (1, 2));
        assert_eq!(report.rekeys, 3);
        assert_eq!(report.xfrm_interface.as_deref(), Some("xfrm-t in t-acme"));

        // `auto` on an uplink that refused packet offload says why (the
        // kernel's refusal, remembered from the install), or, when the SAs
        // predate this agent, that packet offload is not in use.
        let why = "SA spi 0x00001001: offload request refused, trying the next: the kernel refused adding an SA: Invalid argument (os error 22)";
        let cond = tunnel_status(
            Status::default(),
            &TunnelRound {
                fallback: Some(why),
                ..round
            },
        )
        .condition("Programmed")
        .cloned()
        .unwrap();
        assert!(
            cond.message
                .ends_with(&format!("; offload auto fell back to crypto: {why}")),
            "{cond:?}"
        );
        let cond = tunnel_status(Status::default(), &round)
            .condition("Programmed")
            .cloned()
            .unwrap();
        assert!(
            cond.message.ends_with("; offload auto: packet offload not in use (refused when the SAs were installed, before this agent started)"),
            "{cond:?}"
        );
        let packet = TunnelState {
            offload_active: Some(OffloadActive::Packet),
            ..state.clone()
        };
        let cond = tunnel_status(
            Status::default(),
            &TunnelRound {
                state: &packet,
                fallback: Some(why),
                ..round
            },
        )
        .condition("Programmed")
        .cloned()
        .unwrap();
        assert!(!cond.message.contains("fell back"), "{cond:?}");

        let software = TunnelRound {
            if_id: None,
            uplink: false,
            ..round
        };
        let cond = tunnel_status(Status::default(), &software)
            .condition("Programmed")
            .cloned()
            .unwrap();
        assert!(
            cond.message
                .ends_with("infrastructure scope (no if_id); no uplink configured for offload, running in software"),
            "{cond:?}"
        );

        let not_yet = TunnelState {
            programmed: false,
            ..state.clone()
        };
        let applied2 = ApplyReport {
            applied: 4,
            ..ApplyReport::default()
        };
        let status = tunnel_status(
            Status::default(),
            &TunnelRound {
                state: &not_yet,
                applied: &applied2,
                ..software
            },
        );
        assert_eq!(status.phase, Phase::Pending);
        let cond = status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, Reason::Converging.as_str());
        assert_eq!(cond.message, "4 changes applied; checking again");

        let failed = ApplyReport {
            applied: 1,
            failures: vec![dpu_crypto::apply::ActionFailure {
                action: "add SA".into(),
                error: XfrmError::kernel("XFRM_MSG_NEWSA", libc::EINVAL),
            }],
            ..ApplyReport::default()
        };
        let one = Plan {
            actions: vec![dpu_crypto::plan::Action::DeleteSa {
                tunnel: None,
                id: dpu_crypto::xfrm::SaId {
                    daddr: "192.0.2.2".parse().unwrap(),
                    spi: 0x1001,
                    proto: 50,
                    family: 2,
                    mark: None,
                },
                why: dpu_crypto::plan::Why::Orphan,
            }],
            ..Plan::default()
        };
        let status = tunnel_status(
            Status::default(),
            &TunnelRound {
                first: &one,
                applied: &failed,
                ..software
            },
        );
        assert_eq!(status.phase, Phase::Degraded);
        let cond = status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, Reason::KernelRefused.as_str());
        assert!(
            cond.message.starts_with("1 of 1 changes failed: "),
            "{cond:?}"
        );

        // `packet` asked for and refused by the uplink (EINVAL: 6.1 knows
        // no packet offload): no SAs, so Failed with the kernel's reason.
        let mut packet_spec = spec.clone();
        packet_spec.offload = spec::OffloadRequest::Packet;
        let status = tunnel_status(
            Status::default(),
            &TunnelRound {
                spec: &packet_spec,
                uplink: true,
                state: &not_yet,
                first: &one,
                applied: &failed,
                ..software
            },
        );
        assert_eq!(status.phase, Phase::Failed);
        let cond = status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, Reason::KernelRefused.as_str());
        assert!(
            cond.message.starts_with("offload packet refused by the uplink, nothing carried (offload auto would fall back): 1 of 1 changes failed: add SA: "),
            "{cond:?}"
        );
        assert!(cond.message.contains("Invalid argument"), "{cond:?}");

        let conflicted = Plan {
            conflicts: vec!["10.1.0.0/16 -> 10.2.0.0/16 held by a foreign policy".into()],
            ..Plan::default()
        };
        let status = tunnel_status(
            Status::default(),
            &TunnelRound {
                first: &conflicted,
                ..software
            },
        );
        assert_eq!(status.phase, Phase::Degraded);
        let cond = status.condition("Programmed").unwrap();
        assert_eq!(cond.reason, Reason::Conflict.as_str());
        assert!(
            cond.message.contains("held by a foreign policy"),
            "{cond:?}"
        );
    }

    fn put_tunnel(store: &Store, id: &str, deleting: bool) {
        let key = ObjectKey::new(Kind::IpsecTunnel, id);
        store
            .transact(|t| {
                let spec = json!({
                    "local": "192.0.2.1", "remote": "192.0.2.2",
                    "local_subnets": ["10.1.0.0/16"], "remote_subnets": ["10.2.0.0/16"],
                    "mode": "tunnel", "cipher": "aes-gcm-128",
                    "spi_in": 4097, "spi_out": 8193,
                    "key_in": KEY_IN, "key_out": KEY_OUT, "offload": "auto"
                });
                let mut o = StoredObject::from_json(Some(t.sealer()), key.kind, id, "acme", &spec);
                o.status = t.get(&key).map(|o| o.status.clone()).unwrap_or_default();
                o.deleting = deleting;
                t.put(o, EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
    }

    fn get(store: &Store, id: &str) -> StoredObject {
        (*store.get(&ObjectKey::new(Kind::IpsecTunnel, id)).unwrap()).clone()
    }

    fn assert_no_key(text: &str) {
        for k in [KEY_IN, KEY_OUT, &KEY_IN[..10], &KEY_OUT[..10]] {
            assert!(!text.to_lowercase().contains(k), "key material in: {text}");
        }
    }

    #[tokio::test]
    async fn reconcile_programs_policies_removes_orphans_and_tears_down() {
        let Some(ns) = Netns::new("rec") else { return };
        let (_dir, ctx) = context();
        let store = ctx.store.clone();
        let ctrl = IpsecTunnels::new(IpsecConfig {
            netns: Some(format!("/run/netns/{}", ns.0).into()),
            ..Default::default()
        });
        // Leftovers: an agent-owned orphan and someone else's policy.
        ns.ip("xfrm policy add src 10.7.0.0/16 dst 10.8.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.9 proto esp reqid 0x0d50fff0 mode tunnel");
        ns.ip("xfrm policy add src 10.5.0.0/16 dst 10.6.0.0/16 dir out tmpl src 192.0.2.1 dst 192.0.2.8 proto esp reqid 7 mode tunnel");

        put_tunnel(&store, "t1", false);
        assert_eq!(ctrl.backend(), Some(("xfrm".to_string(), true)));
        let plan_before = ctrl.plan(&ctx, &get(&store, "t1"), WriteOutcome::Created);
        assert!(
            plan_before.iter().any(|l| l.contains("xfrm state add in")),
            "{plan_before:#?}"
        );
        let out = ctrl.reconcile(&ctx, &get(&store, "t1")).await.unwrap();
        let listed = ns.ip("xfrm policy");
        assert!(
            listed.contains("src 10.1.0.0/16 dst 10.2.0.0/16"),
            "{listed}"
        );
        assert!(
            listed.contains("src 10.2.0.0/16 dst 10.1.0.0/16 \n\tdir fwd"),
            "{listed}"
        );
        assert!(!listed.contains("10.7.0.0/16"), "orphan kept: {listed}");
        assert!(
            listed.contains("src 10.5.0.0/16"),
            "foreign removed: {listed}"
        );
        assert_eq!(out.status.facts.reqid, Some(0x0d50_0000));
        // Tenant scope (the default): every policy of the tunnel carries
        // the tenant's if_id; the foreign policy is untouched.
        let if_id = out.status.facts.if_id.unwrap();
        assert!(TENANT_IF_ID_RANGE.contains(&if_id), "{if_id:#x}");
        assert_eq!(
            listed.matches(&format!("if_id {if_id:#x}")).count(),
            3,
            "{listed}"
        );
        assert_eq!(listed.matches("if_id").count(), 3, "{listed}");
        // The tenant's XFRM interface: made where the kernel has them, else
        // the status says why not (this machine: no CONFIG_XFRM_INTERFACE).
        let xi = out.status.fields["xfrm_interface"].as_str().unwrap();
        assert!(
            xi.starts_with("ipsec0 in ") || xi.starts_with("not created: "),
            "{xi}"
        );
        assert_eq!(out.status.fields["offload_active"], json!("none"));
        // Without ESP in this kernel the SAs fail: Degraded, saying so.
        let cond = out.status.condition("Programmed").unwrap();
        if out.status.phase == Phase::Degraded {
            assert!(cond.message.contains("xfrm state add"), "{}", cond.message);
        } else {
            assert_eq!(out.status.phase, Phase::Ready, "{cond:?}");
        }
        let plan_after = ctrl.plan(&ctx, &get(&store, "t1"), WriteOutcome::Updated);
        assert!(
            plan_after.iter().all(|l| l.contains("xfrm state add")),
            "{plan_after:#?}"
        );
        // Nothing that leaves the controller carries a key.
        let everything = format!(
            "{}\n{:?}\n{}\n{}\n{:?}",
            serde_json::to_string(&out.status).unwrap(),
            out,
            plan_before.join("\n"),
            plan_after.join("\n"),
            ctrl
        );
        assert_no_key(&everything);
        // `/metrics` carries the tunnel's counters as this reconcile read
        // them from the kernel.
        let mut m = String::new();
        ctrl.metrics(&mut m);
        assert!(
            m.contains(
                "dpu_agent_ipsec_packets_total{tenant=\"acme\",tunnel=\"t1\",direction=\"in\"} "
            ),
            "{m}"
        );
        assert!(
            m.contains("dpu_agent_ipsec_rekeys_total{tenant=\"acme\",tunnel=\"t1\"} 0"),
            "{m}"
        );

        store
            .transact(|t| {
                t.set_status(&ObjectKey::new(Kind::IpsecTunnel, "t1"), out.status.clone());
                Ok::<_, StoreError>(())
            })
            .unwrap();
        put_tunnel(&store, "t1", true);
        let teardown = ctrl.plan(&ctx, &get(&store, "t1"), WriteOutcome::Deleted);
        assert_eq!(teardown.len(), 3, "{teardown:#?}");
        let gone = ctrl.reconcile(&ctx, &get(&store, "t1")).await.unwrap();
        assert!(gone.finalized);
        let listed = ns.ip("xfrm policy");
        assert!(!listed.contains("10.1.0.0/16"), "{listed}");
        assert!(listed.contains("src 10.5.0.0/16"), "{listed}");
        let mut m = String::new();
        ctrl.metrics(&mut m);
        assert!(
            !m.contains("tunnel=\"t1\""),
            "a deleted tunnel's series stay: {m}"
        );
    }

    /// TENANCY.md invariant 6: a tunnel's series carry only its tenant,
    /// its id (a quota'd kind) and closed sets (`direction`, `reason`).
    #[test]
    fn tunnel_metrics_render_every_family_with_bounded_labels() {
        let state = TunnelState {
            bytes_in: 1000,
            bytes_out: 2000,
            packets_in: 10,
            packets_out: 20,
            replay_window_drops: 1,
            replay_drops: 2,
            integrity_failures: 3,
            programmed: true,
            ..TunnelState::default()
        };
        let counters = BTreeMap::from([(("acme".to_string(), "t1".to_string()), (state, 4))]);
        let mut out = String::new();
        render_tunnel_metrics(&mut out, &counters);
        for line in [
            "# TYPE dpu_agent_ipsec_bytes_total counter",
            "dpu_agent_ipsec_bytes_total{tenant=\"acme\",tunnel=\"t1\",direction=\"in\"} 1000",
            "dpu_agent_ipsec_bytes_total{tenant=\"acme\",tunnel=\"t1\",direction=\"out\"} 2000",
            "dpu_agent_ipsec_packets_total{tenant=\"acme\",tunnel=\"t1\",direction=\"out\"} 20",
            "dpu_agent_ipsec_dropped_packets_total{tenant=\"acme\",tunnel=\"t1\",reason=\"replay_window\"} 1",
            "dpu_agent_ipsec_dropped_packets_total{tenant=\"acme\",tunnel=\"t1\",reason=\"replay\"} 2",
            "dpu_agent_ipsec_dropped_packets_total{tenant=\"acme\",tunnel=\"t1\",reason=\"integrity\"} 3",
            "dpu_agent_ipsec_rekeys_total{tenant=\"acme\",tunnel=\"t1\"} 4",
            "dpu_agent_ipsec_tunnel_established{tenant=\"acme\",tunnel=\"t1\"} 1",
        ] {
            assert!(out.lines().any(|l| l == line), "{line} missing in\n{out}");
        }
    }

    #[tokio::test]
    async fn dev_mode_programs_a_private_namespace_not_the_hosts() {
        assert_root("the private XFRM namespace of dev mode");
        let (_dir, ctx) = context();
        let store = ctx.store.clone();
        put_tunnel(&store, "t1", false);
        let ctrl = IpsecTunnels::new(IpsecConfig {
            private_netns: true,
            ..Default::default()
        });
        ctrl.reconcile(&ctx, &get(&store, "t1")).await.unwrap();
        // The controller sees its policies; the host has none of them.
        let seen = ctrl.last_observed.lock().unwrap().clone().unwrap();
        assert_eq!(seen.policies.len(), 3);
        let host = Command::new("ip")
            .args(["xfrm", "policy"])
            .output()
            .unwrap();
        let host = String::from_utf8_lossy(&host.stdout);
        assert!(!host.contains("reqid 223346688"), "{host}");
    }

    #[tokio::test]
    async fn unreadable_key_fails_without_echoing_it() {
        let (_dir, ctx) = context();
        let store = ctx.store.clone();
        put_tunnel(&store, "t1", false);
        // A 256-bit cipher with the 128-bit keys above: the key does not fit.
        let mut o = get(&store, "t1");
        if let dpu_api::Spec::IpsecTunnel(t) = &mut o.spec {
            t.cipher = spec::Cipher::AesGcm256;
        }
        let ctrl = IpsecTunnels::with_backend(IpsecConfig::default(), || {
            Err(XfrmError::Netlink {
                op: "opening the socket",
                source: dpu_netlink::Error::Open(std::io::Error::other("no kernel in this test")),
            })
        });
        let out = ctrl.reconcile(&ctx, &o).await.unwrap();
        assert_eq!(out.status.phase, Phase::Failed);
        let cond = out.status.condition("Programmed").unwrap();
        assert!(cond.message.contains("spec.key_in"), "{}", cond.message);
        assert_no_key(&format!(
            "{:?} {:?}",
            out,
            ctrl.plan(&ctx, &o, WriteOutcome::Updated)
        ));
    }
}
