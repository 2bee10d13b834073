//! The agent's Rust dependencies: the crates reachable from the `dpu-agent`
//! package in `cargo metadata --filter-platform <target>` (normal edges:
//! compiled into the binary, `runtime`; build edges: build scripts and proc
//! macros, `build`), with the checksum `Cargo.lock` pins and the license the
//! crate declares. Dev-dependencies are not part of the image, nor are the
//! root's optional dependencies that the features it is built with do not
//! enable (the image builds `dpu-agent` with `--no-default-features`, so its
//! `dev` feature's `dpu-pki` is not listed). Below the root the resolve is
//! the workspace's, unified over every member's features: it may list a crate
//! that a feature of some member, not the image's build, pulls in (more, never
//! less, than is linked).

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
    #[serde(default)]
    dependencies: Vec<MetaDependency>,
    #[serde(default)]
    features: BTreeMap<String, Vec<String>>,
}

/// A dependency as the package's manifest declares it.
#[derive(Deserialize)]
struct MetaDependency {
    /// The package's name.
    name: String,
    /// What the manifest calls it, when not `name`.
    rename: Option<String>,
    #[serde(default)]
    optional: bool,
    /// `None` for a normal dependency, else `dev` or `build`.
    kind: Option<String>,
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

/// The packages of `root`'s optional normal dependencies that its
/// `features` (with their own features, transitively) do not enable.
fn disabled_optional(root: &MetaPackage, features: &[&str]) -> BTreeSet<String> {
    let optional: BTreeMap<&str, &str> = root
        .dependencies
        .iter()
        .filter(|d| d.optional && d.kind.is_none())
        .map(|d| (d.rename.as_deref().unwrap_or(&d.name), d.name.as_str()))
        .collect();
    let mut enabled = BTreeSet::new();
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = features.to_vec();
    while let Some(f) = stack.pop() {
        if !seen.insert(f) {
            continue;
        }
        if let Some(implied) = root.features.get(f) {
            stack.extend(implied.iter().map(String::as_str));
        } else if let Some(dep) = f.strip_prefix("dep:") {
            enabled.insert(dep);
        } else if let Some((dep, _)) = f.split_once('/') {
            // `dep/feature` enables the dependency; `dep?/feature` does not.
            if !dep.ends_with('?') {
                enabled.insert(dep);
            }
        } else if optional.contains_key(f) {
            // An optional dependency without `dep:` anywhere is its own
            // implicit feature.
            enabled.insert(f);
        }
    }
    // A package that is also a non-optional normal dependency is linked.
    let required: BTreeSet<&str> = root
        .dependencies
        .iter()
        .filter(|d| !d.optional && d.kind.is_none())
        .map(|d| d.name.as_str())
        .collect();
    optional
        .iter()
        .filter(|(key, name)| !enabled.contains(*key) && !required.contains(*name))
        .map(|(_, name)| name.to_string())
        .collect()
}

/// The dependency list of `root`, built with exactly `features` (no default
/// features unless named), from `cargo metadata` JSON and `Cargo.lock`.
pub fn rust_packages(
    metadata_json: &str,
    cargo_lock: &str,
    root: &str,
    features: &[&str],
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
    let root_package = meta
        .packages
        .iter()
        .find(|p| p.name == root && p.source.is_none())
        .ok_or_else(|| SbomError::NoRoot(root.to_string()))?;
    let root_id = root_package.id.as_str();
    let disabled = disabled_optional(root_package, features);

    // What `starts` link: their closure over normal edges (from the root,
    // not to its optional dependencies that `features` leave out).
    let walk = |starts: Vec<&str>| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut stack = starts;
        while let Some(id) = stack.pop() {
            if !seen.insert(id.to_string()) {
                continue;
            }
            let Some(node) = nodes.get(id) else { continue };
            for dep in &node.deps {
                let left_out = id == root_id
                    && packages
                        .get(dep.pkg.as_str())
                        .is_some_and(|p| disabled.contains(&p.name));
                if !left_out && dep.dep_kinds.iter().any(|k| k.kind.is_none()) {
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
        let list = rust_packages(META, LOCK, "a", &[]).unwrap();
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
            rust_packages(META, LOCK, "zzz", &[]),
            Err(SbomError::NoRoot(_))
        ));
    }

    /// The root's optional dependencies are listed only when the features
    /// it is built with enable them (the image's agent has no `dev`, so no
    /// dev PKI crate); what they alone link is left out with them.
    const META_FEATURES: &str = r#"{
      "packages": [
        {"id": "path+file:///w/agent#0.1.0", "name": "agent", "version": "0.1.0", "source": null, "license": "Apache-2.0",
         "dependencies": [
           {"name": "b", "rename": null, "optional": false, "kind": null},
           {"name": "pki", "rename": null, "optional": true, "kind": null},
           {"name": "pki", "rename": null, "optional": false, "kind": "dev"},
           {"name": "extra", "rename": "more", "optional": true, "kind": null}
         ],
         "features": {"default": ["dev"], "dev": ["dep:pki", "b/sandbox"], "all": ["dev", "more/x"]}},
        {"id": "registry+r#b@1.0.0", "name": "b", "version": "1.0.0", "source": "registry+r", "license": "MIT"},
        {"id": "path+file:///w/pki#0.1.0", "name": "pki", "version": "0.1.0", "source": null, "license": "Apache-2.0"},
        {"id": "registry+r#rcgen@1.0.0", "name": "rcgen", "version": "1.0.0", "source": "registry+r", "license": "MIT"},
        {"id": "registry+r#extra@1.0.0", "name": "extra", "version": "1.0.0", "source": "registry+r", "license": "MIT"}
      ],
      "resolve": {"nodes": [
        {"id": "path+file:///w/agent#0.1.0", "deps": [
          {"pkg": "registry+r#b@1.0.0", "dep_kinds": [{"kind": null}]},
          {"pkg": "path+file:///w/pki#0.1.0", "dep_kinds": [{"kind": null}, {"kind": "dev"}]},
          {"pkg": "registry+r#extra@1.0.0", "dep_kinds": [{"kind": null}]}
        ]},
        {"id": "registry+r#b@1.0.0", "deps": []},
        {"id": "path+file:///w/pki#0.1.0", "deps": [
          {"pkg": "registry+r#rcgen@1.0.0", "dep_kinds": [{"kind": null}]},
          {"pkg": "registry+r#b@1.0.0", "dep_kinds": [{"kind": null}]}
        ]},
        {"id": "registry+r#rcgen@1.0.0", "deps": []},
        {"id": "registry+r#extra@1.0.0", "deps": []}
      ]}
    }"#;

    #[test]
    fn optional_dependencies_follow_the_features_built() {
        let names = |features: &[&str]| -> Vec<String> {
            rust_packages(META_FEATURES, LOCK, "agent", features)
                .unwrap()
                .into_iter()
                .map(|p| p.name)
                .collect()
        };
        // As the image builds it: --no-default-features.
        assert_eq!(names(&[]), ["agent", "b"]);
        // `dev` enables `dep:pki` and, through it, rcgen.
        assert_eq!(names(&["default"]), ["agent", "b", "pki", "rcgen"]);
        assert_eq!(names(&["dev"]), names(&["default"]));
        // A renamed optional dependency, enabled by `more/x`.
        assert_eq!(names(&["all"]), ["agent", "b", "extra", "pki", "rcgen"]);
        // An optional dependency's implicit feature (its name).
        assert_eq!(names(&["more"]), ["agent", "b", "extra"]);
    }
}
