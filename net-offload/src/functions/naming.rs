//! How the agent names and tags what it makes for functions, so that its
//! devices can be found after a restart and told apart from an operator's.
//!
//! - Simulator representor (agent's namespace): `fn-<id>` when that fits the
//!   kernel's 15-byte limit (ids up to 12 bytes), else `fn-<first 7 bytes of
//!   id>-<4 hex digits of FNV-1a(id)>` (15 bytes). The full id is in the
//!   link's ifalias, which is what ownership is decided by; a hash collision
//!   is caught by that alias check, never silently shared.
//! - Simulator namespace: `dpu-fn-<id>` under `/run/netns/` (as `ip netns`).
//! - ifalias of every link the agent makes: `dpu-agent function <id>`, or
//!   `dpu-agent function <id> scope <scope>` when the backend has a scope
//!   (one per agent state directory), so that several agents sharing one
//!   host (dev, tests) only ever sweep their own orphans.
//! - A second `dpu-agent dev`'s switch namespace: `dpu-dev-<scope>` under
//!   `/run/netns/`, the scope made from its (canonical) state directory.
//! - SR-IOV representors follow the device's naming, by default BlueField's
//!   `{pf}vf{vf}` (`pf0vf3`); the pattern is configurable.

/// Linux's IFNAMSIZ less the terminating NUL.
pub const IFNAME_MAX: usize = 15;
/// Prefix of the simulator's namespaces.
pub const NETNS_PREFIX: &str = "dpu-fn-";
/// Prefix of the ifalias of every link the agent makes for a function.
pub const ALIAS_PREFIX: &str = "dpu-agent function ";
/// BlueField's representor naming.
pub const DEFAULT_REPRESENTOR_PATTERN: &str = "{pf}vf{vf}";

/// The simulator's representor name for function `id`.
pub fn veth_representor(id: &str) -> String {
    let short = format!("fn-{id}");
    if short.len() <= IFNAME_MAX {
        return short;
    }
    let head: String = id.chars().take(7).collect();
    format!("fn-{head}-{:04x}", fnv1a(id.as_bytes()) & 0xffff)
}

/// The simulator's namespace for function `id`.
pub fn netns_name(id: &str) -> String {
    format!("{NETNS_PREFIX}{id}")
}

/// The function id of a simulator namespace name.
pub fn function_of_netns(name: &str) -> Option<&str> {
    name.strip_prefix(NETNS_PREFIX).filter(|id| !id.is_empty())
}

/// The ifalias marking a link as made for function `id`.
pub fn alias(id: &str) -> String {
    format!("{ALIAS_PREFIX}{id}")
}

/// The function id of an ifalias written by [`alias`] or [`scoped_alias`].
pub fn function_of_alias(alias: &str) -> Option<&str> {
    parse_alias(alias).map(|(id, _)| id)
}

/// The ifalias marking a link as made for function `id` by the agent with
/// `scope` (none: [`alias`]).
pub fn scoped_alias(id: &str, scope: Option<&str>) -> String {
    match scope {
        Some(s) => format!("{ALIAS_PREFIX}{id} scope {s}"),
        None => alias(id),
    }
}

/// The function id and scope of an agent's ifalias.
pub fn parse_alias(alias: &str) -> Option<(&str, Option<&str>)> {
    let rest = alias.strip_prefix(ALIAS_PREFIX)?;
    let (id, scope) = match rest.split_once(" scope ") {
        Some((id, scope)) => (id, Some(scope)),
        None => (rest, None),
    };
    (!id.is_empty() && !id.contains(' ')).then_some((id, scope))
}

/// A short stable scope for an agent, from something unique to it (its
/// state directory).
pub fn scope_of(unique: &str) -> String {
    format!("{:08x}", fnv1a(unique.as_bytes()))
}

/// Prefix of the namespace a dev agent's private switch runs in when the
/// caller's namespace already has one.
pub const DEV_SWITCH_NETNS_PREFIX: &str = "dpu-dev-";

/// The namespace name for the private switch of the dev agent whose state
/// directory is `state_dir`: `dpu-dev-<scope_of(state_dir)>`.
pub fn dev_switch_netns(state_dir: &str) -> String {
    format!("{DEV_SWITCH_NETNS_PREFIX}{}", scope_of(state_dir))
}

/// Expands a representor pattern: `{pf}` becomes the PF name (`pf0`),
/// `{pfnum}` its number (`0`), `{vf}` the VF index.
pub fn representor_from_pattern(pattern: &str, pf: &str, vf: u32) -> String {
    let pfnum = pf.trim_start_matches(|c: char| !c.is_ascii_digit());
    pattern
        .replace("{pfnum}", pfnum)
        .replace("{pf}", pf)
        .replace("{vf}", &vf.to_string())
}

/// 32-bit FNV-1a; stable across releases, which the names depend on.
fn fnv1a(bytes: &[u8]) -> u32 {
    bytes.iter().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(*b)).wrapping_mul(0x0100_0193)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_ids_are_kept_whole() {
        assert_eq!(veth_representor("web-1"), "fn-web-1");
        assert_eq!(veth_representor("abcdefghijkl"), "fn-abcdefghijkl");
        assert_eq!(veth_representor("abcdefghijkl").len(), 15);
    }

    #[test]
    fn long_ids_are_shortened_stably_and_distinctly() {
        let a = veth_representor("frontend-web-server-1");
        let b = veth_representor("frontend-web-server-2");
        assert_eq!(a.len(), IFNAME_MAX, "{a}");
        assert!(a.starts_with("fn-fronten-"), "{a}");
        assert_ne!(a, b);
        // Stable: the name is how the agent finds the link after a restart.
        assert_eq!(a, veth_representor("frontend-web-server-1"));
        assert_eq!(fnv1a(b""), 0x811c_9dc5);
        assert_eq!(fnv1a(b"a"), 0xe40c_292c);
        let max = "a".repeat(63);
        assert_eq!(veth_representor(&max).len(), IFNAME_MAX);
    }

    #[test]
    fn tags_round_trip() {
        assert_eq!(netns_name("web-1"), "dpu-fn-web-1");
        assert_eq!(function_of_netns("dpu-fn-web-1"), Some("web-1"));
        assert_eq!(function_of_netns("dpu-fn-"), None);
        assert_eq!(function_of_netns("blue"), None);
        assert_eq!(function_of_alias(&alias("web-1")), Some("web-1"));
        assert_eq!(function_of_alias("uplink"), None);
        let scoped = scoped_alias("web-1", Some("0badf00d"));
        assert_eq!(scoped, "dpu-agent function web-1 scope 0badf00d");
        assert_eq!(parse_alias(&scoped), Some(("web-1", Some("0badf00d"))));
        assert_eq!(parse_alias(&alias("web-1")), Some(("web-1", None)));
        assert_eq!(scoped_alias("x", None), alias("x"));
        assert_eq!(scope_of("/var/lib/dpu-agent").len(), 8);
        let sw = dev_switch_netns("/tmp/a/state");
        assert!(sw.starts_with("dpu-dev-") && sw.len() == 16, "{sw}");
        assert_ne!(sw, dev_switch_netns("/tmp/b/state"));
        assert_eq!(function_of_netns(&sw), None);
    }

    #[test]
    fn representor_patterns() {
        assert_eq!(
            representor_from_pattern(DEFAULT_REPRESENTOR_PATTERN, "pf0", 3),
            "pf0vf3"
        );
        assert_eq!(
            representor_from_pattern("en3f{pfnum}pf{pfnum}vf{vf}", "pf1", 12),
            "en3f1pf1vf12"
        );
    }
}
