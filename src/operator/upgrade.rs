//! Rolling upgrades (and rolling restarts for changed etcd settings), planned (pure) once the
//! membership has converged:
//! - etcd's version rules, as data: within a minor version any patch release; up one minor
//!   version at a time; never down a minor version (etcd's downgrade needs its own procedure);
//! - every member healthy before any member is touched;
//! - the new image pulled on every member's node first (`nextImage`), so a registry outage
//!   cannot leave a half-upgraded cluster;
//! - followers first, the leader last (its leadership is moved away first), one at a time.

use std::cmp::Ordering;

/// `major.minor.patch` of an etcd version ("3.5.16", "v3.5.16").
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl std::str::FromStr for Version {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<u32> = s
            .trim_start_matches('v')
            .split('.')
            .map(|p| p.parse().map_err(|_| format!("{s:?} is not a version like 3.5.16")))
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [major, minor, patch] => Ok(Version { major, minor, patch }),
            _ => Err(format!("{s:?} is not a version like 3.5.16")),
        }
    }
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Whether a member running `from` may be moved to `to`; the refusal says what to do instead.
pub fn step_allowed(from: Version, to: Version) -> Result<(), String> {
    if from.major != to.major {
        return Err(format!("{from} → {to}: etcd does not change major versions in place"));
    }
    match to.minor.cmp(&from.minor) {
        Ordering::Equal => Ok(()),
        Ordering::Greater if to.minor == from.minor + 1 => Ok(()),
        Ordering::Greater => Err(format!(
            "{from} → {to}: etcd upgrades one minor version at a time; set version to the newest {}.{}.x first",
            from.major,
            from.minor + 1
        )),
        Ordering::Less => Err(format!(
            "{from} → {to}: a downgrade across minor versions needs etcd's downgrade procedure, which runc-etcd does not run; set version back to {}.{}.x",
            from.major, from.minor
        )),
    }
}

/// A member as the upgrade planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    /// The image its EtcdMember asks for.
    pub image: String,
    /// Its EtcdMember asks for the cluster's etcd settings.
    pub settings_current: bool,
    /// The image its agent has pulled in advance (`status.preparedImage`).
    pub prepared: Option<String>,
    /// The version it runs, as etcd reports it.
    pub version: Option<String>,
    pub healthy: bool,
    pub leader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every member runs the target image.
    Done,
    /// The spec asks for a move etcd does not allow; nothing is changed.
    Refuse(String),
    /// Not yet (a member unhealthy, images being pulled).
    Wait(String),
    /// Ask every member still on the old image to pull the new one.
    Prepare,
    /// Move this member to the target image and settings.
    Upgrade { member: String },
}

pub fn next(members: &[Member], target_image: &str, target_version: &str) -> Step {
    let behind: Vec<&Member> = members
        .iter()
        .filter(|m| m.image != target_image || !m.settings_current)
        .collect();
    if behind.is_empty() {
        return Step::Done;
    }
    let new_image: Vec<&&Member> = behind.iter().filter(|m| m.image != target_image).collect();
    let Ok(to) = target_version.parse::<Version>() else {
        return Step::Refuse(format!("{target_version:?} is not a version like 3.5.16"));
    };
    for m in members.iter().filter(|_| !new_image.is_empty()) {
        let Some(from) = m.version.as_deref().and_then(|v| v.parse().ok()) else {
            continue;
        };
        if let Err(why) = step_allowed(from, to) {
            return Step::Refuse(why);
        }
    }
    if let Some(sick) = members.iter().find(|m| !m.healthy) {
        return Step::Wait(format!(
            "an upgrade starts only when every member is healthy; {} is not",
            sick.name
        ));
    }
    if new_image.iter().any(|m| m.prepared.as_deref() != Some(target_image)) {
        return Step::Prepare;
    }
    let next = behind
        .iter()
        .min_by_key(|m| (m.leader, m.name.clone()))
        .expect("behind is not empty");
    Step::Upgrade {
        member: next.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        s.parse().unwrap()
    }

    #[test]
    fn etcd_version_rules() {
        let cases = [
            ("3.5.16", "3.5.30", true),
            ("3.5.30", "3.5.16", true),
            ("3.4.23", "3.5.16", true),
            ("3.4.23", "3.6.0", false),
            ("3.5.16", "3.4.23", false),
            ("3.5.16", "4.0.0", false),
        ];
        for (from, to, ok) in cases {
            assert_eq!(step_allowed(v(from), v(to)).is_ok(), ok, "{from} → {to}");
        }
        let why = step_allowed(v("3.4.23"), v("3.6.0")).unwrap_err();
        assert!(why.contains("newest 3.5.x first"), "{why}");
        assert!("3.5".parse::<Version>().is_err());
        assert_eq!(v("v3.5.16").to_string(), "3.5.16");
    }

    fn member(name: &str, image: &str, leader: bool) -> Member {
        Member {
            name: name.into(),
            image: image.into(),
            settings_current: true,
            prepared: Some("etcd:v3.5.30".into()),
            version: Some(if image.ends_with("30") { "3.5.30" } else { "3.5.16" }.into()),
            healthy: true,
            leader,
        }
    }

    #[test]
    fn followers_first_leader_last_after_every_node_pulled() {
        let new = "etcd:v3.5.30";
        let mut ms = vec![
            member("a", "etcd:v3.5.16", true),
            member("b", "etcd:v3.5.16", false),
            member("c", "etcd:v3.5.16", false),
        ];
        ms[2].prepared = None;
        assert_eq!(next(&ms, new, "3.5.30"), Step::Prepare);
        ms[2].prepared = Some(new.into());
        assert_eq!(next(&ms, new, "3.5.30"), Step::Upgrade { member: "b".into() });
        ms[1] = member("b", new, false);
        assert_eq!(next(&ms, new, "3.5.30"), Step::Upgrade { member: "c".into() });
        ms[2] = member("c", new, false);
        assert_eq!(next(&ms, new, "3.5.30"), Step::Upgrade { member: "a".into() });
        ms[0] = member("a", new, true);
        assert_eq!(next(&ms, new, "3.5.30"), Step::Done);
    }

    #[test]
    fn nothing_moves_while_a_member_is_sick_or_the_step_is_not_allowed() {
        let mut ms = vec![member("a", "etcd:v3.5.16", true), member("b", "etcd:v3.5.16", false)];
        ms[1].healthy = false;
        assert!(matches!(next(&ms, "etcd:v3.5.30", "3.5.30"), Step::Wait(_)));
        ms[1].healthy = true;
        assert!(matches!(next(&ms, "etcd:v3.4.23", "3.4.23"), Step::Refuse(why) if why.contains("downgrade")));
    }

    #[test]
    fn changed_settings_roll_through_the_members_without_a_pull() {
        let img = "etcd:v3.5.16";
        let mut ms = vec![member("a", img, true), member("b", img, false)];
        for m in &mut ms {
            m.prepared = None;
            m.settings_current = false;
        }
        assert_eq!(next(&ms, img, "3.5.16"), Step::Upgrade { member: "b".into() });
        ms[1].settings_current = true;
        assert_eq!(next(&ms, img, "3.5.16"), Step::Upgrade { member: "a".into() });
        ms[0].settings_current = true;
        assert_eq!(next(&ms, img, "3.5.16"), Step::Done);
    }
}
