//! A member's data, stamped as its own once etcd has run on it. From then on the member never
//! starts on a data dir without that stamp: with its data gone, a seed
//! (`initial-cluster-state: new`) would bootstrap a second cluster with the same cluster and member
//! IDs, and any member would come back with an empty log its leader cannot follow.
//!
//! Three guards, each enough on its own against the worst outcome:
//! - the member's config says `initial-cluster-state: existing` once it ran, so etcd cannot
//!   bootstrap a new cluster on an empty data dir (it asks its peers and fails without them);
//! - the unit's `ExecStartPre` refuses to start while `data.id` exists beside a data dir without
//!   the same stamp inside (see `unit.rs`), whoever starts it;
//! - the agent reports such a member as DataLost and stops it (`data_lost`).

use crate::error::{IoContext, Result};
use crate::member::{ClusterState, MemberRecord};
use crate::names::InstanceName;
use crate::{Engine, write_atomic};

/// What the stamp holds: which member, of which cluster incarnation.
fn stamp_text(record: &MemberRecord) -> String {
    format!("{} {}\n", record.name, record.cluster_token)
}

/// Stamps the member's data once etcd has initialised it (its `member/` folder exists): the stamp
/// inside the data dir first, then the config switched to `existing`, then `data.id` beside it.
/// A crash between two of these leaves `data.id` absent, and the next call does them again.
/// Returns whether it changed anything. Takes the instance lock.
pub fn stamp_data(engine: &Engine, instance: &InstanceName) -> Result<bool> {
    let _lock = engine.lock(instance)?;
    match engine.load(instance)? {
        Some(record) => stamp_locked(engine, record),
        None => Ok(false),
    }
}

/// [`stamp_data`] for a caller that holds the instance lock.
pub(crate) fn stamp_locked(engine: &Engine, mut record: MemberRecord) -> Result<bool> {
    let paths = engine.paths(&record.instance);
    if paths.data_id().exists() || !paths.data().join("member").is_dir() {
        return Ok(false);
    }
    let stamp = stamp_text(&record);
    write_atomic(&paths.data_stamp(), stamp.as_bytes(), 0o600)?;
    if record.initial_cluster_state == ClusterState::New {
        record.initial_cluster_state = ClusterState::Existing;
        engine.write_record(&record)?;
    }
    write_atomic(&paths.data_id(), stamp.as_bytes(), 0o644)?;
    Ok(true)
}

/// Why the member's data is not the data it ran on (None: it is, or it never ran). Read only.
pub fn data_lost(engine: &Engine, instance: &InstanceName) -> Result<Option<String>> {
    let paths = engine.paths(instance);
    let expected = match std::fs::read_to_string(paths.data_id()) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).ctx("reading", paths.data_id()),
    };
    let found = std::fs::read_to_string(paths.data_stamp()).ok();
    Ok(match found {
        Some(found) if found == expected => None,
        Some(found) => Some(format!(
            "the data dir {} belongs to another member ({}) than the one that ran here ({})",
            paths.data().display(),
            found.trim(),
            expected.trim()
        )),
        None => Some(format!(
            "the data dir {} lost the data this member ran on (no {}): etcd must not start on it",
            paths.data().display(),
            paths.data_stamp().display()
        )),
    })
}
