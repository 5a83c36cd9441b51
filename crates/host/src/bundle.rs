//! The OCI runtime config (`config.json`) of a member's bundle. Pure: member record + paths in,
//! spec out. etcd runs in the host's network namespace (no `network` namespace here), on the
//! image's read-only rootfs, with only its data, its config file and its TLS files mounted in.

use std::path::Path;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilities, LinuxDeviceCgroupBuilder, LinuxNamespaceType, LinuxResourcesBuilder,
    Mount, MountBuilder, RootBuilder, Spec,
};

use crate::layout::{MemberPaths, container};
use crate::names::InstanceName;

/// The cgroup path in runc's systemd driver form (`slice:prefix:name`): runc asks systemd over
/// D-Bus for a scope `runc-etcd-<instance>.scope` in `system.slice`, so etcd is accounted and
/// shown by systemd instead of living in a cgroup systemd does not know about.
pub fn cgroups_path(prefix: &str, instance: &InstanceName) -> String {
    format!("system.slice:{prefix}:{instance}")
}

fn bind(src: &Path, dst: &str, ro: bool) -> Mount {
    let mode = if ro { "ro" } else { "rw" };
    MountBuilder::default()
        .destination(dst)
        .typ("bind")
        .source(src)
        .options(vec![
            "rbind".into(),
            "rprivate".into(),
            "nosuid".into(),
            "nodev".into(),
            mode.into(),
        ])
        .build()
        .expect("mount fields are all set")
}

/// The spec shared by the member's service and one-off commands run in its image (restore).
/// `args` is what runs; `extra` mounts are added after the member's own.
fn spec(
    cgroup_prefix: &str,
    instance: &InstanceName,
    paths: &MemberPaths,
    rootfs: &Path,
    args: Vec<String>,
    extra: Vec<Mount>,
) -> Spec {
    let mut spec = Spec::default();
    spec.set_hostname(Some(format!("etcd-{instance}")));
    spec.set_annotations(None);
    spec.set_root(Some(
        RootBuilder::default()
            .path(rootfs)
            .readonly(true)
            .build()
            .expect("root fields are all set"),
    ));

    let process = spec.process_mut().as_mut().expect("default spec has a process");
    process.set_args(Some(args));
    process.set_env(Some(vec![
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
        // etcdctl inside the container talks v3 to this member by default.
        "ETCDCTL_API=3".into(),
    ]));
    // etcd needs no privilege beyond binding its ports (which may be below 1024).
    let caps: oci_spec::runtime::Capabilities = [Capability::NetBindService].into_iter().collect();
    let mut capabilities = LinuxCapabilities::default();
    capabilities.set_bounding(Some(caps.clone()));
    capabilities.set_effective(Some(caps.clone()));
    capabilities.set_permitted(Some(caps));
    capabilities.set_inheritable(None);
    capabilities.set_ambient(None);
    process.set_capabilities(Some(capabilities));
    // No rlimits here: runc hands its own (the unit's LimitNOFILE=) to etcd, and could not
    // raise them itself once capabilities are dropped.
    process.set_rlimits(None);

    let mut mounts = spec.mounts().clone().unwrap_or_default();
    mounts.push(bind(&paths.data(), container::DATA, false));
    mounts.push(bind(&paths.etcd_conf(), container::CONF, true));
    mounts.push(bind(&paths.pki(), container::PKI, true));
    mounts.push(
        MountBuilder::default()
            .destination("/tmp")
            .typ("tmpfs")
            .source("tmpfs")
            .options(vec![
                "nosuid".into(),
                "nodev".into(),
                "mode=1777".into(),
                "size=64m".into(),
            ])
            .build()
            .expect("mount fields are all set"),
    );
    mounts.extend(extra);
    spec.set_mounts(Some(mounts));

    let defaults = spec.linux().clone().expect("default spec has linux");
    let namespaces = defaults
        .namespaces()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .filter(|ns| ns.typ() != LinuxNamespaceType::Network)
        .collect::<Vec<_>>();
    let deny_all_devices = LinuxDeviceCgroupBuilder::default()
        .allow(false)
        .access("rwm")
        .build()
        .expect("device rule fields are all set");
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroups_path(cgroup_prefix, instance))
        .resources(
            LinuxResourcesBuilder::default()
                .devices(vec![deny_all_devices])
                .build()
                .expect("resources are all set"),
        )
        .masked_paths(defaults.masked_paths().clone().unwrap_or_default())
        .readonly_paths(defaults.readonly_paths().clone().unwrap_or_default())
        .build()
        .expect("linux fields are all set");
    spec.set_linux(Some(linux));
    spec
}

/// The member's service: `etcd --config-file /etc/etcd/etcd.conf.yml`.
/// The member's cgroup: systemd scope `<prefix>-<instance>.scope` in system.slice.
pub const MEMBER_CGROUP_PREFIX: &str = "runc-etcd";

pub fn member_spec(instance: &InstanceName, paths: &MemberPaths, rootfs: &Path) -> Spec {
    let args = vec![container::ETCD.into(), "--config-file".into(), container::CONF.into()];
    spec(MEMBER_CGROUP_PREFIX, instance, paths, rootfs, args, vec![])
}

/// A one-off command in the member's image with `dir` mounted read-write at `/restore`.
pub fn oneoff_spec(instance: &InstanceName, paths: &MemberPaths, rootfs: &Path, args: Vec<String>, dir: &Path) -> Spec {
    spec(
        "runc-etcd-oneoff",
        instance,
        paths,
        rootfs,
        args,
        vec![bind(dir, "/restore", false)],
    )
}

pub fn to_json(spec: &Spec) -> String {
    serde_json::to_string_pretty(spec).expect("a Spec always serializes") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Layout;

    #[test]
    fn config_json_golden() {
        let instance = InstanceName::new("etcd").unwrap();
        let paths = Layout::default().member(&instance);
        let spec = member_spec(
            &instance,
            &paths,
            Path::new("/var/lib/runc-etcd/images/0123abcd/rootfs"),
        );
        crate::golden::golden("config.json", &to_json(&spec));
    }

    #[test]
    fn etcd_shares_the_host_network_and_a_read_only_root() {
        let instance = InstanceName::new("kube-system.main").unwrap();
        let paths = Layout::default().member(&instance);
        let spec = member_spec(&instance, &paths, Path::new("/r"));
        let linux = spec.linux().as_ref().unwrap();
        let ns: Vec<_> = linux.namespaces().as_ref().unwrap().iter().map(|n| n.typ()).collect();
        assert!(!ns.contains(&LinuxNamespaceType::Network));
        assert!(ns.contains(&LinuxNamespaceType::Mount) && ns.contains(&LinuxNamespaceType::Pid));
        assert_eq!(spec.root().as_ref().unwrap().readonly(), Some(true));
        assert!(!spec.process().as_ref().unwrap().terminal().unwrap_or(false));
        let data = spec
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .find(|m| m.destination() == Path::new("/var/lib/etcd"));
        assert_eq!(
            data.unwrap().source().as_deref(),
            Some(Path::new("/var/lib/runc-etcd/kube-system.main/data"))
        );
    }
}
