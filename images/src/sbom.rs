//! The agent's Rust dependencies: the crates reachable from the `dpu-agent`
//! package in `cargo metadata --filter-platform <target>` (normal edges:
//! compiled into the binary, `runtime`; build edges: build scripts and proc
//! macros, `build`), with the checksum `Cargo.lock` pins and the license the
//! crate declares. Dev-dependencies are not part of the image.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::manifest::RustPackage;

#[derive(Debug, thiserror::Error)]
pub enum SbomError {
    #[error("cargo metadata output is not what was expected")]
    Metadata(#[source] serde_json::Error),
    #[error("Cargo.lock is not valid")]
    Lock(#[source] toml::de::Error),
    #[error("package {0} is not in the cargo metadata output")]
    NoRoot(String),
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<MetaPackage>,
    resolve: Resolve,
}

#[derive(Deserialize)]
struct MetaPackage {
    id: String,
    name: String,
    version: String,
    source: Option<String>,
    license: Option<String>,
}

#[derive(Deserialize)]
struct Resolve {
    nodes: Vec<Node>,
}

#[derive(Deserialize)]
struct Node {
    id: String,
    deps: Vec<NodeDep>,
}

#[derive(Deserialize)]
struct NodeDep {
    pkg: String,
    dep_kinds: Vec<DepKind>,
}

#[derive(Deserialize)]
struct DepKind {
    kind: Option<String>,
}

#[derive(Deserialize)]
struct Lock {
    package: Vec<LockPackage>,
}

#[derive(Deserialize)]
struct LockPackage {
    name: String,
    version: String,
    checksum: Option<String>,
}

/// The dependency list of `root` from `cargo metadata` JSON and `Cargo.lock`.
pub fn rust_packages(
    metadata_json: &str,
    cargo_lock: &str,
    root: &str,
) -> Result<Vec<RustPackage>, SbomError> {
    let meta: Metadata = serde_json::from_str(metadata_json).map_err(SbomError::Metadata)?;
    let lock: Lock = toml::from_str(cargo_lock).map_err(SbomError::Lock)?;
    let checksums: BTreeMap<(String, String), String> = lock
        .package
        .into_iter()
        .filter_map(|p| Some(((p.name, p.version), p.checksum?)))
        .collect();
    let packages: BTreeMap<&str, &MetaPackage> =
        meta.packages.iter().map(|p| (p.id.as_str(), p)).collect();
    let nodes: BTreeMap<&str, &Node> = meta
        .resolve
        .nodes
        .iter()
        .map(|n| (n.id.as_str(), n))
        .collect();
    let root_id = meta
        .packages
        .iter()
        .find(|p| p.name == root && p.source.is_none())
        .map(|p| p.id.as_str())
        .ok_or_else(|| SbomError::NoRoot(root.to_string()))?;

    // What `starts` link: their closure over normal edges.
    let walk = |starts: Vec<&str>| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = starts;
        while let Some(id) = stack.pop() {
            if !seen.insert(id.to_string()) {
                continue;
            }
            let Some(node) = nodes.get(id) else { continue };
            for dep in &node.deps {
                if dep.dep_kinds.iter().any(|k| k.kind.is_none()) {
                    stack.push(dep.pkg.as_str());
                }
            }
        }
        seen
    };
    let runtime = walk(vec![root_id]);
    // Build dependencies of anything linked in, and what they link.
    let build_roots: Vec<&str> = runtime
        .iter()
        .filter_map(|id| nodes.get(id.as_str()))
        .flat_map(|n| n.deps.iter())
        .filter(|d| {
            d.dep_kinds
                .iter()
                .any(|k| k.kind.as_deref() == Some("build"))
        })
        .map(|d| d.pkg.as_str())
        .collect();
    let build: BTreeSet<String> = walk(build_roots)
        .into_iter()
        .filter(|id| !runtime.contains(id))
        .collect();

    let mut out = Vec::new();
    for (ids, kind) in [(&runtime, "runtime"), (&build, "build")] {
        for id in ids {
            let Some(p) = packages.get(id.as_str()) else {
                continue;
            };
            out.push(RustPackage {
                name: p.name.clone(),
                version: p.version.clone(),
                source: p.source.clone().unwrap_or_else(|| "path".into()),
                checksum: checksums
                    .get(&(p.name.clone(), p.version.clone()))
                    .cloned()
                    .unwrap_or_default(),
                license: p.license.clone().unwrap_or_default(),
                kind: kind.into(),
            });
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const META: &str = r#"{
      "packages": [
        {"id": "path+file:///w/a#0.1.0", "name": "a", "version": "0.1.0", "source": null, "license": "Apache-2.0"},
        {"id": "registry+r#b@1.0.0", "name": "b", "version": "1.0.0", "source": "registry+r", "license": "MIT"},
        {"id": "registry+r#cc@1.2.0", "name": "cc", "version": "1.2.0", "source": "registry+r", "license": "MIT"},
        {"id": "registry+r#shlex@1.0.0", "name": "shlex", "version": "1.0.0", "source": "registry+r", "license": "MIT"},
        {"id": "registry+r#proptest@1.0.0", "name": "proptest", "version": "1.0.0", "source": "registry+r", "license": "MIT"}
      ],
      "resolve": {"nodes": [
        {"id": "path+file:///w/a#0.1.0", "deps": [
          {"pkg": "registry+r#b@1.0.0", "dep_kinds": [{"kind": null}]},
          {"pkg": "registry+r#proptest@1.0.0", "dep_kinds": [{"kind": "dev"}]}
        ]},
        {"id": "registry+r#b@1.0.0", "deps": [
          {"pkg": "registry+r#cc@1.2.0", "dep_kinds": [{"kind": "build"}]}
        ]},
        {"id": "registry+r#cc@1.2.0", "deps": [
          {"pkg": "registry+r#shlex@1.0.0", "dep_kinds": [{"kind": null}]}
        ]},
        {"id": "registry+r#shlex@1.0.0", "deps": []},
        {"id": "registry+r#proptest@1.0.0", "deps": []}
      ]}
    }"#;

    const LOCK: &str = r#"
version = 4
[[package]]
name = "a"
version = "0.1.0"
[[package]]
name = "b"
version = "1.0.0"
source = "registry+r"
checksum = "bb"
[[package]]
name = "cc"
version = "1.2.0"
source = "registry+r"
checksum = "cc"
"#;

    #[test]
    fn runtime_build_and_no_dev_dependencies() {
        let list = rust_packages(META, LOCK, "a").unwrap();
        let summary: Vec<(&str, &str, &str)> = list
            .iter()
            .map(|p| (p.name.as_str(), p.kind.as_str(), p.checksum.as_str()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("a", "runtime", ""),
                ("b", "runtime", "bb"),
                ("cc", "build", "cc"),
                ("shlex", "build", ""),
            ]
        );
        assert_eq!(list[0].source, "path");
        assert!(matches!(
            rust_packages(META, LOCK, "zzz"),
            Err(SbomError::NoRoot(_))
        ));
    }
}
