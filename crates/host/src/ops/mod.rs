//! The engine's actions, one file per family. Each action checks everything it can before it
//! changes anything (so bad input leaves the host as it was), then makes its changes in an order
//! where a crash at any point leaves something the same action can pick up again.

mod backup;
mod create;
mod identity;
mod inspect;
mod place;
mod remove;
mod upgrade;

use std::time::Duration;

pub use backup::{BackupReport, RestoreReport, backup, restore};
pub use create::{NewMember, create, join};
pub use identity::{data_lost, stamp_data};
pub use inspect::{ClusterStatus, MemberHealth, del_keys, getconf, hide_init_cluster, status};
pub use place::{WantedMember, place_member, reconfigure_member, retire_member};
pub use remove::{RemoveReport, prune_archives, remove};
pub use upgrade::{UpgradeReport, upgrade};

/// How long a started member may take to become healthy.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a learner may take to catch up with the leader.
pub const PROMOTE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long etcd may refuse a membership change right after another one ("unhealthy cluster").
pub const RECONFIG_TIMEOUT: Duration = Duration::from_secs(30);

fn require_yes(yes: bool, what: &str) -> crate::error::Result<()> {
    if yes {
        Ok(())
    } else {
        Err(crate::error::Error::Refused(format!("{what}. Pass --yes to confirm")))
    }
}
