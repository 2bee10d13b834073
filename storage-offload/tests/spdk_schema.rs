//! Conformance of the SPDK client against SPDK's own reference data in
//! `shared/ref/spdk/` (found by walking up from this crate): every request the
//! client and the planner build is checked against `schema.yaml`; the
//! documented example responses in `jsonrpc.md` decode into the typed
//! results; and documented exchanges are replayed over a unix socket.
//! When the folder is absent (decided by the crate's `build.rs`) these tests
//! are `#[ignore]`d: reported as ignored, never as passed. A checkout that
//! gains the folder later needs `touch storage-offload/build.rs`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use serde_yaml::Value as Yaml;
use storage_offload::model::*;
use storage_offload::plan::{self, Op, SpdkPlanConfig};
use storage_offload::spdk::methods::*;
use storage_offload::spdk::{RpcMethod, RpcRequest, SpdkClient};

fn ref_dir() -> Option<PathBuf> {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors()
        .map(|a| a.join("shared/ref/spdk"))
        .find(|p| p.join("schema.yaml").is_file())
}

macro_rules! reference_dir {
    () => {
        ref_dir().expect("shared/ref/spdk (build.rs found it; was it removed since?)")
    };
}

// ------------------------------------------------------------ schema

#[derive(Debug, Clone)]
struct Param {
    ty: String,
    class: Option<String>,
    required: bool,
}

struct Schema {
    methods: BTreeMap<String, BTreeMap<String, Param>>,
    objects: BTreeMap<String, BTreeMap<String, Param>>,
}

fn params_of(list: Option<&Yaml>) -> BTreeMap<String, Param> {
    let mut out = BTreeMap::new();
    for p in list.and_then(|l| l.as_sequence()).into_iter().flatten() {
        let s = |k: &str| p.get(k).and_then(|v| v.as_str()).map(str::to_string);
        out.insert(
            s("name").unwrap(),
            Param {
                ty: s("type").unwrap_or_default(),
                class: s("class"),
                required: p.get("required").and_then(|v| v.as_bool()).unwrap_or(false),
            },
        );
    }
    out
}

fn load_schema(dir: &std::path::Path) -> Schema {
    let y: Yaml =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("schema.yaml")).unwrap()).unwrap();
    let mut s = Schema {
        methods: BTreeMap::new(),
        objects: BTreeMap::new(),
    };
    for m in y["methods"].as_sequence().unwrap() {
        s.methods.insert(
            m["name"].as_str().unwrap().to_string(),
            params_of(m.get("params")),
        );
    }
    for o in y["objects"].as_sequence().unwrap() {
        s.objects.insert(
            o["name"].as_str().unwrap().to_string(),
            params_of(o.get("fields")),
        );
    }
    s
}

fn check_fields(
    schema: &Schema,
    what: &str,
    spec: &BTreeMap<String, Param>,
    got: &Value,
    errors: &mut Vec<String>,
) {
    let Some(obj) = got.as_object() else {
        errors.push(format!("{what}: params are not an object"));
        return;
    };
    for (name, p) in spec {
        if p.required && !obj.contains_key(name) {
            errors.push(format!("{what}: required param {name} missing"));
        }
    }
    for (name, v) in obj {
        let Some(p) = spec.get(name) else {
            errors.push(format!("{what}: param {name} is not in the schema"));
            continue;
        };
        let ok = match p.ty.as_str() {
            "string" | "uuid" | "enum" => v.is_string(),
            "boolean" => v.is_boolean(),
            "uint8" | "uint16" | "uint32" | "uint64" => v.is_u64(),
            "int32" | "int64" => v.is_i64(),
            "object" => {
                let class = p.class.as_deref().unwrap_or_default();
                match schema.objects.get(class) {
                    Some(fields) => {
                        check_fields(schema, &format!("{what}.{name}"), fields, v, errors);
                        true
                    }
                    None => v.is_object(),
                }
            }
            "array" => v.is_array(),
            other => {
                errors.push(format!("{what}.{name}: unknown schema type {other}"));
                true
            }
        };
        if !ok {
            errors.push(format!("{what}.{name}: {v} is not a {}", p.ty));
        }
    }
}

fn check_request(schema: &Schema, req: &RpcRequest, errors: &mut Vec<String>) {
    let Some(spec) = schema.methods.get(&req.method) else {
        errors.push(format!("{}: no such method in the schema", req.method));
        return;
    };
    let params = req.params.clone().unwrap_or_else(|| json!({}));
    check_fields(schema, &req.method, spec, &params, errors);
}

/// Every standard request type, each field populated.
fn all_requests() -> Vec<RpcRequest> {
    let s = || "x".to_string();
    vec![
        RpcRequest::new(&RpcGetMethods {
            current: true,
            include_aliases: true,
        }),
        RpcRequest::new(&SpdkGetVersion {}),
        RpcRequest::new(&BdevGetBdevs {
            name: Some(s()),
            timeout: Some(10),
        }),
        RpcRequest::new(&BdevGetIostat {
            names: Some(vec![s()]),
            per_channel: Some(false),
        }),
        RpcRequest::new(&BdevGetIostat::default()),
        RpcRequest::new(&BdevSetQosLimit {
            name: s(),
            rw_ios_per_sec: Some(1),
            rw_mbytes_per_sec: Some(2),
            r_mbytes_per_sec: Some(3),
            w_mbytes_per_sec: Some(4),
        }),
        RpcRequest::new(&BdevMallocCreate {
            name: Some(s()),
            block_size: 512,
            num_blocks: 8,
            uuid: Some("2b6601ba-eada-44fb-9a83-a20eb9eb9e90".into()),
            optimal_io_boundary: Some(16),
        }),
        RpcRequest::new(&BdevMallocDelete { name: s() }),
        RpcRequest::new(&BdevNvmeAttachController {
            name: s(),
            trtype: "tcp".into(),
            traddr: "192.0.2.1".into(),
            adrfam: Some("ipv4".into()),
            trsvcid: Some("4420".into()),
            subnqn: Some(s()),
            hostnqn: Some(s()),
            hostaddr: Some(s()),
            hdgst: Some(true),
            ddgst: Some(true),
            ctrlr_loss_timeout_sec: Some(-1),
            reconnect_delay_sec: Some(1),
            fast_io_fail_timeout_sec: Some(0),
        }),
        RpcRequest::new(&BdevNvmeDetachController { name: s() }),
        RpcRequest::new(&BdevNvmeGetControllers { name: Some(s()) }),
        RpcRequest::new(&NvmfCreateTransport {
            trtype: "TCP".into(),
            max_queue_depth: Some(128),
            max_io_qpairs_per_ctrlr: Some(4),
            in_capsule_data_size: Some(4096),
        }),
        RpcRequest::new(&NvmfGetTransports {
            trtype: Some("TCP".into()),
        }),
        RpcRequest::new(&NvmfCreateSubsystem {
            nqn: s(),
            serial_number: Some(s()),
            model_number: Some(s()),
            max_namespaces: Some(1),
            allow_any_host: Some(false),
        }),
        RpcRequest::new(&NvmfSubsystemAddNs {
            nqn: s(),
            namespace: NvmfNamespace {
                bdev_name: s(),
                nsid: Some(1),
                uuid: Some("2b6601ba-eada-44fb-9a83-a20eb9eb9e90".into()),
            },
        }),
        RpcRequest::new(&NvmfSubsystemRemoveNs { nqn: s(), nsid: 1 }),
        RpcRequest::new(&NvmfSubsystemAddListener {
            nqn: s(),
            listen_address: ListenAddress {
                trtype: "TCP".into(),
                adrfam: Some("IPv4".into()),
                traddr: "127.0.0.1".into(),
                trsvcid: Some("4420".into()),
            },
        }),
        RpcRequest::new(&NvmfSubsystemAddHost {
            nqn: s(),
            host: s(),
        }),
        RpcRequest::new(&NvmfDeleteSubsystem { nqn: s() }),
        RpcRequest::new(&NvmfGetSubsystems { nqn: Some(s()) }),
        RpcRequest::new(&VhostCreateBlkController {
            ctrlr: s(),
            dev_name: s(),
            readonly: Some(true),
            cpumask: Some("0x1".into()),
        }),
        RpcRequest::new(&VhostDeleteController { ctrlr: s() }),
        RpcRequest::new(&VhostGetControllers { name: Some(s()) }),
    ]
}

/// Requests the planner builds for plain SPDK, setup and teardown, with QoS.
fn planned_requests() -> Vec<RpcRequest> {
    use dpu_api::spec::*;
    let vol = |id: &str, source: VolumeSource, type_| DesiredVolume {
        key: VolumeKey::new("t", id),
        spec: VolumeSpec {
            function: "f".into(),
            nsid: Some(2),
            source,
            qos: Some(VolumeQos {
                max_iops: Some(10),
                max_mbps: Some(20),
            }),
            read_only: Some(true),
        },
        function: FunctionTarget {
            id: "f".into(),
            type_,
            pf: 0,
            vf: Some(1),
            host_nqn: function_host_nqn("t", "f"),
        },
    };
    let remote = VolumeSource::Nvmeof(NvmeofSource {
        transport: NvmeofTransport::Tcp,
        address: "192.0.2.1".into(),
        port: 4420,
        subnqn: "nqn.2014-08.org.example:r".parse().unwrap(),
        hostnqn: None,
    });
    let desired = vec![
        vol("a", remote, FunctionType::Nvme),
        vol(
            "b",
            VolumeSource::Local(LocalSource { size_mib: 1 }),
            FunctionType::VirtioBlk,
        ),
    ];
    let cfg = SpdkPlanConfig::default();
    let mut actions = plan::plan_spdk(&desired, &SpdkObserved::default(), &cfg);
    // Teardown of the same objects.
    let mut obs = SpdkObserved {
        nvme_controllers: vec!["dpu_t_a_src".into()],
        controllers: vec!["dpu_t_b_vhost".into()],
        ..Default::default()
    };
    obs.bdevs.insert("dpu_t_b_src".into(), QosLimits::default());
    obs.subsystems.insert(
        "nqn.2026-11.dev.dpu-agent:t:a".into(),
        ObservedSubsystem::default(),
    );
    actions.extend(plan::plan_spdk(&[], &obs, &cfg));
    actions
        .into_iter()
        .filter_map(|a| match a.op {
            Op::Rpc(r) => Some(r),
            _ => None,
        })
        .collect()
}

#[cfg_attr(
    not(spdk_reference),
    ignore = "SPDK reference data shared/ref/spdk is not above this checkout"
)]
#[test]
fn every_request_matches_the_schema() {
    let dir = reference_dir!();
    let schema = load_schema(&dir);
    let mut errors = Vec::new();
    let reqs: Vec<RpcRequest> = all_requests()
        .into_iter()
        .chain(planned_requests())
        .collect();
    assert!(reqs.len() > 25);
    for r in &reqs {
        check_request(&schema, r, &mut errors);
    }
    assert!(
        errors.is_empty(),
        "schema mismatches:\n{}",
        errors.join("\n")
    );
}

/// Every method the crate sends has its own label in
/// `dpu_agent_backend_operation_duration_seconds`; anything else is
/// `other` (a closed set).
#[test]
fn every_sent_method_has_a_duration_label() {
    use storage_offload::spdk::client::method_label;
    for r in all_requests().into_iter().chain(planned_requests()) {
        assert_eq!(method_label(&r.method), r.method, "add it to KNOWN_METHODS");
    }
    assert_eq!(method_label("made_up_by_someone"), "other");
}

#[cfg_attr(
    not(spdk_reference),
    ignore = "SPDK reference data shared/ref/spdk is not above this checkout"
)]
#[test]
fn snap_methods_are_not_spdk_methods() {
    // The SNAP extensions must not shadow SPDK methods of other meaning.
    let dir = reference_dir!();
    let schema = load_schema(&dir);
    for m in [
        "emulation_function_list",
        "nvme_subsystem_create",
        "nvme_namespace_create",
        "nvme_controller_create",
        "nvme_controller_attach_ns",
        "virtio_blk_controller_create",
    ] {
        assert!(!schema.methods.contains_key(m), "{m} is in SPDK's schema");
    }
}

// ------------------------------------------------------------ jsonrpc.md

/// The documented request and response of `method`, as raw text.
fn doc_example(doc: &str, method: &str) -> Option<(String, String)> {
    let start = doc.find(&format!("### {method} {{#rpc_{method}}}"))?;
    let rest = &doc[start..];
    let end = rest[4..].find("\n### ").map_or(rest.len(), |e| e + 4);
    let section = &rest[..end];
    let block = |label: &str| -> Option<String> {
        let at = section.find(label)?;
        let open = section[at..].find("~~~json\n")? + at + "~~~json\n".len();
        let close = section[open..].find("~~~")? + open;
        Some(section[open..close].to_string())
    };
    Some((block("Example request:")?, block("Example response:")?))
}

fn doc() -> Option<String> {
    ref_dir().map(|d| std::fs::read_to_string(d.join("jsonrpc.md")).unwrap())
}

fn decode_result<M: RpcMethod>(doc: &str, checked: &mut Vec<&'static str>) {
    let (_, resp) = doc_example(doc, M::METHOD)
        .unwrap_or_else(|| panic!("{} has no documented example", M::METHOD));
    let v: Value = serde_json::from_str(&resp).unwrap();
    let r = v.get("result").cloned().unwrap();
    if let Err(e) = serde_json::from_value::<M::Output>(r) {
        panic!("{}: documented result does not decode: {e}", M::METHOD);
    }
    checked.push(M::METHOD);
}

#[cfg_attr(
    not(spdk_reference),
    ignore = "SPDK reference data shared/ref/spdk is not above this checkout"
)]
#[test]
fn documented_results_decode() {
    let doc = doc().expect("shared/ref/spdk/jsonrpc.md (build.rs found the folder)");
    let mut c = Vec::new();
    decode_result::<SpdkGetVersion>(&doc, &mut c);
    decode_result::<BdevGetBdevs>(&doc, &mut c);
    decode_result::<BdevGetIostat>(&doc, &mut c);
    decode_result::<BdevSetQosLimit>(&doc, &mut c);
    decode_result::<BdevMallocCreate>(&doc, &mut c);
    decode_result::<BdevMallocDelete>(&doc, &mut c);
    decode_result::<BdevNvmeAttachController>(&doc, &mut c);
    decode_result::<BdevNvmeDetachController>(&doc, &mut c);
    decode_result::<BdevNvmeGetControllers>(&doc, &mut c);
    decode_result::<NvmfCreateTransport>(&doc, &mut c);
    decode_result::<NvmfCreateSubsystem>(&doc, &mut c);
    decode_result::<NvmfSubsystemAddNs>(&doc, &mut c);
    decode_result::<NvmfSubsystemRemoveNs>(&doc, &mut c);
    decode_result::<NvmfSubsystemAddListener>(&doc, &mut c);
    decode_result::<NvmfSubsystemAddHost>(&doc, &mut c);
    decode_result::<NvmfDeleteSubsystem>(&doc, &mut c);
    decode_result::<NvmfGetSubsystems>(&doc, &mut c);
    decode_result::<VhostCreateBlkController>(&doc, &mut c);
    decode_result::<VhostDeleteController>(&doc, &mut c);
    decode_result::<VhostGetControllers>(&doc, &mut c);
    // rpc_get_methods' documented response is a template, not JSON.
    println!("decoded documented results of {} methods: {c:?}", c.len());
}

#[cfg_attr(
    not(spdk_reference),
    ignore = "SPDK reference data shared/ref/spdk is not above this checkout"
)]
#[test]
fn documented_typed_values() {
    let doc = doc().expect("shared/ref/spdk/jsonrpc.md (build.rs found the folder)");
    let (_, resp) = doc_example(&doc, "nvmf_get_subsystems").unwrap();
    let v: Value = serde_json::from_str(&resp).unwrap();
    let subs: Vec<NvmfSubsystem> = serde_json::from_value(v["result"].clone()).unwrap();
    assert_eq!(subs[1].hosts[0].nqn, "nqn.2016-06.io.spdk:host1");
    assert_eq!(subs[1].namespaces[1].bdev(), "Nvme0n1");
    assert_eq!(subs[1].listen_addresses[0].trsvcid.as_deref(), Some("4420"));
    let (_, resp) = doc_example(&doc, "spdk_get_version").unwrap();
    let v: Value = serde_json::from_str(&resp).unwrap();
    let ver: SpdkVersion = serde_json::from_value(v["result"].clone()).unwrap();
    assert_eq!(ver.fields.unwrap().minor, 4);
    // The documented iostat reply, its first bdev renamed to a volume's
    // source bdev: the volume's I/O is that bdev's counters.
    let (_, resp) = doc_example(&doc, "bdev_get_iostat").unwrap();
    let resp = resp.replacen("\"Nvme0n1\"", "\"dpu_acme_db_srcn1\"", 1);
    let v: Value = serde_json::from_str(&resp).unwrap();
    let io: BdevIostats = serde_json::from_value(v["result"].clone()).unwrap();
    assert_eq!(io.tick_rate, 2_200_000_000);
    let vols = storage_offload::apply::spdk_volume_io(&io);
    let db = vols[&storage_offload::model::VolumeKey::new("acme", "db")];
    assert_eq!((db.read_ops, db.read_bytes), (2, 36864));
    assert_eq!((db.write_ops, db.write_bytes), (0, 0));
    assert_eq!(vols.len(), 1);
}

// ------------------------------------------------------------ replay

/// A replay of SPDK's documentation, not a real SPDK: a unix-socket server
/// that expects the documented request (compared as JSON, since key order
/// and spacing are the client's) and answers with the documented response
/// byte for byte, split across two writes to exercise framing.
async fn replay_server(
    path: PathBuf,
    expected_request: Value,
    response: String,
) -> tokio::task::JoinHandle<Result<(), String>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let got: Value = loop {
            let mut chunk = [0u8; 4096];
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("client closed before a full request".into());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Ok(v) = serde_json::from_slice(&buf) {
                break v;
            }
        };
        if got != expected_request {
            return Err(format!("request {got} != documented {expected_request}"));
        }
        let bytes = response.as_bytes();
        let mid = bytes.len() / 2;
        s.write_all(&bytes[..mid])
            .await
            .map_err(|e| e.to_string())?;
        s.flush().await.map_err(|e| e.to_string())?;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        s.write_all(&bytes[mid..])
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    })
}

/// Replays one documented exchange; `false` when the documented request
/// uses params outside the client's typed subset.
async fn replay<M>(doc: &str) -> bool
where
    M: RpcMethod + DeserializeOwned,
    M::Output: PartialEq + std::fmt::Debug,
{
    let (req, resp) = doc_example(doc, M::METHOD).unwrap();
    let req_v: Value = serde_json::from_str(&req).unwrap();
    let params = req_v.get("params").cloned().unwrap_or_else(|| json!({}));
    let Ok(typed) = serde_json::from_value::<M>(params) else {
        println!(
            "{}: documented params are outside the typed subset; not replayed",
            M::METHOD
        );
        return false;
    };
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("spdk.sock");
    let server = replay_server(sock.clone(), req_v, resp.clone()).await;
    // A fresh client numbers its first request 1, as the documentation does.
    let client = SpdkClient::connect(&sock).await.unwrap();
    let got = client.call(&typed).await.unwrap();
    server.await.unwrap().unwrap();
    let want: M::Output =
        serde_json::from_value(serde_json::from_str::<Value>(&resp).unwrap()["result"].clone())
            .unwrap();
    assert_eq!(got, want, "{}", M::METHOD);
    true
}

#[cfg_attr(
    not(spdk_reference),
    ignore = "SPDK reference data shared/ref/spdk is not above this checkout"
)]
#[tokio::test]
async fn documented_exchanges_replay() {
    let doc = doc().expect("shared/ref/spdk/jsonrpc.md (build.rs found the folder)");
    let mut replayed = 0;
    replayed += replay::<SpdkGetVersion>(&doc).await as usize;
    replayed += replay::<BdevGetBdevs>(&doc).await as usize;
    replayed += replay::<BdevGetIostat>(&doc).await as usize;
    replayed += replay::<BdevSetQosLimit>(&doc).await as usize;
    replayed += replay::<BdevMallocCreate>(&doc).await as usize;
    replayed += replay::<BdevMallocDelete>(&doc).await as usize;
    replayed += replay::<BdevNvmeAttachController>(&doc).await as usize;
    replayed += replay::<BdevNvmeDetachController>(&doc).await as usize;
    replayed += replay::<NvmfCreateSubsystem>(&doc).await as usize;
    replayed += replay::<NvmfDeleteSubsystem>(&doc).await as usize;
    replayed += replay::<NvmfSubsystemAddListener>(&doc).await as usize;
    replayed += replay::<NvmfSubsystemAddNs>(&doc).await as usize;
    replayed += replay::<NvmfSubsystemAddHost>(&doc).await as usize;
    replayed += replay::<NvmfGetSubsystems>(&doc).await as usize;
    replayed += replay::<VhostCreateBlkController>(&doc).await as usize;
    replayed += replay::<VhostDeleteController>(&doc).await as usize;
    println!("replayed {replayed} documented exchanges");
    assert!(replayed >= 12, "only {replayed} exchanges replayed");
}

#[cfg_attr(
    not(spdk_reference),
    ignore = "SPDK reference data shared/ref/spdk is not above this checkout"
)]
#[test]
fn the_checker_catches_mismatches() {
    let dir = reference_dir!();
    let schema = load_schema(&dir);
    let bad = RpcRequest {
        method: "bdev_malloc_create".into(),
        params: Some(json!({"block_size": "512", "bogus": 1})),
    };
    let mut errors = Vec::new();
    check_request(&schema, &bad, &mut errors);
    let text = errors.join("\n");
    assert!(text.contains("required param num_blocks missing"), "{text}");
    assert!(text.contains("param bogus is not in the schema"), "{text}");
    assert!(
        text.contains("block_size: \"512\" is not a uint32"),
        "{text}"
    );
}
