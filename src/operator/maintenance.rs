//! Keeping the databases compact, planned (pure) once membership and version have converged: a
//! member whose database file is mostly free pages (above the threshold, and big enough to
//! matter) is defragmented, one member at a time, the leader last, only while every member is
//! healthy (a defragmentation blocks its member for its duration).
//!
//! (A NOSPACE alarm, a database at its quota, is answered before any planning: see
//! `reconcile`, step RecoverSpace.)

/// A member's database as etcd reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub db_size: i64,
    pub db_size_in_use: i64,
    pub healthy: bool,
    pub leader: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    None,
    Defragment { member: String },
}

/// Free pages as a percentage of the file.
pub fn free_percent(m: &Member) -> i64 {
    if m.db_size <= 0 {
        return 0;
    }
    (m.db_size - m.db_size_in_use).max(0) * 100 / m.db_size
}

pub fn next(members: &[Member], threshold_percent: i32, min_bytes: i64) -> Step {
    if members.iter().any(|m| !m.healthy) {
        return Step::None;
    }
    members
        .iter()
        .filter(|m| m.db_size >= min_bytes && free_percent(m) >= i64::from(threshold_percent))
        .min_by_key(|m| (m.leader, m.name.clone()))
        .map_or(Step::None, |m| Step::Defragment { member: m.name.clone() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(name: &str, size: i64, used: i64, leader: bool) -> Member {
        Member {
            name: name.into(),
            db_size: size,
            db_size_in_use: used,
            healthy: true,
            leader,
        }
    }

    #[test]
    fn fragmented_members_are_defragmented_leader_last() {
        let mb = 1 << 20;
        let ms = [
            m("a", 200 * mb, 40 * mb, true),
            m("b", 200 * mb, 50 * mb, false),
            m("c", 200 * mb, 190 * mb, false),
        ];
        assert_eq!(next(&ms, 50, 64 * mb), Step::Defragment { member: "b".into() });
        assert_eq!(next(&ms[..1], 50, 64 * mb), Step::Defragment { member: "a".into() });
        assert_eq!(next(&ms[2..], 50, 64 * mb), Step::None, "mostly in use");
        assert_eq!(
            next(&[m("s", 10 * mb, mb, false)], 50, 64 * mb),
            Step::None,
            "too small to matter"
        );
        let mut sick = ms.to_vec();
        sick[2].healthy = false;
        assert_eq!(next(&sick, 50, 64 * mb), Step::None, "not while a member is down");
        assert_eq!(free_percent(&m("z", 0, 0, false)), 0);
    }
}
