//! systemd, through `systemctl` (the host CLI and the agent both run inside the host's own
//! namespaces, where systemctl reaches PID 1 directly; see ARCHITECTURE.md §5 for why not
//! zbus on systemd's private socket).

use std::collections::HashMap;

use tokio::process::Command;

use crate::error::{Error, Result};
use crate::names::InstanceName;

pub fn unit_name(instance: &InstanceName) -> String {
    format!("runc-etcd@{instance}.service")
}

/// What `systemctl show` says of a unit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnitState {
    /// active, activating, inactive, failed…
    pub active_state: String,
    pub sub_state: String,
    /// enabled, disabled… (empty for a template instance that was never enabled)
    pub unit_file_state: String,
    pub n_restarts: u32,
    /// The unit's main process (`runc run`), 0 when none.
    pub main_pid: u32,
}

impl UnitState {
    /// Still starting while etcd has already exited: runc 1.1 relays etcd's READY and, until it
    /// comes, checks that etcd lives by `/proc/<pid>` — which a zombie still has, and runc reaps
    /// only after READY. So an etcd that fails before it is ready (it cannot reach its peers)
    /// leaves the unit "activating" forever (TimeoutStartSec=infinity), never restarted. Seen
    /// here: runc with a `<defunct>` etcd child for minutes.
    pub fn stuck_starting(&self) -> bool {
        self.active_state == "activating" && self.main_pid != 0 && has_exited_etcd(self.main_pid)
    }

    /// Enabled: the instance has a `multi-user.target.wants/` link and starts at boot.
    pub fn is_enabled(&self) -> bool {
        self.unit_file_state == "enabled"
    }
}

/// Whether an `etcd` child of `pid` (forked by any of its threads: runc is a Go program) has
/// exited and not been reaped. Only etcd counts: runc's own `runc init` stages exit and wait a
/// moment for runc to reap them while any container starts, and killing the unit then would
/// restart a healthy member.
fn has_exited_etcd(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|children| children.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .any(|child| {
            std::fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    let (head, rest) = stat.rsplit_once(')')?;
                    let comm = head.split_once('(')?.1;
                    Some(comm == "etcd" && rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
}

async fn systemctl(args: &[&str]) -> Result<String> {
    let out = Command::new("systemctl")
        .args(args)
        // In the agent's pod (the image's root, the host's PIDs) systemctl sees a root other than
        // PID 1's, takes itself to be in a chroot and ignores every command, answering nothing
        // and succeeding: the host's systemd is the one meant (its socket is mounted).
        .env("SYSTEMD_IGNORE_CHROOT", "1")
        .output()
        .await
        .map_err(|e| Error::Command {
            command: format!("systemctl {}", args.join(" ")),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(Error::Command {
            command: format!("systemctl {}", args.join(" ")),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn daemon_reload() -> Result<()> {
    systemctl(&["daemon-reload"]).await.map(drop)
}

/// Enable (start at boot) and start without waiting: readiness is checked against etcd itself,
/// with a deadline, because a joining member may wait for its peers for a while.
pub async fn enable_and_start(instance: &InstanceName) -> Result<()> {
    let unit = unit_name(instance);
    systemctl(&["enable", "--quiet", &unit]).await?;
    systemctl(&["start", "--no-block", &unit]).await.map(drop)
}

pub async fn start(instance: &InstanceName) -> Result<()> {
    systemctl(&["start", "--no-block", &unit_name(instance)])
        .await
        .map(drop)
}

/// Kills the unit's processes; systemd then restarts it (`Restart=always`).
pub async fn kill(instance: &InstanceName) -> Result<()> {
    systemctl(&["kill", "--signal=SIGKILL", &unit_name(instance)])
        .await
        .map(drop)
}

/// Stop and wait until etcd has exited (TimeoutStopSec bounds it).
pub async fn stop(instance: &InstanceName) -> Result<()> {
    systemctl(&["stop", &unit_name(instance)]).await.map(drop)
}

/// Stop, disable and forget a failed state. Idempotent: a unit that is already gone is fine.
pub async fn stop_and_disable(instance: &InstanceName) -> Result<()> {
    let unit = unit_name(instance);
    let state = show(instance).await?;
    if state.is_enabled() {
        systemctl(&["disable", "--quiet", &unit]).await?;
    }
    if state.active_state != "inactive" && state.active_state != "active" {
        // Not serving (starting, crash-looping, failing): etcd runs as PID 1 of its container
        // and ignores SIGTERM until it has set up its handler late in start-up, so a stop
        // would wait out TimeoutStopSec. Such a member has nothing to shut down cleanly, and
        // etcd's data survives a kill (as it survives a power cut).
        let _ = kill(instance).await;
    }
    if state.active_state != "inactive" {
        systemctl(&["stop", &unit]).await?;
    }
    let _ = systemctl(&["reset-failed", &unit]).await;
    Ok(())
}

pub async fn show(instance: &InstanceName) -> Result<UnitState> {
    let unit = unit_name(instance);
    let out = systemctl(&[
        "show",
        "--property=ActiveState,SubState,UnitFileState,NRestarts,ExecMainPID",
        &unit,
    ])
    .await?;
    let kv: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| kv.get(k).copied().unwrap_or("").to_string();
    Ok(UnitState {
        active_state: get("ActiveState"),
        sub_state: get("SubState"),
        unit_file_state: get("UnitFileState"),
        n_restarts: get("NRestarts").parse().unwrap_or(0),
        main_pid: get("ExecMainPID").parse().unwrap_or(0),
    })
}

/// The last lines the unit logged, for error messages.
pub async fn journal_tail(instance: &InstanceName, lines: u32) -> String {
    let out = Command::new("journalctl")
        .args([
            "--no-pager",
            "-o",
            "cat",
            "-n",
            &lines.to_string(),
            "-u",
            &unit_name(instance),
        ])
        .output()
        .await;
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_whose_etcd_exited_unreaped_is_stuck_starting() {
        let me = std::process::id();
        // Another child that exits unreaped (as runc's init stages do while a container starts)
        // is not etcd.
        let mut other = std::process::Command::new("true").spawn().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(300));
        let not_etcd = UnitState {
            active_state: "activating".into(),
            main_pid: me,
            ..Default::default()
        };
        assert!(!not_etcd.stuck_starting(), "a runc init stage is not etcd");
        other.wait().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let etcd = dir.path().join("etcd");
        std::os::unix::fs::symlink("/bin/true", &etcd).unwrap();
        let mut child = std::process::Command::new(&etcd).spawn().unwrap();
        let starting = |active: &str| UnitState {
            active_state: active.into(),
            main_pid: me,
            ..Default::default()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !starting("activating").stuck_starting() {
            assert!(
                std::time::Instant::now() < deadline,
                "the exited child never showed as a zombie"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(!starting("active").stuck_starting(), "READY came: runc reaps it itself");
        child.wait().unwrap();
        assert!(!starting("activating").stuck_starting(), "reaped");
    }
}
