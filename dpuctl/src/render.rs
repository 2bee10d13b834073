//! Text for the operator: aligned tables, `describe`, plans, apply results
//! and watch lines. Pure functions from API types to strings.

use dpu_api::object::{
    ApplyResponse, ConditionStatus, Event, EventType, Object, PlanResponse, WriteOutcome,
};
use serde_json::Value;

/// Longest message shown in a table cell; `describe` shows all of it.
const MAX_MESSAGE: usize = 60;

/// Columns separated by three spaces, each as wide as its widest cell; the
/// last column is not padded. Widths count characters, not bytes.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut out = String::new();
        for (i, cell) in cells.enumerate() {
            if i > 0 {
                out.push_str("   ");
            }
            out.push_str(cell);
            if i + 1 < widths.len() {
                let pad = widths[i].saturating_sub(cell.chars().count());
                out.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
        out
    };
    let mut out = line(&mut headers.iter().copied());
    for row in rows {
        out.push_str(&line(&mut row.iter().map(String::as_str)));
    }
    out
}

/// `get`'s columns.
pub const OBJECT_HEADERS: [&str; 6] = ["ID", "TENANT", "GEN", "PHASE", "REASON", "MESSAGE"];

/// One row of `get`: GEN shows `observed/generation` while the controller
/// has not caught up; REASON and MESSAGE are those of the first condition
/// that is not True.
pub fn object_row(o: &Object) -> Vec<String> {
    let generation = if o.status.observed_generation == o.generation {
        o.generation.to_string()
    } else {
        format!("{}/{}", o.status.observed_generation, o.generation)
    };
    let (reason, message) = match telling_condition(o) {
        Some(c) => (
            format!("{}: {}", c.type_, c.reason),
            shorten(&c.message, MAX_MESSAGE),
        ),
        None => ("-".to_string(), String::new()),
    };
    vec![
        o.id.clone(),
        o.tenant.clone(),
        generation,
        o.status.phase.to_string(),
        reason,
        message,
    ]
}

/// The condition that explains the phase: the first one that is not True,
/// else, when the object is not Ready, the last one (a controller may
/// report trouble as a True condition such as `BackendUnavailable`).
fn telling_condition(o: &Object) -> Option<&dpu_api::Condition> {
    let conditions = &o.status.conditions;
    conditions
        .iter()
        .find(|c| c.status != ConditionStatus::True)
        .or_else(|| {
            (o.status.phase != dpu_api::Phase::Ready)
                .then(|| conditions.last())
                .flatten()
        })
}

pub fn objects_table(objects: &[Object]) -> String {
    let rows: Vec<_> = objects.iter().map(object_row).collect();
    table(&OBJECT_HEADERS, &rows)
}

/// One line, at most `max` characters, ending in `...` when cut.
pub fn shorten(s: &str, max: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut out: String = one_line.chars().take(max.saturating_sub(3)).collect();
    out.push_str("...");
    out
}

/// `describe`: the envelope, spec, kind-specific status, conditions and the
/// object's recent events.
pub fn describe(o: &Object, events: Result<&[Event], &crate::EventsError>) -> String {
    let mut out = String::new();
    let mut field = |name: &str, value: String| {
        out.push_str(&format!("{:<13}{value}\n", format!("{name}:")));
    };
    field("Kind", o.kind.name().to_string());
    field("ID", o.id.clone());
    field("Tenant", o.tenant.clone());
    let observed = if o.status.observed_generation == o.generation {
        String::new()
    } else {
        format!(
            " (controller has seen generation {})",
            o.status.observed_generation
        )
    };
    field("Generation", format!("{}{observed}", o.generation));
    field("Phase", o.status.phase.to_string());
    out.push_str("Spec:\n");
    out.push_str(&indented_yaml(&o.spec));
    if !o.status.fields.is_empty() {
        out.push_str("Status:\n");
        out.push_str(&indented_yaml(&Value::Object(o.status.fields.clone())));
    }
    out.push_str("Conditions:\n");
    if o.status.conditions.is_empty() {
        out.push_str("  (none yet)\n");
    } else {
        let rows: Vec<_> = o
            .status
            .conditions
            .iter()
            .map(|c| {
                vec![
                    c.type_.clone(),
                    format!("{:?}", c.status),
                    c.reason.clone(),
                    c.last_transition.clone(),
                    c.message.clone(),
                ]
            })
            .collect();
        let t = table(&["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"], &rows);
        out.push_str(&indent(&t));
    }
    out.push_str("Events:\n");
    match events {
        Ok([]) => out.push_str("  (none kept)\n"),
        Ok(events) => {
            let rows: Vec<_> = events
                .iter()
                .map(|e| {
                    vec![
                        e.revision.to_string(),
                        event_type(e.type_).to_string(),
                        e.object.generation.to_string(),
                        e.object.status.phase.to_string(),
                    ]
                })
                .collect();
            out.push_str(&indent(&table(
                &["REVISION", "TYPE", "GEN", "PHASE"],
                &rows,
            )));
        }
        Err(why) => out.push_str(&format!("  (not available: {why})\n")),
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("  {l}\n")).collect()
}

fn indented_yaml(v: &Value) -> String {
    match v {
        Value::Object(m) if m.is_empty() => "  {}\n".to_string(),
        _ => indent(&serde_yaml::to_string(v).unwrap_or_else(|_| v.to_string())),
    }
}

pub fn event_type(t: EventType) -> &'static str {
    match t {
        EventType::Added => "added",
        EventType::Modified => "modified",
        EventType::Deleted => "deleted",
        EventType::Status => "status",
    }
}

fn outcome(o: WriteOutcome) -> &'static str {
    match o {
        WriteOutcome::Created => "created",
        WriteOutcome::Updated => "updated",
        WriteOutcome::Unchanged => "unchanged",
        WriteOutcome::Deleted => "deleted",
    }
}

/// `apply`: one line per object, then the revision.
pub fn apply_result(r: &ApplyResponse) -> String {
    let mut out = String::new();
    for res in &r.results {
        out.push_str(&format!(
            "{}/{} {} (generation {})\n",
            res.kind.path(),
            res.id,
            outcome(res.outcome),
            res.generation
        ));
    }
    out.push_str(&format!("revision {}\n", r.revision));
    out
}

/// `plan`: per object its outcome and the backend actions, indented.
pub fn plan(p: &PlanResponse) -> String {
    let mut out = String::new();
    for o in &p.objects {
        out.push_str(&format!(
            "{}/{} (tenant {}): {}\n",
            o.kind.path(),
            o.id,
            o.tenant,
            outcome(o.outcome)
        ));
        for a in &o.actions {
            out.push_str(&format!("    {a}\n"));
        }
    }
    let changes = p
        .objects
        .iter()
        .filter(|o| o.outcome != WriteOutcome::Unchanged)
        .count();
    out.push_str(&format!(
        "plan against revision {}: {changes} object(s) would change; nothing was applied\n",
        p.revision
    ));
    out
}

/// `watch`: one line per event.
pub fn watch_line(e: &Event) -> String {
    let o = &e.object;
    let mut line = format!(
        "{:<8} {:<8} {}/{} tenant={} gen={} phase={}",
        e.revision,
        event_type(e.type_),
        o.kind.path(),
        o.id,
        o.tenant,
        o.generation,
        o.status.phase
    );
    if let Some(c) = telling_condition(o) {
        line.push_str(&format!(
            " {}={} {}",
            c.type_,
            c.reason,
            shorten(&c.message, 100)
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use dpu_api::Kind;
    use dpu_api::object::{Condition, Phase, Status};
    use serde_json::json;

    fn obj(id: &str, tenant: &str, generation: u64, observed: u64) -> Object {
        Object {
            kind: Kind::Port,
            id: id.into(),
            tenant: tenant.into(),
            generation,
            spec: json!({"network": "n1"}),
            status: Status {
                observed_generation: observed,
                phase: Phase::Ready,
                ..Status::default()
            },
        }
    }

    fn cond(type_: &str, status: ConditionStatus, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status,
            reason: reason.into(),
            message: message.into(),
            last_transition: "2026-01-01T00:00:00Z".into(),
        }
    }

    #[test]
    fn table_aligns_columns_by_characters() {
        let t = table(
            &["ID", "TENANT", "NOTE"],
            &[
                vec!["a".into(), "acme".into(), "x".into()],
                vec!["long-name".into(), "\u{e9}t\u{e9}".into(), "".into()],
            ],
        );
        assert_eq!(
            t,
            "ID          TENANT   NOTE\n\
             a           acme     x\n\
             long-name   \u{e9}t\u{e9}\n"
        );
    }

    #[test]
    fn rows_show_lag_and_the_first_unhappy_condition() {
        let mut o = obj("web-1", "acme", 3, 2);
        o.status.phase = Phase::Degraded;
        o.status.conditions = vec![
            cond("Accepted", ConditionStatus::True, "Valid", ""),
            cond(
                "Programmed",
                ConditionStatus::False,
                "OvsDown",
                "ovsdb-server at unix:/run/db.sock refused the connection",
            ),
        ];
        assert_eq!(
            object_row(&o),
            [
                "web-1",
                "acme",
                "2/3",
                "Degraded",
                "Programmed: OvsDown",
                "ovsdb-server at unix:/run/db.sock refused the connection"
            ]
        );
        let mut pending = obj("web-3", "acme", 1, 1);
        pending.status.phase = Phase::Pending;
        pending.status.conditions = vec![cond(
            "BackendUnavailable",
            ConditionStatus::True,
            "NotConfigured",
            "no OVS",
        )];
        assert_eq!(
            object_row(&pending)[4..],
            ["BackendUnavailable: NotConfigured", "no OVS"]
        );
        let ready = obj("web-2", "acme", 1, 1);
        assert_eq!(object_row(&ready)[2..5], ["1", "Ready", "-"]);
        let t = objects_table(&[o, ready]);
        assert!(
            t.starts_with("ID      TENANT   GEN   PHASE      REASON"),
            "{t}"
        );
    }

    #[test]
    fn shorten_keeps_one_line() {
        assert_eq!(shorten("a\n  b", 10), "a b");
        assert_eq!(shorten("abcdefghijkl", 8), "abcde...");
    }

    #[test]
    fn describe_shows_everything_an_operator_needs() {
        let mut o = obj("web-1", "acme", 2, 1);
        o.status.fields.insert("ofport".into(), json!(7));
        o.status.conditions.push(cond(
            "Programmed",
            ConditionStatus::Unknown,
            "Waiting",
            "queued",
        ));
        let ev = Event {
            revision: 41,
            type_: EventType::Added,
            object: obj("web-1", "acme", 1, 0),
        };
        let text = describe(&o, Ok(&[ev]));
        for want in [
            "Kind:        Port",
            "Generation:  2 (controller has seen generation 1)",
            "Spec:\n  network: n1\n",
            "Status:\n  ofport: 7\n",
            "Programmed   Unknown   Waiting",
            "41         added",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        let gone = crate::EventsError::Api(dpu_api::client::ClientError::Problem(
            dpu_api::Problem::new(410, "compacted"),
        ));
        let text = describe(&o, Err(&gone));
        assert!(
            text.contains("(not available: 410 Gone: compacted)"),
            "{text}"
        );
        let text = describe(&o, Err(&crate::EventsError::Timeout));
        assert!(
            text.contains("(not available: the event log did not answer within 10 s)"),
            "{text}"
        );
    }

    #[test]
    fn plan_lists_actions_under_each_object() {
        let p: PlanResponse = serde_json::from_value(json!({"revision": 7, "objects": [
            {"kind": "Network", "id": "n1", "tenant": "acme", "outcome": "created",
             "actions": ["add-flow table=0,tun_id=5 actions=goto_table:10"]},
            {"kind": "Port", "id": "p1", "tenant": "acme", "outcome": "unchanged"}]}))
        .unwrap();
        assert_eq!(
            plan(&p),
            "networks/n1 (tenant acme): created\n    add-flow table=0,tun_id=5 actions=goto_table:10\n\
             ports/p1 (tenant acme): unchanged\n\
             plan against revision 7: 1 object(s) would change; nothing was applied\n"
        );
    }

    #[test]
    fn watch_lines() {
        let mut o = obj("web-1", "acme", 2, 2);
        o.status.conditions.push(cond(
            "Programmed",
            ConditionStatus::False,
            "NoPort",
            "no ofport",
        ));
        let e = Event {
            revision: 12,
            type_: EventType::Status,
            object: o,
        };
        assert_eq!(
            watch_line(&e),
            "12       status   ports/web-1 tenant=acme gen=2 phase=Ready Programmed=NoPort no ofport"
        );
    }
}
