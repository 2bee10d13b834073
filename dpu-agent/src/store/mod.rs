//! The agent's embedded, crash-safe store (redb): desired objects with their
//! generations and status, a global revision, the event log behind watch,
//! and the hosts' last inventory reports.
//!
//! Every write goes through [`Store::transact`]: the caller's closure sees
//! the current objects plus what it staged, decides, and stages changes;
//! the changes are committed in one redb write transaction, fsync'd before
//! `transact` returns, so an accepted write survives `kill -9`. Closures run
//! one at a time, so checks done inside them cannot race.
//!
//! Commits are grouped: while one batch is being fsync'd, the next writers
//! stage theirs (seeing everything staged before them) and the first to find
//! the disk free commits them all in one transaction (leader/follower group
//! commit). Nobody is answered before its batch is durable; if a batch fails,
//! it and everything staged on top of it fail, and nothing of them is kept.
//!
//! Each commit is timed, with how many writes it grouped
//! ([`Store::commit_metrics`]).
//!
//! All objects are also held in memory (write-through) so reads, lists and
//! cross-object validation never touch the disk. They are held typed
//! ([`StoredObject::spec`] is a [`Spec`], decoded once by admission, or when
//! the store opens): no JSON spec travels past admission. Secret fields are
//! sealed ([`seal`]) before they reach either copy.

pub mod seal;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use dpu_api::object::{Event, EventType, HostReport, Object, ObjectKey, Status};
use dpu_api::spec::{Carve, RefField, Slot};
use dpu_api::{Kind, Spec};
use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use zeroize::Zeroizing;

use crate::metrics::{self, COMMIT_BUCKETS, GROUP_SIZE_BUCKETS, HistogramVec};
use crate::threads::{Interrupted, Threads};
use seal::{SealError, Sealer};

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const HOSTS: TableDefinition<&str, &[u8]> = TableDefinition::new("hosts");

/// How many events watch can resume from; older ones are compacted away.
pub const EVENT_LOG_LEN: u64 = 100_000;

/// redb's page cache (reads and the write buffer). Its default, 1 GiB,
/// let the cache grow with every page a commit touched: the agent's
/// memory followed the file (objects and up to [`EVENT_LOG_LEN`] events),
/// although nothing reads the file after the open but commits, which touch
/// the few pages on their paths (the in-memory state answers every read).
pub const STORE_CACHE_BYTES: usize = 4 << 20;

/// The store's threads ([`crate::threads`]): one group commit's leader, the
/// engine's status flush (which waits for the commit lock) and a page of
/// events at once.
pub const STORE_THREADS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store database error")]
    Db(#[source] Box<redb::Error>),
    #[error("cannot create the state directory {path}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("stored record {key} is corrupt")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("stored record {key} is not a valid spec of its kind")]
    Undecodable {
        key: String,
        #[source]
        source: dpu_api::validate::FieldError,
    },
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error(
        "the sealing key {path} is missing, but the store holds {count} sealed secret value(s) \
         (first: {first}); restore the key file from backup — a new key cannot open them. \
         Only if those secrets are to be given up: delete the objects' store (store.redb) too"
    )]
    SealKeyMissing {
        path: String,
        count: usize,
        first: String,
    },
    #[error(
        "the sealing key {path} does not open the store's sealed secrets (first: {first}); \
         it is not the key this store was sealed with: restore the right key file"
    )]
    SealKeyWrong {
        path: String,
        first: String,
        #[source]
        source: SealError,
    },
    #[error(
        "the state directory {path} is writable by group or others (mode {mode:o}); \
         run `chmod 700 {path}`"
    )]
    StateDirMode { path: String, mode: u32 },
    #[error("the store's writer lock is poisoned by an earlier panic")]
    Poisoned,
    #[error("the write was grouped with one that could not be committed: {0}")]
    BatchFailed(String),
}

macro_rules! db_err {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                StoreError::Db(Box::new(e.into()))
            }
        }
    )*};
}
db_err!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError
);

/// An object as stored: its typed spec, decoded once at admission, with
/// each write-only field withheld (an empty string) and its sealed form kept
/// beside it in `sealed`; `deleting` marks an object whose controller is
/// tearing it down (DELETE answered 202).
///
/// On disk (and in no other place) the record is the wire form: the spec as
/// JSON with the sealed values in the secret fields (a private `Record`).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredObject {
    pub id: String,
    pub tenant: String,
    pub generation: u64,
    pub spec: Spec,
    /// The sealed value of each write-only field, by field name.
    pub sealed: BTreeMap<&'static str, Value>,
    pub status: Status,
    pub deleting: bool,
}

/// A stored object's record as read at open: its spec left as JSON text,
/// typed from it once ([`StoredObject::from_row`]).
#[derive(Deserialize)]
struct RecordRow<'a> {
    kind: Kind,
    id: String,
    tenant: String,
    generation: u64,
    #[serde(borrow)]
    spec: &'a serde_json::value::RawValue,
    status: Status,
    #[serde(default)]
    deleting: bool,
}

/// A stored object's record in the database.
#[derive(Serialize, Deserialize)]
struct Record {
    kind: Kind,
    id: String,
    tenant: String,
    generation: u64,
    spec: Value,
    status: Status,
    #[serde(default)]
    deleting: bool,
}

impl StoredObject {
    /// A new object with no secrets sealed yet.
    pub fn new(id: impl Into<String>, tenant: impl Into<String>, spec: Spec) -> StoredObject {
        StoredObject {
            id: id.into(),
            tenant: tenant.into(),
            generation: 1,
            spec,
            sealed: BTreeMap::new(),
            status: Status::default(),
            deleting: false,
        }
    }

    pub fn kind(&self) -> Kind {
        self.spec.kind()
    }

    pub fn key(&self) -> ObjectKey {
        ObjectKey::new(self.kind(), self.id.clone())
    }

    /// The object as the API shows it: each secret field replaced by
    /// `<field>_set: true`.
    pub fn to_api(&self) -> Object {
        let mut spec = self.spec.to_value();
        if let Value::Object(map) = &mut spec {
            for field in self.kind().secret_fields() {
                map.remove(*field);
                if self.sealed.contains_key(field) {
                    map.insert(format!("{field}_set"), Value::Bool(true));
                }
            }
        }
        Object {
            kind: self.kind(),
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            generation: self.generation,
            spec,
            status: self.status.clone(),
        }
    }

    /// The database record: the spec's JSON with the sealed values in place.
    fn to_record(&self) -> Record {
        let mut spec = self.spec.to_value();
        if let Value::Object(map) = &mut spec {
            for (field, sealed) in &self.sealed {
                map.insert((*field).to_string(), sealed.clone());
            }
        }
        Record {
            kind: self.kind(),
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            generation: self.generation,
            spec,
            status: self.status.clone(),
            deleting: self.deleting,
        }
    }

    /// Decodes a row read at open. A kind without write-only fields has its
    /// spec typed straight from the row's text; for one with them the
    /// sealed values are taken out first and the rest is parsed as the
    /// kind's spec.
    fn from_row(row: RecordRow<'_>) -> Result<StoredObject, StoreError> {
        let RecordRow {
            kind,
            id,
            tenant,
            generation,
            spec,
            status,
            deleting,
        } = row;
        let key = || format!("{}/{id}", kind.path());
        let undecodable = |source| StoreError::Undecodable { key: key(), source };
        let mut sealed = BTreeMap::new();
        let spec = if kind.secret_fields().is_empty() {
            Spec::parse_stored(kind, spec.get()).map_err(undecodable)?
        } else {
            let mut spec: Value = serde_json::from_str(spec.get())
                .map_err(|source| StoreError::Corrupt { key: key(), source })?;
            if let Value::Object(map) = &mut spec {
                for field in kind.secret_fields() {
                    if let Some(v) = map.get_mut(*field)
                        && Sealer::is_sealed(v)
                    {
                        sealed.insert(*field, std::mem::replace(v, Value::String(String::new())));
                    }
                }
            }
            Spec::parse(kind, &spec).map_err(undecodable)?
        };
        Ok(StoredObject {
            id,
            tenant,
            generation,
            spec,
            sealed,
            status,
            deleting,
        })
    }
}

#[cfg(test)]
impl StoredObject {
    /// A test object from a JSON spec (which must parse), its secret fields
    /// sealed with `sealer` when one is given.
    pub fn from_json(
        sealer: Option<&Sealer>,
        kind: Kind,
        id: &str,
        tenant: &str,
        spec: &Value,
    ) -> StoredObject {
        let spec = Spec::parse(kind, spec).unwrap_or_else(|e| panic!("{kind:?} {id}: {e}"));
        let mut obj = StoredObject::new(id, tenant, spec);
        if let Some(sealer) = sealer {
            obj.sealed = Store::seal_secrets(sealer, &obj.key(), &mut obj.spec)
                .unwrap_or_else(|e| panic!("seal {id}: {e}"));
        }
        obj
    }
}

/// A JSON row of the database, or [`StoreError::Corrupt`] naming its key
/// (made only on failure).
fn decode_row<T: serde::de::DeserializeOwned>(
    value: &[u8],
    key: impl FnOnce() -> String,
) -> Result<T, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Corrupt { key: key(), source })
}

/// A value as a JSON row of the database, or [`StoreError::Corrupt`]
/// naming its key (made only on failure).
fn encode_row<T: serde::Serialize>(
    value: &T,
    key: impl FnOnce() -> String,
) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|source| StoreError::Corrupt { key: key(), source })
}

fn key_str(key: &ObjectKey) -> String {
    format!("{}/{}", key.kind.path(), key.id)
}

#[derive(Debug, Default, Clone)]
struct State {
    objects: BTreeMap<ObjectKey, Arc<StoredObject>>,
    /// Typed indexes over `objects`, changed with it ([`State::set`]).
    /// Per kind and tenant, its objects by id (the objects themselves,
    /// shared with `objects`: listing a tenant's copies no key).
    by_tenant: HashMap<Kind, HashMap<String, BTreeMap<String, Arc<StoredObject>>>>,
    /// Functions by the PF their spec names, with who holds and who asks
    /// for which VF there.
    functions_by_pf: HashMap<String, PfFunctions>,
    /// Networks by VNI (unique on the DPU; admission checks it here
    /// instead of scanning every network).
    networks_by_vni: HashMap<u32, BTreeSet<String>>,
    /// Ports, endpoints and volumes by (kind, tenant, the field and the id
    /// their spec names: [`Spec::refers`]): a function's ports and volumes,
    /// a network's ports and endpoints, without listing the tenant's.
    refs: HashMap<RefKey, BTreeMap<String, Arc<StoredObject>>>,
    hosts: BTreeMap<String, HostReport>,
    revision: u64,
    /// Per kind, the revision of the last committed write that changed an
    /// object's spec (new generation), existence or deletion mark ...
    spec_revisions: HashMap<Kind, u64>,
    /// ... and of the last one that changed only a status.
    status_revisions: HashMap<Kind, u64>,
    /// The key of each object every committed write put or removed, with
    /// the write's revision, oldest first; at most [`CHANGE_LOG`] (what
    /// [`Store::changes_since`] reads).
    changes: std::collections::VecDeque<(u64, ObjectKey)>,
    /// The revision up to which `changes` may miss keys: that of the last
    /// entry dropped, or of the store when it was opened.
    changes_from: u64,
}

/// How many changed keys the store remembers for [`Store::changes_since`]:
/// a reader further behind rebuilds what it derives from whole lists.
pub const CHANGE_LOG: usize = 8192;

impl State {
    /// Puts (`Some`) or removes (`None`) an object, keeping the indexes.
    fn set(&mut self, key: &ObjectKey, obj: Option<Arc<StoredObject>>) {
        let old = match &obj {
            Some(obj) => self.objects.insert(key.clone(), obj.clone()),
            None => self.objects.remove(key),
        };
        if let Some(old) = &old {
            if let Some(tenants) = self.by_tenant.get_mut(&key.kind)
                && let Some(ids) = tenants.get_mut(&old.tenant)
            {
                ids.remove(&key.id);
                if ids.is_empty() {
                    tenants.remove(&old.tenant);
                }
            }
            if let Some(pf) = function_pf(old)
                && let Some(on_pf) = self.functions_by_pf.get_mut(&pf)
            {
                on_pf.remove(&key.id, old);
                if on_pf.ids.is_empty() {
                    self.functions_by_pf.remove(&pf);
                }
            }
            if let Some(vni) = network_vni(old)
                && let Some(ids) = self.networks_by_vni.get_mut(&vni)
            {
                ids.remove(&key.id);
                if ids.is_empty() {
                    self.networks_by_vni.remove(&vni);
                }
            }
            for at in ref_keys(key.kind, old) {
                if let Some(ids) = self.refs.get_mut(&at) {
                    ids.remove(&key.id);
                    if ids.is_empty() {
                        self.refs.remove(&at);
                    }
                }
            }
        }
        if let Some(obj) = &obj {
            self.by_tenant
                .entry(key.kind)
                .or_default()
                .entry(obj.tenant.clone())
                .or_default()
                .insert(key.id.clone(), obj.clone());
            if let Some(pf) = function_pf(obj) {
                self.functions_by_pf
                    .entry(pf)
                    .or_default()
                    .insert(&key.id, obj);
            }
            if let Some(vni) = network_vni(obj) {
                self.networks_by_vni
                    .entry(vni)
                    .or_default()
                    .insert(key.id.clone());
            }
            for at in ref_keys(key.kind, obj) {
                self.refs
                    .entry(at)
                    .or_default()
                    .insert(key.id.clone(), obj.clone());
            }
        }
    }

    /// [`Store::referring`] over the committed objects, in id order.
    fn referring<'s>(
        &'s self,
        kind: Kind,
        tenant: &str,
        field: RefField,
        target: &str,
    ) -> impl Iterator<Item = &'s Arc<StoredObject>> {
        self.refs
            .get(&(kind, tenant.to_string(), field, target.to_string()))
            .into_iter()
            .flat_map(BTreeMap::values)
    }

    /// A tenant's objects of `kind` by id.
    fn tenant_map(&self, kind: Kind, tenant: &str) -> Option<&BTreeMap<String, Arc<StoredObject>>> {
        self.by_tenant.get(&kind)?.get(tenant)
    }

    fn count_of_tenant(&self, kind: Kind, tenant: &str) -> usize {
        self.tenant_map(kind, tenant).map_or(0, BTreeMap::len)
    }

    fn of_tenant(&self, kind: Kind, tenant: &str) -> Vec<Arc<StoredObject>> {
        self.tenant_map(kind, tenant)
            .map(|ids| ids.values().cloned().collect())
            .unwrap_or_default()
    }
}

/// The PF a function object names.
/// The slot space of the PF a function's spec names ([`pf_slot_space`]).
fn function_pf(obj: &StoredObject) -> Option<String> {
    obj.spec.as_function().map(|f| pf_slot_space(f.pf.as_str()))
}

/// The key under which VF indexes and SF numbers of PF `pf` are allocated.
/// The switchdev backend resolves `pfN` to whichever controller's PF N it
/// finds (the host's on a BlueField, the only one on a single-controller
/// eswitch) and reads `pf00` as `pf0`, so `pfN`, `pf0N` and every `cCpfN`
/// may name the same hardware PF. They share one space: two functions
/// never get the same slot number of PF N under two spellings, at the price
/// of two distinct controllers' PF N sharing the numbers (fail closed:
/// TENANCY.md invariant 3). Other names (a legacy PF's netdev, `p0`) are
/// their own space.
pub fn pf_slot_space(pf: &str) -> String {
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let pfnum = match pf.strip_prefix('c').and_then(|r| r.split_once("pf")) {
        Some((c, n)) if digits(c) && digits(n) => Some(n),
        _ => pf.strip_prefix("pf").filter(|n| digits(n)),
    };
    match pfnum.map(|n| n.trim_start_matches('0')) {
        Some(n) => format!("pf{}", if n.is_empty() { "0" } else { n }),
        None => pf.to_string(),
    }
}

/// The functions on one PF, and the slots (VF indexes, SF numbers) they
/// hold (status) or ask for (spec) there: what VF and SF allocation reads,
/// without walking every function of the PF.
#[derive(Debug, Default, Clone)]
struct PfFunctions {
    ids: BTreeSet<String>,
    /// Slot → the functions whose status says they hold it.
    held: BTreeMap<Slot, BTreeSet<String>>,
    /// Slot → the functions whose spec asks for it without holding it.
    asked: BTreeMap<Slot, BTreeSet<String>>,
}

impl PfFunctions {
    /// The slot `obj` holds and the one it asks for without holding it.
    fn claims(obj: &StoredObject) -> (Option<Slot>, Option<Slot>) {
        let facts = &obj.status.facts;
        let holds = facts.vf.map(Slot::Vf).or(facts.sf.map(Slot::Sf));
        let asks = obj
            .spec
            .as_function()
            .and_then(|f| f.requested_slot())
            .filter(|slot| holds != Some(*slot));
        (holds, asks)
    }

    fn insert(&mut self, id: &str, obj: &StoredObject) {
        self.ids.insert(id.to_string());
        let (holds, asks) = Self::claims(obj);
        if let Some(vf) = holds {
            self.held.entry(vf).or_default().insert(id.to_string());
        }
        if let Some(vf) = asks {
            self.asked.entry(vf).or_default().insert(id.to_string());
        }
    }

    fn remove(&mut self, id: &str, obj: &StoredObject) {
        self.ids.remove(id);
        let (holds, asks) = Self::claims(obj);
        for (map, vf) in [(&mut self.held, holds), (&mut self.asked, asks)] {
            if let Some(vf) = vf
                && let Some(ids) = map.get_mut(&vf)
            {
                ids.remove(id);
                if ids.is_empty() {
                    map.remove(&vf);
                }
            }
        }
    }
}

/// Who else claims a VF or SF on a PF ([`Store::slot_claims`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SlotClaims {
    /// A function whose status says it holds the slot.
    pub holder: Option<String>,
    /// The lowest id among the functions whose spec asks for the slot
    /// without holding it.
    pub first_asker: Option<String>,
}

/// The function a port object attaches.
/// A key of [`State::refs`]: kind, tenant, field, the id it names.
type RefKey = (Kind, String, RefField, String);

/// The [`State::refs`] keys of an object of `kind`: one per field its spec
/// names another object by.
fn ref_keys(kind: Kind, obj: &StoredObject) -> impl Iterator<Item = RefKey> + '_ {
    RefField::ALL.into_iter().filter_map(move |field| {
        let target = obj.spec.refers(field)?;
        Some((kind, obj.tenant.clone(), field, target.to_string()))
    })
}

/// The VNI a network object carries.
fn network_vni(obj: &StoredObject) -> Option<u32> {
    obj.spec.as_network().map(|n| n.vni)
}

/// The store. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Store {
    db: Database,
    state: RwLock<State>,
    writer: Mutex<Staging>,
    committer: Mutex<CommitLog>,
    /// The last committed sequence number ([`CommitLog::done`]), for
    /// writers that wait without a thread ([`Store::durable`]).
    done: tokio::sync::watch::Sender<u64>,
    /// Batches that failed, with why (kept for the waiters to read); written
    /// by the committer before it moves `done`.
    failed: Mutex<BTreeMap<u64, String>>,
    /// Whether an async waiter is leading a commit ([`Store::durable`]).
    leading: std::sync::atomic::AtomicBool,
    sealer: Sealer,
    events: broadcast::Sender<Event>,
    commit_seconds: HistogramVec<0>,
    commit_group_size: HistogramVec<0>,
    commit_failures: AtomicU64,
    /// Where the blocking store work of async callers runs
    /// ([`STORE_THREADS`]).
    threads: Threads,
}

/// Changes accepted but not yet durable.
#[derive(Debug, Default)]
struct Batch {
    staged: BTreeMap<ObjectKey, Option<Arc<StoredObject>>>,
    events: Vec<Event>,
    hosts: Vec<HostReport>,
    /// The revision after this batch.
    revision: u64,
    /// How many writes (`transact` calls that staged something) it holds.
    writes: u64,
}

impl Batch {
    fn is_empty(&self) -> bool {
        self.staged.is_empty() && self.hosts.is_empty()
    }
}

/// What writers share, under the writer lock.
#[derive(Debug, Default)]
struct Staging {
    /// Waiting for a leader to commit it, as batch number `pending_seq`.
    pending: Batch,
    pending_seq: u64,
    /// Being committed right now (batch `pending_seq - 1`).
    inflight: Arc<Batch>,
    /// The revision after everything staged.
    revision: u64,
}

/// A staged write's commit ([`Store::transact_staged`]): resolves once it
/// is durable. Dropping it does not cancel the commit.
#[derive(Debug)]
#[must_use = "a staged write is not durable until Durable::wait returns"]
pub struct Durable(Option<tokio::task::JoinHandle<Result<(), StoreError>>>);

impl Durable {
    /// Waits until the write is durable; the error of its group otherwise.
    pub async fn wait(self) -> Result<(), StoreError> {
        match self.0 {
            None => Ok(()),
            Some(wait) => wait.await.unwrap_or_else(|_| Err(interrupted())),
        }
    }
}

/// An async waiter's lead of the commits ([`Store::durable`]): on every way
/// out, steps down and wakes the other waiters.
struct Leading<'a>(&'a Store);

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        self.0.leading.store(false, Ordering::Release);
        self.0.done.send_modify(|_| {});
    }
}

/// A commit wait cut short: the runtime is shutting down.
fn interrupted() -> StoreError {
    StoreError::BatchFailed("the commit was interrupted (the agent is shutting down)".into())
}

/// Which batches are done, under the commit lock.
#[derive(Debug, Default)]
struct CommitLog {
    done: u64,
}

/// A write in progress; see [`Store::transact`].
#[derive(Debug)]
pub struct Txn<'a> {
    state: &'a State,
    /// Accepted, not yet durable changes, newest first.
    layers: [&'a BTreeMap<ObjectKey, Option<Arc<StoredObject>>>; 2],
    sealer: &'a Sealer,
    staged: BTreeMap<ObjectKey, Option<Arc<StoredObject>>>,
    events: Vec<(EventType, ObjectKey, Option<Object>)>,
    hosts: Vec<HostReport>,
}

impl<'a> Txn<'a> {
    /// A transaction over the committed `state` and what `staging` holds.
    fn new(state: &'a State, staging: &'a Staging, sealer: &'a Sealer) -> Txn<'a> {
        Txn {
            state,
            layers: [&staging.pending.staged, &staging.inflight.staged],
            sealer,
            staged: BTreeMap::new(),
            events: Vec::new(),
            hosts: Vec::new(),
        }
    }

    /// The object as this transaction sees it (staged changes included).
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<StoredObject>> {
        for layer in [&self.staged, self.layers[0], self.layers[1]] {
            if let Some(found) = layer.get(key) {
                return found.clone();
            }
        }
        self.state.objects.get(key).cloned()
    }

    /// Objects of `kind` (of one tenant, or all), staged changes included.
    pub fn list(&self, kind: Kind, tenant: Option<&str>) -> Vec<Arc<StoredObject>> {
        let committed = match tenant {
            Some(t) => self.state.of_tenant(kind, t),
            None => range_of_kind(&self.state.objects, kind)
                .map(|(_, v)| v.clone())
                .collect(),
        };
        if !self.stages(kind) {
            // The common case: nothing of this kind waits to be committed.
            return committed;
        }
        // What the layers decide for this kind, by id (the newest layer
        // wins), merged in id order with the committed objects they do not
        // decide: no copy of a key, no map of the committed ones.
        let mut decided: BTreeMap<&str, Option<&Arc<StoredObject>>> = BTreeMap::new();
        for layer in [&self.staged, self.layers[0], self.layers[1]] {
            for (k, v) in layer
                .range(ObjectKey::new(kind, "")..)
                .take_while(|(k, _)| k.kind == kind)
            {
                decided.entry(k.id.as_str()).or_insert(v.as_ref());
            }
        }
        let mut staged = decided
            .values()
            .filter_map(|v| *v)
            .filter(|o| tenant.is_none_or(|t| o.tenant == t))
            .peekable();
        let mut out = Vec::with_capacity(committed.len() + decided.len());
        for o in committed {
            if decided.contains_key(o.id.as_str()) {
                continue;
            }
            while let Some(s) = staged.next_if(|s| s.id < o.id) {
                out.push(s.clone());
            }
            out.push(o);
        }
        out.extend(staged.cloned());
        out
    }

    /// The number of objects of `kind` (of one tenant, or all), staged
    /// changes included.
    pub fn count(&self, kind: Kind, tenant: Option<&str>) -> usize {
        let Some(t) = tenant else {
            return self.list(kind, tenant).len();
        };
        // The index's count, corrected by what the staged layers decide
        // (newest first): no copy of the tenant's objects, whose count a
        // quota check of every write in a batch asks.
        let mut count = self.state.count_of_tenant(kind, t);
        let mut decided: BTreeSet<&ObjectKey> = BTreeSet::new();
        for layer in [&self.staged, self.layers[0], self.layers[1]] {
            for (k, v) in layer
                .range(ObjectKey::new(kind, "")..)
                .take_while(|(k, _)| k.kind == kind)
            {
                if !decided.insert(k) {
                    continue;
                }
                let was = self.state.objects.get(k).is_some_and(|o| o.tenant == t);
                let is = v.as_ref().is_some_and(|o| o.tenant == t);
                match (was, is) {
                    (false, true) => count += 1,
                    (true, false) => count -= 1,
                    _ => {}
                }
            }
        }
        count
    }

    /// Whether a change to an object of `kind` is staged here or waits to
    /// be committed.
    fn stages(&self, kind: Kind) -> bool {
        [&self.staged, self.layers[0], self.layers[1]]
            .iter()
            .any(|layer| {
                layer
                    .range(ObjectKey::new(kind, "")..)
                    .next()
                    .is_some_and(|(k, _)| k.kind == kind)
            })
    }

    /// A network other than `except` that carries `vni` (staged changes
    /// included), through the VNI index: the cost does not grow with the
    /// number of networks.
    pub fn network_with_vni(&self, vni: u32, except: &str) -> Option<Arc<StoredObject>> {
        let has_vni = |o: &StoredObject| network_vni(o) == Some(vni) && o.id != except;
        // Newest first; a copy counts only when no newer layer decides its
        // key. The layers hold every write waiting for the disk (statuses
        // too), so their networks are only compared by VNI, and looked up
        // in the newer layers when they match.
        let layers = [&self.staged, self.layers[0], self.layers[1]];
        let hidden =
            |newer: usize, k: &ObjectKey| layers[..newer].iter().any(|l| l.contains_key(k));
        for (i, layer) in layers.iter().enumerate() {
            for (k, v) in layer
                .range(ObjectKey::new(Kind::Network, "")..)
                .take_while(|(k, _)| k.kind == Kind::Network)
            {
                if let Some(obj) = v
                    && has_vni(obj)
                    && !hidden(i, k)
                {
                    return Some(obj.clone());
                }
            }
        }
        self.state
            .networks_by_vni
            .get(&vni)
            .into_iter()
            .flatten()
            .map(|id| ObjectKey::new(Kind::Network, id.clone()))
            .filter(|k| !hidden(layers.len(), k))
            .filter_map(|k| self.state.objects.get(&k))
            .find(|o| has_vni(o))
            .cloned()
    }

    /// [`Store::referring`] as this transaction sees it (staged changes
    /// included), in id order: the index, with the small staged layers
    /// laid over it.
    pub fn referring(
        &self,
        kind: Kind,
        tenant: &str,
        field: RefField,
        target: &str,
    ) -> Vec<Arc<StoredObject>> {
        let mut out: BTreeMap<&str, &Arc<StoredObject>> = self
            .state
            .referring(kind, tenant, field, target)
            .map(|o| (o.id.as_str(), o))
            .collect();
        // Oldest layer first: a newer one decides over it.
        for layer in [self.layers[1], self.layers[0], &self.staged] {
            for (k, v) in layer
                .range(ObjectKey::new(kind, "")..)
                .take_while(|(k, _)| k.kind == kind)
            {
                match v {
                    Some(obj) if obj.tenant == tenant && obj.spec.refers(field) == Some(target) => {
                        out.insert(k.id.as_str(), obj);
                    }
                    _ => {
                        out.remove(k.id.as_str());
                    }
                }
            }
        }
        out.into_values().cloned().collect()
    }

    /// Stages an object (created or changed), recording an event of `type_`.
    pub fn put(&mut self, obj: StoredObject, type_: EventType) {
        let key = obj.key();
        self.events.push((type_, key.clone(), None));
        self.staged.insert(key, Some(Arc::new(obj)));
    }

    /// Stages the removal of an object; its last state goes into the event.
    pub fn remove(&mut self, key: &ObjectKey) {
        if let Some(obj) = self.get(key) {
            self.events
                .push((EventType::Deleted, key.clone(), Some(obj.to_api())));
            self.staged.insert(key.clone(), None);
        }
    }

    /// Stages a new status for an existing object.
    pub fn set_status(&mut self, key: &ObjectKey, status: Status) -> bool {
        let Some(obj) = self.get(key) else {
            return false;
        };
        let mut obj = (*obj).clone();
        obj.status = status;
        self.put(obj, EventType::Status);
        true
    }

    pub fn put_host(&mut self, report: HostReport) {
        self.hosts.push(report);
    }

    pub fn sealer(&self) -> &Sealer {
        self.sealer
    }

    /// What this transaction staged: each changed object, `None` for a
    /// removal.
    pub fn staged_changes(&self) -> Vec<(ObjectKey, Option<Arc<StoredObject>>)> {
        self.staged
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Whether anything was staged.
    pub fn is_empty(&self) -> bool {
        self.staged.is_empty() && self.hosts.is_empty()
    }
}

/// Every sealed secret value in the store: (object, field, sealed value).
fn sealed_values(state: &State) -> Vec<(ObjectKey, &'static str, Value)> {
    let mut out = Vec::new();
    for (key, obj) in &state.objects {
        for (field, v) in &obj.sealed {
            out.push((key.clone(), *field, v.clone()));
        }
    }
    out
}

/// Creates `dir` (and its parents) owner-only, or checks an existing one:
/// writable by group or others is refused; readable by them is tightened.
pub fn ensure_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |source| StoreError::StateDir {
        path: dir.display().to_string(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    let mode = std::fs::metadata(dir).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o022 != 0 {
        return Err(StoreError::StateDirMode {
            path: dir.display().to_string(),
            mode,
        });
    }
    if mode & 0o055 != 0 {
        tracing::warn!(
            dir = %dir.display(),
            mode = format!("{mode:o}"),
            "state directory was readable by group or others; setting it to 0700"
        );
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

fn range_of_kind(
    objects: &BTreeMap<ObjectKey, Arc<StoredObject>>,
    kind: Kind,
) -> impl Iterator<Item = (&ObjectKey, &Arc<StoredObject>)> {
    objects
        .range(ObjectKey::new(kind, "")..)
        .take_while(move |(k, _)| k.kind == kind)
}

impl Store {
    /// Opens (or creates) the store in `dir`: `dir/store.redb` and the
    /// sealing key `dir/seal.key`.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        ensure_private_dir(dir)?;
        let key_path = dir.join("seal.key");
        let sealer = Sealer::load(&key_path)?;
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(dir.join("store.redb"))?;
        let mut state = State::default();
        {
            let w = db.begin_write()?;
            // Make sure every table exists so readers never see "no table".
            w.open_table(OBJECTS)?;
            w.open_table(EVENTS)?;
            w.open_table(META)?;
            w.open_table(HOSTS)?;
            w.commit()?;
        }
        {
            let r = db.begin_read()?;
            for row in r.open_table(OBJECTS)?.iter()? {
                let (k, v) = row?;
                let value = v.value();
                let row: RecordRow<'_> =
                    serde_json::from_slice(value).map_err(|source| StoreError::Corrupt {
                        key: k.value().to_string(),
                        source,
                    })?;
                let obj = StoredObject::from_row(row)?;
                state.set(&obj.key(), Some(Arc::new(obj)));
            }
            for row in r.open_table(HOSTS)?.iter()? {
                let (k, v) = row?;
                let report: HostReport = decode_row(v.value(), || k.value().to_string())?;
                state.hosts.insert(report.host.clone(), report);
            }
            state.revision = r
                .open_table(META)?
                .get("revision")?
                .map(|v| v.value())
                .unwrap_or(0);
        }
        // Fail closed (TENANCY.md invariant 7): a store with sealed values
        // starts only with the key that sealed them.
        let sealed = sealed_values(&state);
        let sealer = match (sealer, sealed.first()) {
            (Some(sealer), Some((key, field, value))) => {
                sealer.open(&key_str(key), field, value).map_err(|source| {
                    StoreError::SealKeyWrong {
                        path: key_path.display().to_string(),
                        first: format!("{key} {field}"),
                        source,
                    }
                })?;
                sealer
            }
            (Some(sealer), None) => sealer,
            (None, Some((key, field, _))) => {
                return Err(StoreError::SealKeyMissing {
                    path: key_path.display().to_string(),
                    count: sealed.len(),
                    first: format!("{key} {field}"),
                });
            }
            (None, None) => Sealer::load_or_create(&key_path)?,
        };
        Ok(Store::assemble(db, state, sealer, 4096))
    }

    /// A store over `db` holding `state`, nothing staged.
    fn assemble(db: Database, mut state: State, sealer: Sealer, event_capacity: usize) -> Store {
        state.changes.clear();
        state.changes_from = state.revision;
        let staging = Staging {
            revision: state.revision,
            pending_seq: 1,
            ..Staging::default()
        };
        Store {
            db,
            state: RwLock::new(state),
            writer: Mutex::new(staging),
            committer: Mutex::new(CommitLog::default()),
            done: tokio::sync::watch::Sender::new(0),
            failed: Mutex::default(),
            leading: std::sync::atomic::AtomicBool::new(false),
            sealer,
            events: broadcast::channel(event_capacity).0,
            commit_seconds: HistogramVec::new(COMMIT_BUCKETS, []),
            commit_group_size: HistogramVec::new(GROUP_SIZE_BUCKETS, []),
            commit_failures: AtomicU64::new(0),
            threads: Threads::new("store", STORE_THREADS),
        }
    }

    /// Runs `f` on the store's own threads ([`STORE_THREADS`]) and resolves
    /// with its value: for the blocking store work of async callers (a
    /// flush, a page of events), which must not queue behind the backends'
    /// jobs on tokio's blocking pool ([`crate::threads`]). The job runs even
    /// if the future is dropped.
    pub fn offload<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> impl Future<Output = Result<T, Interrupted>> + Send + 'static {
        self.threads.run(f)
    }

    /// An in-memory copy of the committed objects with `changes` applied on
    /// top: what `/v1/plan` lets the controllers read, so that a batch plans
    /// as a whole (a new network and its ports together). Nothing written
    /// to it reaches the disk or the real store, and its sealer is a fresh
    /// key: the view cannot open the real secrets.
    pub fn view_with(
        &self,
        changes: Vec<(ObjectKey, Option<Arc<StoredObject>>)>,
    ) -> Result<Store, StoreError> {
        let db = Database::builder().create_with_backend(redb::backends::InMemoryBackend::new())?;
        let mut state = self.state.read().map_err(|_| StoreError::Poisoned)?.clone();
        for (key, obj) in changes {
            state.set(&key, obj);
        }
        Ok(Store::assemble(db, state, Sealer::ephemeral()?, 1))
    }

    /// Runs `f` against the current objects and commits what it staged in one
    /// durable transaction. Returns `f`'s value and the revision after the
    /// commit (unchanged when nothing was staged). When `f` fails nothing is
    /// written.
    pub fn transact<T, E>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<(T, u64), E>
    where
        E: From<StoreError>,
    {
        let (value, seq, revision) = self.stage(f)?;
        if let Some(seq) = seq {
            self.wait_durable(seq)?;
        }
        Ok((value, revision))
    }

    /// [`Store::transact`] for the API's writes, without a thread per
    /// waiting write: `f` runs and its changes are staged now; the returned
    /// [`Durable`] resolves once they are durable (or their group failed),
    /// and the reply waits for it. Until then the write is neither visible
    /// to readers nor durable, as with `transact`.
    ///
    /// The wait is a task of its own, started here: a caller that goes away
    /// (a client that disconnects) still gets its staged write committed.
    /// A waiter whose group no commit has taken yet leads the next group
    /// commit on one of the store's threads (`Store::wait_durable`); the others
    /// wait for the committed sequence number to move. So 32 writers in
    /// flight wait on one or two threads, not 32, and each thread keeps
    /// allocator caches (dpu-agent/BENCHMARKS.md, "Writers wait without a
    /// thread"). Outside a tokio runtime it waits here, like `transact`.
    pub fn transact_staged<T, E>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<(T, u64, Durable), E>
    where
        E: From<StoreError>,
    {
        let (value, seq, revision) = self.stage(f)?;
        let Some(seq) = seq else {
            return Ok((value, revision, Durable(None)));
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let store = self.clone();
                let wait = rt.spawn(async move { store.durable(seq).await });
                Ok((value, revision, Durable(Some(wait))))
            }
            Err(_) => {
                self.wait_durable(seq)?;
                Ok((value, revision, Durable(None)))
            }
        }
    }

    /// Waits until group `seq` is durable or failed; see
    /// [`Store::transact_staged`].
    async fn durable(self: Arc<Self>, seq: u64) -> Result<(), StoreError> {
        let mut done = self.done.subscribe();
        loop {
            if *done.borrow_and_update() >= seq {
                return self.outcome(seq);
            }
            // One waiter at a time leads (commits on a thread that may
            // block); the others wait for `done` to move, or for the leader
            // to step down (it wakes them then, so one of them leads the
            // group it did not take).
            if self
                .leading
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // The sender lives as long as `self`, so `changed` cannot
                // fail here.
                let _ = done.changed().await;
                continue;
            }
            let _lead = Leading(&self);
            let store = self.clone();
            return match self.threads.run(move || store.wait_durable(seq)).await {
                Ok(outcome) => outcome,
                Err(_) => Err(interrupted()),
            };
        }
    }

    /// Runs `f` like [`Store::transact`] and returns as soon as its changes
    /// are staged, without waiting for them to be durable: they are committed
    /// with the next durable write's group, or by [`Store::flush`]. Until
    /// then readers of the store ([`Store::get`], watch) do not see them, a
    /// later transaction does, and a crash loses them. For what the agent can
    /// recompute after a restart, and only that: the reconcile engine's
    /// status writes (every object is reconciled again at start).
    pub fn transact_deferred<T, E>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<(T, u64), E>
    where
        E: From<StoreError>,
    {
        let (value, _, revision) = self.stage(f)?;
        Ok((value, revision))
    }

    /// Makes everything staged so far durable (and visible to readers);
    /// returns at once when nothing is waiting.
    pub fn flush(&self) -> Result<(), StoreError> {
        let seq = {
            let w = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
            if !w.pending.is_empty() {
                w.pending_seq
            } else if !w.inflight.is_empty() {
                w.pending_seq - 1
            } else {
                return Ok(());
            }
        };
        self.wait_durable(seq)
    }

    /// Runs `f` under the writer lock and stages what it changed into the
    /// pending batch. Returns `f`'s value, the batch that has to be durable
    /// before what `f` saw and wrote is (`None`: everything it saw is
    /// durable already) and the revision after the staged changes.
    fn stage<T, E>(
        &self,
        f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>,
    ) -> Result<(T, Option<u64>, u64), E>
    where
        E: From<StoreError>,
    {
        let mut w = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let state = self.state.read().map_err(|_| StoreError::Poisoned)?;
        let mut txn = Txn::new(&state, &w, &self.sealer);
        let value = f(&mut txn)?;
        let Txn {
            staged,
            events: pending,
            hosts,
            ..
        } = txn;
        drop(state);
        if staged.is_empty() && hosts.is_empty() {
            // Nothing to write; but what it saw may not be durable yet.
            let seq = if !w.pending.is_empty() {
                Some(w.pending_seq)
            } else if !w.inflight.is_empty() {
                Some(w.pending_seq - 1)
            } else {
                None
            };
            return Ok((value, seq, w.revision));
        }
        // Events carry the object as the API shows it after the change.
        let mut rev = w.revision;
        let mut events = Vec::with_capacity(pending.len());
        for (type_, key, snapshot) in pending {
            let object = match snapshot {
                Some(o) => o,
                None => match staged.get(&key) {
                    Some(Some(obj)) => obj.to_api(),
                    _ => continue,
                },
            };
            rev += 1;
            events.push(Event {
                revision: rev,
                type_,
                object,
            });
        }
        // A host report alone still moves the revision, so X-Revision grows.
        if events.is_empty() {
            rev += 1;
        }
        w.pending.staged.extend(staged);
        w.pending.events.extend(events);
        w.pending.hosts.extend(hosts);
        w.pending.revision = rev;
        w.pending.writes += 1;
        w.revision = rev;
        Ok((value, Some(w.pending_seq), rev))
    }

    /// Returns once batch `seq` is durable: either another writer committed
    /// it meanwhile, or this one commits everything pending now.
    fn wait_durable(&self, seq: u64) -> Result<(), StoreError> {
        let mut log = self.committer.lock().map_err(|_| StoreError::Poisoned)?;
        if log.done < seq {
            let (batch, committing) = {
                let mut w = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
                let batch = Arc::new(std::mem::take(&mut w.pending));
                w.inflight = batch.clone();
                w.pending_seq += 1;
                (batch, w.pending_seq - 1)
            };
            let started = std::time::Instant::now();
            let result = self.commit(&batch.staged, &batch.events, &batch.hosts, batch.revision);
            self.commit_seconds
                .observe([], started.elapsed().as_secs_f64());
            self.commit_group_size.observe([], batch.writes as f64);
            if result.is_err() {
                self.commit_failures.fetch_add(1, Ordering::Relaxed);
            }
            let mut w = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
            match result {
                Ok(()) => {
                    let mut state = self.state.write().map_err(|_| StoreError::Poisoned)?;
                    for (key, obj) in &batch.staged {
                        let status_only = matches!(
                            (state.objects.get(key), obj),
                            (Some(old), Some(new))
                                if old.generation == new.generation && old.deleting == new.deleting
                        );
                        let revisions = if status_only {
                            &mut state.status_revisions
                        } else {
                            &mut state.spec_revisions
                        };
                        revisions.insert(key.kind, batch.revision);
                        state.set(key, obj.clone());
                        state.changes.push_back((batch.revision, key.clone()));
                    }
                    while state.changes.len() > CHANGE_LOG {
                        if let Some((revision, _)) = state.changes.pop_front() {
                            state.changes_from = revision;
                        }
                    }
                    for report in &batch.hosts {
                        state.hosts.insert(report.host.clone(), report.clone());
                    }
                    state.revision = batch.revision;
                    w.inflight = Arc::default();
                    drop(state);
                    drop(w);
                    for ev in &batch.events {
                        // No receivers is fine: nobody is watching.
                        let _ = self.events.send(ev.clone());
                    }
                    log.done = committing;
                }
                Err(e) => {
                    // What was staged on top of the failed batch decided on
                    // changes that are now lost: it fails too.
                    let why = crate::server::error::error_chain(&e);
                    let on_top = w.pending_seq;
                    w.inflight = Arc::default();
                    w.pending = Batch::default();
                    w.pending_seq += 1;
                    w.revision = self
                        .state
                        .read()
                        .map_err(|_| StoreError::Poisoned)?
                        .revision;
                    let mut failed = self.failed.lock().map_err(|_| StoreError::Poisoned)?;
                    failed.insert(committing, why.clone());
                    failed.insert(on_top, why);
                    log.done = on_top;
                    let keep_from = log.done.saturating_sub(1024);
                    failed.retain(|s, _| *s >= keep_from);
                }
            }
            self.done.send_replace(log.done);
        }
        self.outcome(seq)
    }

    /// How group `seq`, once done, ended.
    fn outcome(&self, seq: u64) -> Result<(), StoreError> {
        match self
            .failed
            .lock()
            .map_err(|_| StoreError::Poisoned)?
            .get(&seq)
        {
            Some(why) => Err(StoreError::BatchFailed(why.clone())),
            None => Ok(()),
        }
    }

    /// Runs `f` like [`Store::transact`] and throws away what it staged: a
    /// plan of what a write would do, against the current objects.
    pub fn dry_run<T, E>(&self, f: impl FnOnce(&mut Txn<'_>) -> Result<T, E>) -> Result<(T, u64), E>
    where
        E: From<StoreError>,
    {
        let w = self.writer.lock().map_err(|_| StoreError::Poisoned)?;
        let state = self.state.read().map_err(|_| StoreError::Poisoned)?;
        let mut txn = Txn::new(&state, &w, &self.sealer);
        let value = f(&mut txn)?;
        Ok((value, w.revision))
    }

    fn commit(
        &self,
        staged: &BTreeMap<ObjectKey, Option<Arc<StoredObject>>>,
        events: &[Event],
        hosts: &[HostReport],
        rev: u64,
    ) -> Result<(), StoreError> {
        let w = self.db.begin_write()?;
        {
            let mut objects = w.open_table(OBJECTS)?;
            for (key, obj) in staged {
                let k = key_str(key);
                match obj {
                    Some(obj) => {
                        let bytes = encode_row(&obj.to_record(), || k.clone())?;
                        objects.insert(k.as_str(), bytes.as_slice())?;
                    }
                    None => {
                        objects.remove(k.as_str())?;
                    }
                }
            }
            let mut log = w.open_table(EVENTS)?;
            for ev in events {
                let bytes = encode_row(ev, || format!("event {}", ev.revision))?;
                log.insert(ev.revision, bytes.as_slice())?;
            }
            if log.len()? > EVENT_LOG_LEN {
                let cut = rev.saturating_sub(EVENT_LOG_LEN);
                log.retain_in(..=cut, |_, _| false)?;
            }
            let mut host_table = w.open_table(HOSTS)?;
            for report in hosts {
                let bytes = encode_row(report, || format!("host {}", report.host))?;
                host_table.insert(report.host.as_str(), bytes.as_slice())?;
            }
            w.open_table(META)?.insert("revision", rev)?;
        }
        w.commit()?;
        Ok(())
    }

    /// The commit histograms and failure counter, as Prometheus text.
    pub fn commit_metrics(&self, out: &mut String) {
        self.commit_seconds.render(
            out,
            "dpu_agent_store_commit_duration_seconds",
            "Time to write and fsync one grouped store commit.",
        );
        self.commit_group_size.render(
            out,
            "dpu_agent_store_commit_group_size",
            "Writes grouped into one store commit.",
        );
        metrics::header(
            out,
            "dpu_agent_store_commit_failures_total",
            "counter",
            "Store commits that failed (every write in them was refused).",
        );
        metrics::sample(
            out,
            "dpu_agent_store_commit_failures_total",
            &[],
            self.commit_failures.load(Ordering::Relaxed),
        );
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<StoredObject>> {
        self.state.read().ok()?.objects.get(key).cloned()
    }

    /// Objects of `kind`, of one tenant or all, in id order.
    pub fn list(&self, kind: Kind, tenant: Option<&str>) -> Vec<Arc<StoredObject>> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        match tenant {
            Some(t) => state.of_tenant(kind, t),
            None => range_of_kind(&state.objects, kind)
                .map(|(_, o)| o.clone())
                .collect(),
        }
    }

    /// How many objects of `kind` `tenant` owns (from the index, without
    /// listing them).
    pub fn count(&self, kind: Kind, tenant: &str) -> usize {
        self.state
            .read()
            .map(|s| s.count_of_tenant(kind, tenant))
            .unwrap_or(0)
    }

    /// The functions that name `pf` (spelled so), in id order (an index:
    /// no scan of the other PFs' functions).
    pub fn functions_on_pf(&self, pf: &str) -> Vec<Arc<StoredObject>> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        state
            .functions_by_pf
            .get(&pf_slot_space(pf))
            .into_iter()
            .flat_map(|on_pf| on_pf.ids.iter())
            .filter_map(|id| {
                state
                    .objects
                    .get(&ObjectKey::new(Kind::Function, id.clone()))
                    .cloned()
            })
            .filter(|o| o.spec.as_function().is_some_and(|f| f.pf.as_str() == pf))
            .collect()
    }

    /// The objects of `kind` of `tenant` whose spec names `target` through
    /// `field` ([`Spec::refers`]: a function's ports or volumes, a
    /// network's ports or endpoints), in id order, from an index: no walk
    /// over the tenant's other objects. Empty for a kind without `field`.
    pub fn referring(
        &self,
        kind: Kind,
        tenant: &str,
        field: RefField,
        target: &str,
    ) -> Vec<Arc<StoredObject>> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        state
            .referring(kind, tenant, field, target)
            .cloned()
            .collect()
    }

    /// Which functions other than `except` claim `slot` (a VF or an SF)
    /// of `pf` (from the PF index: no walk over the PF's functions).
    pub fn slot_claims(&self, pf: &str, slot: Slot, except: &str) -> SlotClaims {
        let Ok(state) = self.state.read() else {
            return SlotClaims::default();
        };
        let Some(on_pf) = state.functions_by_pf.get(&pf_slot_space(pf)) else {
            return SlotClaims::default();
        };
        let other = |map: &BTreeMap<Slot, BTreeSet<String>>| {
            map.get(&slot)
                .and_then(|ids| ids.iter().find(|id| *id != except).cloned())
        };
        SlotClaims {
            holder: other(&on_pf.held),
            first_asker: other(&on_pf.asked),
        }
    }

    /// The lowest number of `lo..=hi` whose slot of `carve` (VF index or
    /// SF number) on `pf` no function other than `except` holds or asks
    /// for, skipping `also_taken`.
    pub fn lowest_unclaimed(
        &self,
        pf: &str,
        carve: Carve,
        (lo, hi): (u32, u32),
        except: &str,
        also_taken: &BTreeSet<u32>,
    ) -> Option<u32> {
        let state = self.state.read().ok()?;
        let on_pf = state.functions_by_pf.get(&pf_slot_space(pf));
        let claimed = |n: u32| {
            also_taken.contains(&n)
                || on_pf.is_some_and(|p| {
                    [&p.held, &p.asked].iter().any(|map| {
                        map.get(&Slot::new(carve, n))
                            .is_some_and(|ids| ids.iter().any(|id| id != except))
                    })
                })
        };
        (lo..=hi).find(|n| !claimed(*n))
    }

    /// Every object, in kind order then id order.
    pub fn all(&self) -> Vec<Arc<StoredObject>> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        state.objects.values().cloned().collect()
    }

    /// Object counts per kind, for metrics.
    pub fn counts(&self) -> BTreeMap<Kind, usize> {
        let mut counts = BTreeMap::new();
        if let Ok(state) = self.state.read() {
            for key in state.objects.keys() {
                *counts.entry(key.kind).or_default() += 1;
            }
        }
        counts
    }

    pub fn revision(&self) -> u64 {
        self.state.read().map(|s| s.revision).unwrap_or(0)
    }

    /// The revision of the last committed change to `kind`'s specs (or to
    /// which objects exist or are being deleted), and of the last change to
    /// only their status; 0 when none since the store was opened. Lets a
    /// controller that derives state from a whole kind skip the rebuild when
    /// only unrelated writes happened.
    pub fn kind_revisions(&self, kind: Kind) -> (u64, u64) {
        self.state
            .read()
            .map(|s| {
                (
                    s.spec_revisions.get(&kind).copied().unwrap_or(0),
                    s.status_revisions.get(&kind).copied().unwrap_or(0),
                )
            })
            .unwrap_or((0, 0))
    }

    /// The keys of the objects of `kinds` that committed writes after
    /// revision `since` put or removed (each once, in key order), and the
    /// revision they bring a reader to; `None` when the store no longer
    /// remembers every change since then ([`CHANGE_LOG`]), or was opened
    /// after it. Lets a controller that derives state from whole kinds
    /// apply only what changed: read the objects of these keys
    /// ([`Store::get`]) after this call.
    pub fn changes_since(&self, since: u64, kinds: &[Kind]) -> Option<(u64, Vec<ObjectKey>)> {
        let state = self.state.read().ok()?;
        if since < state.changes_from {
            return None;
        }
        // The log is in revision order: walk back from the newest entry.
        let keys: BTreeSet<&ObjectKey> = state
            .changes
            .iter()
            .rev()
            .take_while(|(revision, _)| *revision > since)
            .map(|(_, key)| key)
            .filter(|key| kinds.contains(&key.kind))
            .collect();
        Some((state.revision, keys.into_iter().cloned().collect()))
    }

    pub fn hosts(&self) -> Vec<HostReport> {
        self.state
            .read()
            .map(|s| s.hosts.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Stored events with revision > `since`, oldest first, at most `limit`.
    /// `Err(oldest)` in the inner result when `since` is older than the
    /// compacted log can resume from.
    pub fn events_since(
        &self,
        since: u64,
        limit: usize,
    ) -> Result<Result<Vec<Event>, u64>, StoreError> {
        let r = self.db.begin_read()?;
        let log = r.open_table(EVENTS)?;
        let oldest = log.first()?.map(|(k, _)| k.value());
        if let Some(oldest) = oldest
            && since.saturating_add(1) < oldest
        {
            return Ok(Err(oldest));
        }
        let mut out = Vec::new();
        for row in log.range(since.saturating_add(1)..)? {
            let (k, v) = row?;
            let ev: Event = decode_row(v.value(), || format!("event {}", k.value()))?;
            out.push(ev);
            if out.len() >= limit {
                break;
            }
        }
        Ok(Ok(out))
    }

    /// The sealer of this store's secrets.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Live events after every commit. A receiver that falls behind by more
    /// than the channel holds gets `Lagged` and must resume from the log.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Opens a sealed secret field of a stored object, for a controller that
    /// must program it.
    pub fn open_secret(
        &self,
        obj: &StoredObject,
        field: &str,
    ) -> Result<Option<Zeroizing<String>>, StoreError> {
        match obj.sealed.get(field) {
            Some(v) => Ok(Some(self.sealer.open(&key_str(&obj.key()), field, v)?)),
            None => Ok(None),
        }
    }

    /// Takes the write-only fields out of `spec` (leaving them withheld) and
    /// seals them for `key`.
    pub fn seal_secrets(
        sealer: &Sealer,
        key: &ObjectKey,
        spec: &mut Spec,
    ) -> Result<BTreeMap<&'static str, Value>, StoreError> {
        let object = key_str(key);
        let mut out = BTreeMap::new();
        for (field, plain) in spec.take_secrets() {
            let plain = Zeroizing::new(plain);
            out.insert(field, sealer.seal(&object, field, &plain)?);
        }
        Ok(out)
    }

    /// The stored object's spec with its sealed fields opened into
    /// plaintext.
    pub fn open_spec(sealer: &Sealer, obj: &StoredObject) -> Result<Spec, StoreError> {
        let object = key_str(&obj.key());
        let mut spec = obj.spec.clone();
        for (field, sealed) in &obj.sealed {
            let plain = sealer.open(&object, field, sealed)?;
            if let Some(slot) = spec.secret_mut(field) {
                *slot = plain.as_str().into();
            }
        }
        Ok(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: Kind, id: &str, tenant: &str, spec: Value) -> StoredObject {
        StoredObject::new(id, tenant, Spec::parse(kind, &spec).unwrap())
    }

    #[test]
    fn commits_survive_reopen_with_revision_and_events() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let (_, rev) = store
                .transact(|t| {
                    t.put(
                        obj(Kind::Tenant, "acme", "acme", json!({})),
                        EventType::Added,
                    );
                    t.put(
                        obj(
                            Kind::Network,
                            "n1",
                            "acme",
                            json!({"vni": 5, "cidr": "10.0.0.0/24", "encap": "vxlan"}),
                        ),
                        EventType::Added,
                    );
                    Ok::<_, StoreError>(())
                })
                .unwrap();
            assert_eq!(rev, 2);
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.revision(), 2);
        assert_eq!(store.list(Kind::Network, Some("acme")).len(), 1);
        let events = store.events_since(0, 100).unwrap().unwrap();
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(store.events_since(1, 100).unwrap().unwrap().len(), 1);
        // A client's `since` is untrusted: the largest one is simply "nothing newer".
        assert!(
            store
                .events_since(u64::MAX, 100)
                .unwrap()
                .unwrap()
                .is_empty()
        );
    }

    /// A deferred write (the engine's status) is invisible to readers and
    /// lost by a crash until a durable write's group or a flush commits it;
    /// a later transaction sees it at once.
    #[test]
    fn deferred_writes_become_visible_and_durable_only_when_committed() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = ObjectKey::new(Kind::Tenant, "acme");
        let status = |gen_| Status {
            observed_generation: gen_,
            ..Status::default()
        };
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .transact(|t| {
                    t.put(
                        obj(Kind::Tenant, "acme", "acme", json!({})),
                        EventType::Added,
                    );
                    Ok::<_, StoreError>(())
                })
                .unwrap();
            store
                .transact_deferred(|t| Ok::<_, StoreError>(t.set_status(&tenant, status(1))))
                .unwrap();
            assert_eq!(store.get(&tenant).unwrap().status.observed_generation, 0);
            let (seen, _) = store
                .transact(|t| Ok::<_, StoreError>(t.get(&tenant).unwrap().status.clone()))
                .unwrap();
            assert_eq!(seen.observed_generation, 1, "a transaction sees it");
            // That read-only transaction waited for what it saw: now durable.
            assert_eq!(store.get(&tenant).unwrap().status.observed_generation, 1);

            store
                .transact_deferred(|t| Ok::<_, StoreError>(t.set_status(&tenant, status(2))))
                .unwrap();
            store.flush().unwrap();
            assert_eq!(store.get(&tenant).unwrap().status.observed_generation, 2);
            // Staged and never committed: what a crash loses.
            store
                .transact_deferred(|t| Ok::<_, StoreError>(t.set_status(&tenant, status(3))))
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.get(&tenant).unwrap().status.observed_generation, 2);
        let events = store.events_since(0, 100).unwrap().unwrap();
        assert_eq!(events.len(), 3, "added, two status events: {events:?}");
    }

    #[test]
    fn failed_closure_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let res = store.transact(|t| {
            t.put(
                obj(Kind::Tenant, "acme", "acme", json!({})),
                EventType::Added,
            );
            Err::<(), _>(StoreError::Poisoned)
        });
        assert!(res.is_err());
        assert_eq!(store.revision(), 0);
        assert!(store.all().is_empty());
    }

    #[test]
    fn txn_sees_its_own_staged_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .transact(|t| {
                t.put(obj(Kind::Tenant, "a", "a", json!({})), EventType::Added);
                assert_eq!(t.list(Kind::Tenant, None).len(), 1);
                t.remove(&ObjectKey::new(Kind::Tenant, "a"));
                assert!(t.list(Kind::Tenant, None).is_empty());
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert!(store.all().is_empty());
    }

    #[test]
    fn secrets_are_sealed_at_rest_and_redacted_on_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let key = ObjectKey::new(Kind::IpsecTunnel, "t1");
        let secret = "00112233445566778899aabbccddeeff01020304";
        store
            .transact(|t| {
                let mut o = obj(
                    Kind::IpsecTunnel,
                    "t1",
                    "a",
                    json!({"local": "192.0.2.1", "remote": "192.0.2.2", "mode": "tunnel",
                           "cipher": "aes-gcm-128", "spi_in": 300, "spi_out": 301,
                           "key_in": secret, "key_out": secret}),
                );
                o.sealed = Store::seal_secrets(t.sealer(), &key, &mut o.spec)?;
                t.put(o, EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let raw = std::fs::read(dir.path().join("store.redb")).unwrap();
        assert!(!raw.windows(secret.len()).any(|w| w == secret.as_bytes()));
        let stored = store.get(&key).unwrap();
        let api = stored.to_api();
        assert_eq!(api.spec["key_in_set"], json!(true));
        assert!(api.spec.get("key_in").is_none());
        assert_eq!(
            &*store.open_secret(&stored, "key_in").unwrap().unwrap(),
            secret
        );
        // In memory the typed spec withholds it; the sealed form opens again
        // after a reopen from disk.
        assert!(stored.spec.as_ipsec_tunnel().unwrap().key_in.is_withheld());
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let stored = store.get(&key).unwrap();
        match Store::open_spec(store.sealer(), &stored).unwrap() {
            Spec::IpsecTunnel(t) => {
                assert_eq!((t.key_in.expose(), t.key_out.expose()), (secret, secret))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_record_that_is_not_a_spec_of_its_kind_stops_the_open_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        {
            // A record as an older or damaged agent might have left it.
            let db = Database::create(dir.path().join("store.redb")).unwrap();
            let w = db.begin_write().unwrap();
            w.open_table(OBJECTS)
                .unwrap()
                .insert(
                    "networks/n1",
                    br#"{"kind":"Network","id":"n1","tenant":"a","generation":1,
                         "spec":{"vni":"five"},"status":{}}"#
                        .as_slice(),
                )
                .unwrap();
            w.commit().unwrap();
        }
        match Store::open(dir.path()) {
            Err(e @ StoreError::Undecodable { .. }) => {
                let text = format!("{e}: {}", std::error::Error::source(&e).unwrap());
                assert!(
                    text.contains("networks/n1") && text.contains("spec.vni"),
                    "{text}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn indexes_agree_with_a_scan_after_puts_moves_removes_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let function = |id: &str, tenant: &str, pf: &str| {
            obj(Kind::Function, id, tenant, json!({"type": "net", "pf": pf}))
        };
        let port = |id: &str, tenant: &str, function: &str, network: &str| {
            obj(
                Kind::Port,
                id,
                tenant,
                json!({"network": network, "function": function, "mac": "02:00:00:00:00:01"}),
            )
        };
        let volume = |id: &str, tenant: &str, function: &str| {
            obj(
                Kind::Volume,
                id,
                tenant,
                json!({"function": function, "source": {"local": {"size_mib": 1}}}),
            )
        };
        let endpoint = |id: &str, tenant: &str, network: &str| {
            obj(
                Kind::Endpoint,
                id,
                tenant,
                json!({"network": network, "mac": "02:00:00:00:00:02", "vtep": "192.0.2.1"}),
            )
        };
        type Referring<'r> = &'r dyn Fn(Kind, &str, RefField, &str) -> Vec<Arc<StoredObject>>;
        const TARGETS: [&str; 6] = ["f0", "f1", "f2", "f3", "n0", "n1"];
        const KINDS: [Kind; 4] = [Kind::Port, Kind::Volume, Kind::Endpoint, Kind::Network];
        // Every reference index answer of a store or a transaction, against
        // a filter of what it lists.
        let refs_agree = |list: &dyn Fn(Kind, &str) -> Vec<Arc<StoredObject>>,
                          referring: Referring<'_>,
                          what: &str| {
            for tenant in ["a", "b"] {
                for kind in KINDS {
                    for field in RefField::ALL {
                        for target in TARGETS {
                            let scanned: Vec<String> = list(kind, tenant)
                                .iter()
                                .filter(|o| o.spec.refers(field) == Some(target))
                                .map(|o| o.id.clone())
                                .collect();
                            let indexed: Vec<String> = referring(kind, tenant, field, target)
                                .iter()
                                .map(|o| o.id.clone())
                                .collect();
                            assert_eq!(
                                indexed, scanned,
                                "{what}: {kind:?} of {tenant} by {field:?} = {target}"
                            );
                        }
                    }
                }
            }
        };
        let check = |store: &Store| {
            let all = store.all();
            for pf in ["pf0", "pf1", "pf2"] {
                let scanned: Vec<String> = all
                    .iter()
                    .filter(|o| o.spec.as_function().is_some_and(|f| f.pf == pf))
                    .map(|o| o.id.clone())
                    .collect();
                let indexed: Vec<String> = store
                    .functions_on_pf(pf)
                    .iter()
                    .map(|o| o.id.clone())
                    .collect();
                assert_eq!(indexed, scanned, "{pf}");
            }
            let scan = |kind: Kind, tenant: &str| -> Vec<Arc<StoredObject>> {
                all.iter()
                    .filter(|o| o.kind() == kind && o.tenant == tenant)
                    .cloned()
                    .collect()
            };
            refs_agree(&scan, &|k, t, f, x| store.referring(k, t, f, x), "store");
            for tenant in ["a", "b"] {
                for kind in [Kind::Function, Kind::Tenant, Kind::Port, Kind::Volume] {
                    let scanned: Vec<String> =
                        scan(kind, tenant).iter().map(|o| o.id.clone()).collect();
                    let indexed: Vec<String> = store
                        .list(kind, Some(tenant))
                        .iter()
                        .map(|o| o.id.clone())
                        .collect();
                    assert_eq!(indexed, scanned, "{kind:?} {tenant}");
                }
            }
        };
        {
            let store = Store::open(dir.path()).unwrap();
            // One object a commit: functions f0..f3; ports two on f0, one
            // each on f2 and f3 (tenant b's f3 too); volumes the same way,
            // one port and one volume sharing an id; endpoints on n0, n1.
            let functions = [("a", "pf0"), ("b", "pf0"), ("a", "pf1"), ("b", "pf2")]
                .into_iter()
                .enumerate()
                .map(|(i, (tenant, pf))| function(&format!("f{i}"), tenant, pf));
            let ports = [
                ("p0", "a", "f0", "n0"),
                ("p1", "a", "f0", "n1"),
                ("p2", "a", "f2", "n0"),
                ("p3", "b", "f3", "n0"),
            ]
            .map(|(id, tenant, f, n)| port(id, tenant, f, n));
            let volumes = [
                ("p0", "a", "f0"),
                ("v1", "a", "f0"),
                ("v2", "a", "f2"),
                ("v3", "b", "f3"),
            ]
            .map(|(id, tenant, f)| volume(id, tenant, f));
            let endpoints = [("e0", "a", "n0"), ("e1", "b", "n0"), ("p1", "a", "n1")]
                .map(|(id, tenant, n)| endpoint(id, tenant, n));
            for o in functions.chain(ports).chain(volumes).chain(endpoints) {
                store
                    .transact(|t| {
                        t.put(o, EventType::Added);
                        Ok::<_, StoreError>(())
                    })
                    .unwrap();
            }
            check(&store);
            // f0 moves to pf2, f1 goes, a tenant object joins; p1 moves to
            // f2 and n0, p2 goes; v1 moves, v2 goes; e0 moves to n1.
            store
                .transact(|t| {
                    t.put(function("f0", "a", "pf2"), EventType::Modified);
                    t.remove(&ObjectKey::new(Kind::Function, "f1"));
                    t.put(obj(Kind::Tenant, "a", "a", json!({})), EventType::Added);
                    t.put(port("p1", "a", "f2", "n0"), EventType::Modified);
                    t.remove(&ObjectKey::new(Kind::Port, "p2"));
                    t.put(volume("v1", "a", "f2"), EventType::Modified);
                    t.remove(&ObjectKey::new(Kind::Volume, "v2"));
                    t.put(endpoint("e0", "a", "n1"), EventType::Modified);
                    Ok::<_, StoreError>(())
                })
                .unwrap();
            check(&store);
            let ids = |found: Vec<Arc<StoredObject>>| -> Vec<String> {
                found.iter().map(|o| o.id.clone()).collect()
            };
            let f = RefField::Function;
            assert_eq!(ids(store.referring(Kind::Port, "a", f, "f2")), ["p1"]);
            assert_eq!(ids(store.referring(Kind::Volume, "a", f, "f2")), ["v1"]);
            assert_eq!(ids(store.referring(Kind::Volume, "a", f, "f0")), ["p0"]);
            let n = RefField::Network;
            assert_eq!(ids(store.referring(Kind::Port, "a", n, "n0")), ["p0", "p1"]);
            assert_eq!(
                ids(store.referring(Kind::Endpoint, "a", n, "n1")),
                ["e0", "p1"]
            );
            for kind in KINDS {
                assert!(
                    store.referring(kind, "a", f, "f3").is_empty(),
                    "another tenant's"
                );
            }
            assert!(store.list(Kind::Function, Some("b")).len() == 1);
            assert!(store.functions_on_pf("pf0").is_empty());
            // A transaction sees its own staged changes in the index's
            // answers, as in what it lists.
            store
                .dry_run(|t| {
                    t.put(port("p9", "a", "f0", "n1"), EventType::Added);
                    t.put(port("p1", "a", "f3", "n1"), EventType::Modified);
                    t.remove(&ObjectKey::new(Kind::Port, "p0"));
                    t.put(volume("v9", "b", "f0"), EventType::Added);
                    t.remove(&ObjectKey::new(Kind::Endpoint, "e0"));
                    t.put(endpoint("e9", "a", "n0"), EventType::Added);
                    refs_agree(
                        &|k, tenant| t.list(k, Some(tenant)),
                        &|k, tenant, field, x| t.referring(k, tenant, field, x),
                        "staged",
                    );
                    for tenant in ["a", "b"] {
                        for kind in [Kind::Port, Kind::Volume, Kind::Endpoint, Kind::Function] {
                            assert_eq!(
                                t.count(kind, Some(tenant)),
                                t.list(kind, Some(tenant)).len(),
                                "{kind:?} of {tenant}"
                            );
                        }
                    }
                    assert_eq!(t.count(Kind::Port, Some("a")), 2, "p1 and p9");
                    assert_eq!(ids(t.referring(Kind::Port, "a", n, "n1")), ["p1", "p9"]);
                    assert!(t.referring(Kind::Port, "a", f, "f2").is_empty());
                    Ok::<_, StoreError>(())
                })
                .unwrap();
        }
        check(&Store::open(dir.path()).unwrap());
    }

    /// A transaction's list and VNI lookup lay the writes waiting for the
    /// disk (deferred, not yet flushed) and its own staged changes over the
    /// committed objects, the newest deciding, in id order.
    #[test]
    fn txn_list_and_vni_lookup_see_waiting_and_staged_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let net = |id: &str, tenant: &str, vni: u32| {
            obj(
                Kind::Network,
                id,
                tenant,
                json!({"vni": vni, "cidr": "10.0.0.0/24", "encap": "vxlan"}),
            )
        };
        let key = |id: &str| ObjectKey::new(Kind::Network, id);
        store
            .transact(|t| {
                for (id, tenant, vni) in [
                    ("n1", "a", 1),
                    ("n3", "a", 3),
                    ("n5", "b", 5),
                    ("n7", "a", 7),
                ] {
                    t.put(net(id, tenant, vni), EventType::Added);
                }
                Ok::<_, StoreError>(())
            })
            .unwrap();
        // Waiting for the disk: n3 to VNI 30, n7 gone, n4 and n2 new.
        store
            .transact_deferred(|t| {
                t.put(net("n3", "a", 30), EventType::Modified);
                t.remove(&key("n7"));
                t.put(net("n4", "a", 4), EventType::Added);
                t.put(net("n2", "b", 2), EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert!(
            store.get(&key("n4")).is_none(),
            "still waiting for the disk"
        );
        store
            .dry_run(|t| {
                t.put(net("n5", "b", 50), EventType::Modified);
                t.put(net("n6", "a", 3), EventType::Added);
                t.remove(&key("n4"));
                let ids = |tenant: Option<&str>| -> Vec<String> {
                    t.list(Kind::Network, tenant)
                        .iter()
                        .map(|o| o.id.clone())
                        .collect()
                };
                assert_eq!(ids(Some("a")), ["n1", "n3", "n6"]);
                assert_eq!(ids(Some("b")), ["n2", "n5"]);
                assert_eq!(ids(None), ["n1", "n2", "n3", "n5", "n6"]);
                let with =
                    |vni: u32, except: &str| t.network_with_vni(vni, except).map(|o| o.id.clone());
                assert_eq!(with(3, ""), Some("n6".into()), "n3 left VNI 3");
                assert_eq!(with(3, "n6"), None);
                assert_eq!(with(30, ""), Some("n3".into()));
                assert_eq!(with(7, ""), None, "n7 is gone");
                assert_eq!(with(4, ""), None, "n4 is gone again");
                assert_eq!(with(5, ""), None, "n5 moved to 50");
                assert_eq!(with(50, ""), Some("n5".into()));
                assert_eq!(with(1, ""), Some("n1".into()));
                assert_eq!(with(2, ""), Some("n2".into()));
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store.flush().unwrap();
        let ids: Vec<String> = store
            .list(Kind::Network, Some("a"))
            .iter()
            .map(|o| o.id.clone())
            .collect();
        assert_eq!(ids, ["n1", "n3", "n4"], "the dry run changed nothing");
    }

    /// The PF index answers VF allocation's questions as a walk over the
    /// PF's functions would: holders from status, askers from spec (only
    /// while they do not hold it), through status changes, moves and
    /// removals.
    #[test]
    fn vf_claims_follow_status_spec_moves_and_removals() {
        // The claims on pf0 as `x`, a function that holds and asks for
        // nothing, sees them.
        fn holder(store: &Store, slot: Slot) -> Option<String> {
            store.slot_claims("pf0", slot, "x").holder
        }
        fn first_asker(store: &Store, slot: Slot) -> Option<String> {
            store.slot_claims("pf0", slot, "x").first_asker
        }
        fn lowest_free(store: &Store, carve: Carve, range: (u32, u32)) -> Option<u32> {
            store.lowest_unclaimed("pf0", carve, range, "x", &BTreeSet::new())
        }
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let function = |id: &str, pf: &str, vf: Option<u32>| {
            let mut spec = json!({"type": "net", "pf": pf});
            if let Some(vf) = vf {
                spec["vf"] = json!(vf);
            }
            obj(Kind::Function, id, "a", spec)
        };
        let holding = |mut o: StoredObject, vf: u32| {
            o.status.facts.vf = Some(vf);
            o
        };
        let put = |o: StoredObject| {
            store
                .transact(|t| {
                    t.put(o, EventType::Modified);
                    Ok::<_, StoreError>(())
                })
                .unwrap();
        };
        let none = BTreeSet::new();
        put(holding(function("f0", "pf0", None), 0));
        put(function("f2", "pf0", Some(2)));
        put(function("f1", "pf0", Some(2)));
        let claims = store.slot_claims("pf0", Slot::Vf(0), "x");
        assert_eq!(claims.holder.as_deref(), Some("f0"));
        assert_eq!(
            store.slot_claims("pf0", Slot::Vf(0), "f0"),
            SlotClaims::default()
        );
        assert_eq!(
            first_asker(&store, Slot::Vf(2)).as_deref(),
            Some("f1"),
            "the lowest id asking"
        );
        assert_eq!(lowest_free(&store, Carve::Vf, (0, 9)), Some(1));
        let taken: BTreeSet<u32> = [1].into();
        assert_eq!(
            store.lowest_unclaimed("pf0", Carve::Vf, (0, 9), "x", &taken),
            Some(3)
        );
        assert_eq!(lowest_free(&store, Carve::Vf, (0, 0)), None);
        assert_eq!(
            store.lowest_unclaimed("pf1", Carve::Vf, (0, 9), "x", &none),
            Some(0)
        );
        // f1 gets VF 2: a holder now, no longer an asker.
        put(holding(function("f1", "pf0", Some(2)), 2));
        let claims = store.slot_claims("pf0", Slot::Vf(2), "f2");
        assert_eq!(claims.holder.as_deref(), Some("f1"));
        assert_eq!(claims.first_asker, None);
        // f0 moves to pf1 (status cleared), f1 goes.
        put(function("f0", "pf1", None));
        store
            .transact(|t| {
                t.remove(&ObjectKey::new(Kind::Function, "f1"));
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(
            store.slot_claims("pf0", Slot::Vf(0), "x"),
            SlotClaims::default()
        );
        assert_eq!(first_asker(&store, Slot::Vf(2)).as_deref(), Some("f2"));
        assert_eq!(lowest_free(&store, Carve::Vf, (0, 9)), Some(0));
        // SF numbers are their own namespace on the PF: SF 2 held and SF 0
        // asked for claim no VF, and VF 2 asked for claims no SF.
        let mut sf = obj(
            Kind::Function,
            "s2",
            "b",
            json!({"type": "net", "pf": "pf0", "sf": 2}),
        );
        sf.status.facts.sf = Some(2);
        put(sf);
        put(obj(
            Kind::Function,
            "s0",
            "b",
            json!({"type": "net", "pf": "pf0", "carve": "sf", "sf": 0}),
        ));
        assert_eq!(holder(&store, Slot::Sf(2)).as_deref(), Some("s2"));
        assert_eq!(first_asker(&store, Slot::Sf(0)).as_deref(), Some("s0"));
        assert_eq!(holder(&store, Slot::Vf(2)), None);
        assert_eq!(first_asker(&store, Slot::Sf(2)), None);
        assert_eq!(lowest_free(&store, Carve::Vf, (0, 9)), Some(0));
        assert_eq!(lowest_free(&store, Carve::Sf, (0, 9)), Some(1));
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(
            first_asker(&store, Slot::Vf(2)).as_deref(),
            Some("f2"),
            "rebuilt on open"
        );
        assert_eq!(
            holder(&store, Slot::Sf(2)).as_deref(),
            Some("s2"),
            "rebuilt on open"
        );
    }

    #[test]
    fn a_view_sees_the_changes_and_leaves_the_store_alone() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .transact(|t| {
                t.put(obj(Kind::Tenant, "a", "a", json!({})), EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        let (changes, _) = store
            .dry_run(|t| {
                t.put(
                    obj(
                        Kind::Function,
                        "f",
                        "a",
                        json!({"type": "net", "pf": "pf0"}),
                    ),
                    EventType::Added,
                );
                t.remove(&ObjectKey::new(Kind::Tenant, "a"));
                Ok::<_, StoreError>(t.staged_changes())
            })
            .unwrap();
        let view = store.view_with(changes).unwrap();
        assert_eq!(view.functions_on_pf("pf0").len(), 1);
        assert_eq!(view.list(Kind::Function, Some("a")).len(), 1);
        assert!(view.get(&ObjectKey::new(Kind::Tenant, "a")).is_none());
        // The store itself is as it was, on disk too.
        assert!(store.functions_on_pf("pf0").is_empty());
        assert!(store.get(&ObjectKey::new(Kind::Tenant, "a")).is_some());
        drop((view, store));
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.all().len(), 1);
    }

    #[test]
    fn concurrent_writers_are_grouped_without_losing_or_reordering() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let store = store.clone();
                    std::thread::spawn(move || {
                        let mut revs = Vec::new();
                        for i in 0..50 {
                            let id = format!("t{t}-{i}");
                            let (_, rev) = store
                                .transact(|txn| {
                                    // Each writer sees everything staged before it.
                                    let before = txn.list(Kind::Tenant, None).len();
                                    txn.put(
                                        obj(Kind::Tenant, &id, &id, json!({})),
                                        EventType::Added,
                                    );
                                    Ok::<_, StoreError>(before)
                                })
                                .unwrap();
                            // Answered only once durable: visible to plain reads.
                            assert!(store.get(&ObjectKey::new(Kind::Tenant, id)).is_some());
                            revs.push(rev);
                        }
                        revs
                    })
                })
                .collect();
            let mut all: Vec<u64> = threads
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect();
            all.sort();
            assert_eq!(all, (1..=400).collect::<Vec<u64>>());
            assert_eq!(store.revision(), 400);
            // Every write is counted in exactly one timed commit.
            let groups = store.commit_group_size.get([]).unwrap();
            assert_eq!(groups.sum(), 400.0);
            assert_eq!(
                store.commit_seconds.get([]).unwrap().count(),
                groups.count()
            );
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list(Kind::Tenant, None).len(), 400);
        let events = store.events_since(0, 1000).unwrap().unwrap();
        assert_eq!(
            events.iter().map(|e| e.revision).collect::<Vec<_>>(),
            (1..=400).collect::<Vec<u64>>()
        );
    }

    /// A runtime like the agent's on the 2-core machine.
    fn two_workers() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// The API's path: 32 writers stage on a two-worker runtime and wait
    /// without a thread each. Every write is durable when its wait returns,
    /// none is lost or reordered, and more than one write shares a commit.
    #[test]
    fn staged_writers_wait_without_a_thread_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = two_workers();
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            let revs = rt.block_on(async {
                let writers: Vec<_> = (0..32)
                    .map(|w| {
                        let store = store.clone();
                        tokio::spawn(async move {
                            let mut revs = Vec::new();
                            for i in 0..20 {
                                let id = format!("w{w}-{i}");
                                let s = store.clone();
                                let key = ObjectKey::new(Kind::Tenant, id.clone());
                                let (_, rev, durable) = tokio::task::spawn_blocking(move || {
                                    s.transact_staged(|txn| {
                                        txn.put(
                                            obj(Kind::Tenant, &id, &id, json!({})),
                                            EventType::Added,
                                        );
                                        Ok::<_, StoreError>(())
                                    })
                                })
                                .await
                                .unwrap()
                                .unwrap();
                                durable.wait().await.unwrap();
                                // Answered only once durable: visible to plain reads.
                                assert!(store.get(&key).is_some());
                                revs.push(rev);
                            }
                            revs
                        })
                    })
                    .collect();
                let mut all = Vec::new();
                for w in writers {
                    all.extend(w.await.unwrap());
                }
                all
            });
            let mut all = revs;
            all.sort();
            assert_eq!(all, (1..=640).collect::<Vec<u64>>());
            let groups = store.commit_group_size.get([]).unwrap();
            assert_eq!(groups.sum(), 640.0);
            assert!(
                groups.count() < 640,
                "writes shared commits: {} commits for 640 writes",
                groups.count()
            );
        }
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list(Kind::Tenant, None).len(), 640);
    }

    /// A writer that goes away after staging (a client that disconnects)
    /// still gets its write committed: nobody else writes, and the write is
    /// found after a reopen.
    #[test]
    fn a_dropped_wait_still_commits_the_staged_write() {
        let dir = tempfile::tempdir().unwrap();
        let rt = two_workers();
        {
            let store = Arc::new(Store::open(dir.path()).unwrap());
            rt.block_on(async {
                let (_, rev, durable) = store
                    .transact_staged(|txn| {
                        txn.put(
                            obj(Kind::Tenant, "gone", "gone", json!({})),
                            EventType::Added,
                        );
                        Ok::<_, StoreError>(())
                    })
                    .unwrap();
                assert_eq!(rev, 1);
                drop(durable);
                let key = ObjectKey::new(Kind::Tenant, "gone".to_string());
                for _ in 0..500 {
                    if store.get(&key).is_some() {
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
                panic!("the staged write was not committed after its wait was dropped");
            });
        }
        drop(rt);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.list(Kind::Tenant, None).len(), 1);
    }

    #[test]
    fn vni_lookup_sees_staged_changes_and_hides_removed_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let network = |id: &str, vni: u32, cidr: &str| {
            obj(
                Kind::Network,
                id,
                "x",
                json!({"vni": vni, "cidr": cidr, "encap": "vxlan"}),
            )
        };
        store
            .transact(|t| {
                t.put(network("a", 1, "10.0.0.0/24"), EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store
            .transact(|t| {
                assert_eq!(t.network_with_vni(1, "").unwrap().id, "a");
                assert!(t.network_with_vni(1, "a").is_none(), "except itself");
                t.put(network("b", 2, "10.0.1.0/24"), EventType::Added);
                assert_eq!(t.network_with_vni(2, "").unwrap().id, "b");
                t.remove(&ObjectKey::new(Kind::Network, "a"));
                assert!(t.network_with_vni(1, "").is_none());
                // A staged change of VNI hides the committed one.
                t.put(network("c", 3, "10.0.2.0/24"), EventType::Added);
                Ok::<_, StoreError>(())
            })
            .unwrap();
        store
            .transact(|t| {
                t.put(network("c", 4, "10.0.2.0/24"), EventType::Modified);
                assert!(t.network_with_vni(3, "").is_none());
                assert_eq!(t.network_with_vni(4, "").unwrap().id, "c");
                Ok::<_, StoreError>(())
            })
            .unwrap();
        assert_eq!(store.state.read().unwrap().networks_by_vni.len(), 2);
    }
}
