//! Which member list the controller plans from (pure). Every member is asked for its own view;
//! the controller takes the view members agree on, never the first that answers. A member that
//! sees something else — only itself (a seed that bootstrapped again on lost data), a list
//! missing members the others list, another cluster ID — is diverged: reported, counted as not
//! healthy, and replaced through the normal path; its view never grows or shrinks the cluster.

use std::collections::{BTreeMap, BTreeSet};

use runc_etcd_host::etcd::{EndpointStatus, Membership};

/// One member's own answer, asked through its client URL.
#[derive(Debug, Clone)]
pub struct Answer {
    pub endpoint: String,
    pub membership: Membership,
    /// Its health check (`etcdctl endpoint health`), None if it failed.
    pub health: Option<EndpointStatus>,
}

/// The view a quorum of the asked members agrees on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Agreed {
    pub membership: Membership,
    /// Health of the agreeing members, by member ID.
    pub healthy: BTreeMap<u64, EndpointStatus>,
    /// The leader most agreeing members name (0: none).
    pub leader: u64,
    /// Endpoints whose answers disagree, with what they saw.
    pub diverged: Vec<(String, String)>,
}

/// What the members of one view have in common: the cluster and the member IDs.
type Key = (u64, BTreeSet<u64>);

fn key(m: &Membership) -> Key {
    (m.cluster_id, m.members.iter().map(|x| x.id).collect())
}

/// The view to plan from, given every answer, the number of members the controller placed (live
/// EtcdMembers) and the member IDs their agents recorded. A view is accepted when more than half
/// of the placed members answered with it, or when it lists every recorded member; the accepted
/// view with the most answers wins, and a tie between two decides nothing (None), as does no
/// answer at all.
pub fn agree(answers: &[Answer], placed: usize, recorded: &BTreeSet<u64>) -> Option<Agreed> {
    let mut groups: BTreeMap<Key, Vec<&Answer>> = BTreeMap::new();
    for a in answers {
        groups.entry(key(&a.membership)).or_default().push(a);
    }
    let accepted = |(k, group): &(&Key, &Vec<&Answer>)| group.len() * 2 > placed || k.1.is_superset(recorded);
    let mut ranked: Vec<(&Key, &Vec<&Answer>)> = groups.iter().filter(accepted).collect();
    ranked.sort_by_key(|(_, g)| std::cmp::Reverse(g.len()));
    let (chosen, group) = match ranked.as_slice() {
        [] => return None,
        [(_, g), (_, next), ..] if g.len() == next.len() => return None,
        [(k, g), ..] => (*k, *g),
    };
    let mut leaders: BTreeMap<u64, usize> = BTreeMap::new();
    for s in group.iter().filter_map(|a| a.health.as_ref()).filter(|s| s.leader != 0) {
        *leaders.entry(s.leader).or_default() += 1;
    }
    let leader = leaders.iter().max_by_key(|(_, n)| **n).map_or(0, |(l, _)| *l);
    let diverged = answers
        .iter()
        .filter(|a| key(&a.membership) != *chosen)
        .map(|a| (a.endpoint.clone(), describe(&a.membership, &group[0].membership)))
        .collect();
    Some(Agreed {
        membership: group[0].membership.clone(),
        healthy: group
            .iter()
            .filter_map(|a| a.health.clone())
            .map(|s| (s.member_id, s))
            .collect(),
        leader,
        diverged,
    })
}

/// What a diverged member sees, against the agreed view.
fn describe(seen: &Membership, agreed: &Membership) -> String {
    let names = |m: &Membership| {
        m.members
            .iter()
            .map(|x| {
                if x.name.is_empty() {
                    format!("{:x}", x.id)
                } else {
                    x.name.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if seen.cluster_id != agreed.cluster_id {
        format!(
            "it is in cluster {:x} with [{}]; the others are in cluster {:x} with [{}]",
            seen.cluster_id,
            names(seen),
            agreed.cluster_id,
            names(agreed)
        )
    } else {
        format!("it lists [{}]; the others list [{}]", names(seen), names(agreed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use runc_etcd_host::etcd::MemberInfo;

    fn member(id: u64) -> MemberInfo {
        MemberInfo {
            id,
            name: format!("m{id}"),
            peer_urls: vec![format!("https://10.0.0.{id}:2380")],
            client_urls: vec![format!("https://10.0.0.{id}:2379")],
            is_learner: false,
        }
    }

    /// Member `me` answering with the cluster `cluster` of `ids`, healthy with `leader`.
    fn answer(me: u64, cluster: u64, ids: &[u64], leader: u64) -> Answer {
        Answer {
            endpoint: format!("https://10.0.0.{me}:2379"),
            membership: Membership {
                cluster_id: cluster,
                member_id: me,
                members: ids.iter().map(|i| member(*i)).collect(),
            },
            health: Some(EndpointStatus {
                member_id: me,
                cluster_id: cluster,
                leader,
                ..Default::default()
            }),
        }
    }

    fn recorded(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_seed_that_bootstrapped_again_is_outvoted_and_named() {
        // The seed (1) lost its data and started alone with the same IDs; 2 and 3 carry on.
        let answers = [
            answer(1, 9, &[1], 1),
            answer(2, 9, &[1, 2, 3], 2),
            answer(3, 9, &[1, 2, 3], 2),
        ];
        // It answers first, as in the run the issue describes: the order does not matter.
        let a = agree(&answers, 3, &recorded(&[1, 2, 3])).unwrap();
        assert_eq!(a.membership.members.len(), 3);
        assert_eq!(a.leader, 2);
        assert!(!a.healthy.contains_key(&1), "the rogue is not counted healthy");
        assert_eq!(a.healthy.len(), 2);
        assert_eq!(a.diverged.len(), 1);
        assert_eq!(a.diverged[0].0, "https://10.0.0.1:2379");
        assert!(
            a.diverged[0].1.contains("it lists [m1]; the others list [m1, m2, m3]"),
            "{:?}",
            a.diverged
        );
    }

    #[test]
    fn a_lone_answer_that_misses_recorded_members_decides_nothing() {
        // Only the rogue is reachable from the operator: its one-member view must not be used
        // (the old code added learners on the nodes of the two healthy members it did not list).
        assert_eq!(agree(&[answer(1, 9, &[1], 1)], 3, &recorded(&[1, 2, 3])), None);
        // A lone healthy member listing everyone is used (one of three up: quorum is judged later).
        let a = agree(&[answer(2, 9, &[1, 2, 3], 0)], 3, &recorded(&[1, 2, 3])).unwrap();
        assert_eq!(a.membership.members.len(), 3);
    }

    #[test]
    fn a_majority_of_placed_members_wins_even_missing_a_recorded_one() {
        // Member 3 was removed by hand (etcdctl member remove): its EtcdMember still records it.
        let answers = [answer(1, 9, &[1, 2], 1), answer(2, 9, &[1, 2], 1)];
        let a = agree(&answers, 3, &recorded(&[1, 2, 3])).unwrap();
        assert_eq!(a.membership.members.len(), 2);
        assert!(a.diverged.is_empty());
    }

    #[test]
    fn another_cluster_id_diverges_and_a_tie_decides_nothing() {
        let answers = [
            answer(1, 9, &[1, 2, 3], 1),
            answer(2, 9, &[1, 2, 3], 1),
            answer(3, 8, &[1, 2, 3], 3),
        ];
        let a = agree(&answers, 3, &recorded(&[])).unwrap();
        assert_eq!(a.membership.cluster_id, 9);
        assert!(a.diverged[0].1.contains("cluster 8"), "{:?}", a.diverged);
        let split = [
            answer(1, 9, &[1, 2, 3, 4], 1),
            answer(2, 9, &[1, 2, 3, 4], 1),
            answer(3, 8, &[3, 4], 3),
            answer(4, 8, &[3, 4], 3),
        ];
        assert_eq!(
            agree(&split, 4, &recorded(&[])),
            None,
            "two views of two: neither is the cluster's"
        );
        assert_eq!(agree(&[], 3, &recorded(&[])), None);
    }

    #[test]
    fn the_leader_is_the_one_most_agreeing_members_name() {
        let answers = [
            answer(1, 9, &[1, 2, 3], 0),
            answer(2, 9, &[1, 2, 3], 3),
            answer(3, 9, &[1, 2, 3], 3),
        ];
        assert_eq!(agree(&answers, 3, &recorded(&[1, 2, 3])).unwrap().leader, 3);
    }
}
