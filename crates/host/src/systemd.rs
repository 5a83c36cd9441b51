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
}

impl UnitState {
    /// Enabled: the instance has a `multi-user.target.wants/` link and starts at boot.
    pub fn is_enabled(&self) -> bool {
        self.unit_file_state == "enabled"
    }
}

async fn systemctl(args: &[&str]) -> Result<String> {
    let out = Command::new("systemctl")
        .args(args)
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
        let _ = systemctl(&["kill", "--signal=SIGKILL", &unit]).await;
    }
    if state.active_state != "inactive" {
        systemctl(&["stop", &unit]).await?;
    }
    let _ = systemctl(&["reset-failed", &unit]).await;
    Ok(())
}

pub async fn show(instance: &InstanceName) -> Result<UnitState> {
    let unit = unit_name(instance);
    let out = systemctl(&["show", "--property=ActiveState,SubState,UnitFileState,NRestarts", &unit]).await?;
    let kv: HashMap<&str, &str> = out.lines().filter_map(|l| l.split_once('=')).collect();
    let get = |k: &str| kv.get(k).copied().unwrap_or("").to_string();
    Ok(UnitState {
        active_state: get("ActiveState"),
        sub_state: get("SubState"),
        unit_file_state: get("UnitFileState"),
        n_restarts: get("NRestarts").parse().unwrap_or(0),
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
