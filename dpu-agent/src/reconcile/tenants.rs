//! The tenants controller: counts what each tenant owns into
//! `status.usage` and reports the tenant `Ready`. Quotas are enforced at
//! admission (see `admission::admit_put`); a tenant that still owns objects
//! cannot be deleted (409 at admission).

use dpu_api::Kind;
use dpu_api::object::{ConditionStatus, Phase, WriteOutcome};
use dpu_api::report::TenantReport;

use super::{Context, Controller, Outcome, Reason, Reconciling, condition};
use crate::store::StoredObject;

#[derive(Debug, Clone, Default)]
pub struct Tenants;

/// Usage counts of one tenant, by kind path (`functions`, `volumes`, ...).
pub fn usage(ctx: &Context, tenant: &str) -> TenantReport {
    TenantReport {
        usage: Kind::ALL
            .into_iter()
            .filter(|k| !k.is_tenant())
            .map(|kind| {
                (
                    kind.path().replace('-', "_"),
                    ctx.store.count(kind, tenant) as u64,
                )
            })
            .collect(),
    }
}

impl Controller for Tenants {
    fn kind(&self) -> Kind {
        Kind::Tenant
    }

    fn reconcile<'a>(&'a self, ctx: &'a Context, obj: &'a StoredObject) -> Reconciling<'a> {
        Box::pin(async move {
            let mut status = obj.status.clone();
            let usage = usage(ctx, &obj.id);
            let owned: u64 = usage.usage.values().sum();
            status.set_report(&usage);
            if obj.deleting {
                // Admission refused the delete while objects existed; objects
                // still being torn down hold the tenant until they are gone.
                return Ok(Outcome {
                    status,
                    finalized: owned == 0,
                    requeue_after: None,
                });
            }
            status.phase = Phase::Ready;
            status.set_condition(condition(
                "Ready",
                ConditionStatus::True,
                Reason::UsageCounted,
                format!("owns {owned} objects"),
            ));
            Ok(Outcome {
                status,
                finalized: false,
                requeue_after: None,
            })
        })
    }

    fn plan(&self, _ctx: &Context, obj: &StoredObject, outcome: WriteOutcome) -> Vec<String> {
        match outcome {
            WriteOutcome::Deleted => vec![format!("forget tenant {}", obj.id)],
            WriteOutcome::Unchanged => Vec::new(),
            _ => vec![format!("record tenant {} and count its usage", obj.id)],
        }
    }
}
