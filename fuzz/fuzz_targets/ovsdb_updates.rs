//! Arbitrary JSON from ovsdb-server must never panic the OVSDB decoders: a
//! `get_schema` reply, `update2`/`update3` notifications and
//! `monitor_cond_since` replies applied to the replica (twice, so modify
//! diffs meet existing rows) and read back as typed Open_vSwitch rows, a
//! `transact` reply, and bare datums and atoms. The schema is Open vSwitch
//! 3.1's `vswitch.ovsschema` (Apache-2.0), as the agent monitors it.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use net_offload::ovsdb::monitor::{TableUpdates, decode_since_reply};
use net_offload::ovsdb::{
    Atom, Condition, DatabaseSchema, Datum, MonitorSpec, Mutation, Replica, Row, Transaction,
    vswitch_monitor,
};
use serde_json::Value;

static SCHEMA: LazyLock<DatabaseSchema> = LazyLock::new(|| {
    let text = include_str!("data/vswitch.ovsschema");
    DatabaseSchema::from_json(&serde_json::from_str(text).expect("schema is JSON"))
        .expect("vswitch.ovsschema decodes")
});
static SPEC: LazyLock<MonitorSpec> = LazyLock::new(vswitch_monitor);

fn read_rows(replica: &Replica) {
    let _ = replica.open_vswitch();
    let _ = replica.bridges();
    let _ = replica.ports();
    let _ = replica.interfaces();
    let _ = replica.bridge_by_name("br-int");
}

fn apply_twice(updates: TableUpdates) {
    let mut replica = Replica::default();
    replica.apply(updates.clone(), &SPEC, &SCHEMA);
    read_rows(&replica);
    replica.apply(updates, &SPEC, &SCHEMA);
    read_rows(&replica);
}

fn transact_reply(result: &Value) {
    let mut txn = Transaction::new("Open_vSwitch");
    let row: Row = [("name".to_string(), Datum::from("br0"))].into();
    let inserted = txn.insert("Bridge", row.clone());
    let select = txn.select("Interface", vec![], Some(&["_uuid", "name", "ofport"]));
    let update = txn.update("Bridge", vec![Condition::eq("name", "br0")], row);
    let mutate = txn.mutate(
        "Bridge",
        vec![],
        vec![Mutation::insert(
            "ports",
            Datum::set([inserted.reference()]),
        )],
    );
    txn.delete("Port", vec![]);
    txn.commit(false);
    for schema in [None, Some(&*SCHEMA)] {
        if let Ok(reply) = txn.decode_reply(result, schema) {
            let _ = reply.uuid(&inserted);
            let _ = reply.rows(select);
            let _ = reply.count(update);
            let _ = reply.count(mutate);
        }
    }
}

fn datum(value: &Value) {
    let _ = Atom::from_json(value);
    if let Ok(d) = Datum::from_json(value) {
        let _ = d.to_json();
        let _ = d.as_string_map();
        let _ = d.as_uuid_set();
        let _ = d.as_optional_integer();
    }
    for (table, column) in [
        ("Interface", "options"),
        ("Interface", "ofport"),
        ("Bridge", "ports"),
        ("Port", "tag"),
    ] {
        if let Some(ty) = SCHEMA.column(table, column) {
            let _ = Datum::from_json_typed(value, &ty);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else {
        return;
    };
    let _ = DatabaseSchema::from_json(&value);
    // What the client takes out of a JSON-RPC message: the last parameter
    // of a notification, the result of a reply; or the value itself.
    let mut candidates = vec![&value];
    if let Some(Value::Array(params)) = value.get("params") {
        candidates.extend(params.last());
    }
    candidates.extend(value.get("result"));
    for v in candidates {
        if let Ok(updates) = TableUpdates::decode(v, &SCHEMA) {
            apply_twice(updates);
        }
        if let Ok((_, _, updates)) = decode_since_reply(v, &SCHEMA) {
            apply_twice(updates);
        }
        transact_reply(v);
        datum(v);
    }
});
