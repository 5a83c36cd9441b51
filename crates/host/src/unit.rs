//! The systemd template unit `runc-etcd@.service`: one instance per member, `%i` = instance name
//! (validated, so it needs no escaping). Pure rendering; the paths come from the Layout and the
//! runc binary path, both checked before they get here.

use std::path::Path;

use crate::error::{Error, Result};
use crate::layout::Layout;

/// A path that can stand in a unit file's ExecStart= unquoted: absolute, and only characters that
/// systemd's parser and specifier expansion leave alone.
pub fn check_unit_path(field: &'static str, p: &Path) -> Result<()> {
    let s = p.to_str().unwrap_or("");
    let ok = s.starts_with('/') && s.bytes().all(|c| c.is_ascii_alphanumeric() || b"/._-+".contains(&c));
    if !ok {
        return Err(Error::invalid(
            field,
            format!("{} is not an absolute path of plain characters", p.display()),
            "use an absolute path made of letters, digits and / . _ - +",
        ));
    }
    Ok(())
}

pub fn render(layout: &Layout, runc: &Path) -> Result<String> {
    check_unit_path("--runc", runc)?;
    check_unit_path("state dir", &layout.state_dir)?;
    check_unit_path("runc root", &layout.runc_root)?;
    let runc = format!(
        "{} --root {} --systemd-cgroup",
        runc.display(),
        layout.runc_root.display()
    );
    let state = layout.state_dir.display();
    let scope = format!("system.slice/{}-%i.scope", crate::bundle::MEMBER_CGROUP_PREFIX);
    let thaw = [
        format!("echo THAWED 2>/dev/null >/sys/fs/cgroup/freezer/{scope}/freezer.state"),
        format!("echo 0 2>/dev/null >/sys/fs/cgroup/unified/{scope}/cgroup.freeze"),
        format!("echo 0 2>/dev/null >/sys/fs/cgroup/{scope}/cgroup.freeze"),
        "true".to_string(),
    ]
    .join("; ");
    Ok(format!(
        "\
# Written by runc-etcd. One instance per etcd member: runc-etcd@<instance>.service
[Unit]
Description=etcd member %i (systemd -> runc -> etcd)
Documentation=https://github.com/runc-etcd/runc-etcd
Wants=network-online.target
After=network-online.target
# A removed member's files are gone: its instance must not come back at boot.
ConditionPathExists={state}/%i/bundle/config.json
# etcd that cannot start yet (its peers unreachable, its data guarded) is retried for as long as
# it takes, never given up on after a burst of restarts.
StartLimitIntervalSec=0

[Service]
# runc relays etcd's sd_notify, so `active` means etcd is serving.
Type=notify
NotifyAccess=all
# A member waiting for its peers is not failing; restarting it would not help.
TimeoutStartSec=infinity
TimeoutStopSec=60
# Left over from a crash or a power cut: runc refuses to start a container whose state exists.
ExecStartPre=-{runc} delete --force %i
# runc 1.1 freezes the container's cgroup while it sets device rules or kills etcd; killed in
# between (a stop that timed out, a member retired while starting), it leaves it frozen and then
# refuses every start (\"container's cgroup unexpectedly frozen\"). Thaw what is left over.
ExecStartPre=-/bin/sh -c '{thaw}'
# A member that ran must not start on lost data (ops/identity.rs): it would come back as a
# new cluster, or with an empty log, under its old identity.
ExecStartPre=/bin/sh -c 'test ! -e {state}/%i/data.id || test -e {state}/%i/data/member/runc-etcd-data.id || {{ echo \"%i: the data this member ran on is gone; refusing to start it (the operator replaces it)\" >&2; exit 1; }}'
ExecStart={runc} run --bundle {state}/%i/bundle %i
ExecStopPost=-{runc} delete --force %i
Restart=always
RestartSec=2
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_golden() {
        let unit = render(&Layout::default(), Path::new("/opt/runc-etcd/bin/runc")).unwrap();
        crate::golden::golden("runc-etcd@.service", &unit);
    }

    #[test]
    fn refuses_paths_that_would_inject_into_the_unit() {
        for bad in [
            "runc",
            "/usr/bin/runc\nExecStartPost=/bin/sh",
            "/opt/my runc",
            "/opt/%i/runc",
        ] {
            let e = render(&Layout::default(), Path::new(bad)).unwrap_err();
            assert!(e.to_string().contains("--runc"), "{bad:?}: {e}");
        }
    }
}
