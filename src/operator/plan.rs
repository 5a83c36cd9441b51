//! The membership planner: from what is observed (members as etcd and the agents report them,
//! eligible nodes, desired size) to the one next step. Pure, so every rule is unit-tested and the
//! controller only observes, records the step in status, and carries it out.
//!
//! Rules (ARCHITECTURE.md §4):
//! - one membership change at a time: a learner in flight is finished (promoted) or dropped
//!   before anything else;
//! - a new cluster starts from one seed (`new`); every other member joins as a learner
//!   (`existing`) and is promoted once it has caught up;
//! - nothing is added while a voter is unhealthy (etcd's strict reconfig check would refuse, and
//!   recovery is a separate rule), and nothing is done without quorum;
//! - scale down removes an unhealthy voter first, else a follower, never the leader, never below
//!   one member, and only when the rest keep quorum;
//! - member recovery: a voter unhealthy past the recovery timeout, or a learner that never caught
//!   up, is replaced (removed, then added again like any new member), one at a time and only
//!   while the rest keep quorum; the replacement goes to the replaced member's node when that
//!   node is still eligible;
//! - too few eligible nodes is reported and waited out; nothing is torn down for it.

/// A member as the controller sees it (etcd's member list joined with the agents' reports).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub name: String,
    pub node: String,
    pub voter: bool,
    /// etcd runs and has joined (it has a name and client URLs in `member list`).
    pub started: bool,
    /// It answers, and a voter serves quorum reads.
    pub healthy: bool,
    pub leader: bool,
    /// Unhealthy (or, for a learner, not caught up) for longer than the recovery timeout.
    pub overdue: bool,
}

/// A node that may host a member (matches the selector, tolerates the taints, is Ready).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    pub eligible: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub size: usize,
    pub members: Vec<Member>,
    pub nodes: Vec<Node>,
    /// Where a new member goes first if it is free and eligible (the node of a member just
    /// replaced: its host is fine, only its etcd was not).
    pub prefer_node: Option<String>,
}

/// The one next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start the seed of a new cluster on `node` (`initial-cluster-state: new`).
    Bootstrap { node: String },
    /// Register a learner for `node` and start it there (`existing`).
    AddLearner { node: String },
    /// Promote a caught-up learner to voter.
    Promote { member: String },
    /// Deregister `member`, then stop it and archive its data.
    Remove { member: String },
    /// Deregister a failed `member`, stop it and archive its data; a new member takes its place.
    Replace { member: String },
    /// Move a member to the cluster's image (from the upgrade planner, once the membership has
    /// converged; this planner never returns it).
    Upgrade { member: String },
    /// Defragment one member's database (from the maintenance planner).
    Defragment { member: String },
    /// Answer a NOSPACE alarm: compact, defragment every member, disarm (maintenance planner).
    RecoverSpace,
    /// Quorum is lost and a rebuild was asked for: retire every member, then bootstrap a seed
    /// from `backup` (decided by the controller's quorum-loss policy, never by this planner).
    Rebuild { backup: String },
    /// Not yet: requeue, and say why in status.
    Wait { reason: String },
    /// The membership matches the spec.
    Converged,
}

fn wait(reason: impl Into<String>) -> Step {
    Step::Wait { reason: reason.into() }
}

/// Whether `voters` voters with `healthy` healthy ones have quorum.
pub fn has_quorum(voters: usize, healthy: usize) -> bool {
    voters > 0 && healthy > voters / 2
}

pub fn next(obs: &Observed) -> Step {
    let size = obs.size.max(1);
    let voters: Vec<&Member> = obs.members.iter().filter(|m| m.voter).collect();
    let learners: Vec<&Member> = obs.members.iter().filter(|m| !m.voter).collect();
    let healthy_voters = voters.iter().filter(|m| m.healthy).count();

    if obs.members.is_empty() {
        return match free_nodes(obs).first() {
            Some(node) => Step::Bootstrap { node: node.clone() },
            None => wait("no eligible node for the first member"),
        };
    }
    if !has_quorum(voters.len(), healthy_voters) {
        return wait(format!(
            "quorum lost: {healthy_voters} of {} voting members healthy; nothing is changed",
            voters.len()
        ));
    }
    // A change in flight is finished first.
    if let Some(learner) = learners.first() {
        if voters.len() >= size {
            // Not needed any more (the spec shrank): it holds no vote, so dropping it is safe.
            return Step::Remove {
                member: learner.name.clone(),
            };
        }
        if learner.started && learner.healthy {
            // etcd refuses a promotion that would leave the grown voter set without quorum.
            if !has_quorum(voters.len() + 1, healthy_voters + 1) {
                return wait(format!(
                    "promoting {} would leave the voters without quorum",
                    learner.name
                ));
            }
            return Step::Promote {
                member: learner.name.clone(),
            };
        }
        if learner.overdue {
            // It never caught up; it holds no vote, so dropping it is safe.
            return Step::Replace {
                member: learner.name.clone(),
            };
        }
        return wait(format!("learner {} is catching up", learner.name));
    }
    if let Some(failed) = voters
        .iter()
        .filter(|m| !m.healthy && m.overdue && !m.leader)
        .min_by_key(|m| m.name.clone())
    {
        if !has_quorum(voters.len() - 1, healthy_voters) {
            return wait(format!(
                "replacing {} would leave the voters without quorum",
                failed.name
            ));
        }
        return Step::Replace {
            member: failed.name.clone(),
        };
    }
    if voters.len() < size {
        if healthy_voters < voters.len() {
            return wait("a voting member is unhealthy; members are added only to a healthy cluster");
        }
        return match free_nodes(obs).first() {
            Some(node) => Step::AddLearner { node: node.clone() },
            None => wait(format!(
                "fewer eligible nodes than size: {size} members wanted, {} eligible nodes",
                obs.nodes.iter().filter(|n| n.eligible).count()
            )),
        };
    }
    if voters.len() > size {
        // Unhealthy first (removing it raises the margin), then a follower; never the leader.
        let victim = voters
            .iter()
            .filter(|m| !m.leader)
            .min_by_key(|m| (m.healthy, m.name.clone()))
            .expect("two or more voters include a non-leader");
        let healthy_after = healthy_voters - usize::from(victim.healthy);
        if !has_quorum(voters.len() - 1, healthy_after) {
            return wait(format!(
                "removing {} would leave {healthy_after} of {} voters healthy: no quorum",
                victim.name,
                voters.len() - 1
            ));
        }
        return Step::Remove {
            member: victim.name.clone(),
        };
    }
    Step::Converged
}

/// Eligible nodes that host no member yet: the preferred one first, then in name order
/// (deterministic placement).
fn free_nodes(obs: &Observed) -> Vec<String> {
    let mut free: Vec<String> = obs
        .nodes
        .iter()
        .filter(|n| n.eligible && !obs.members.iter().any(|m| m.node == n.name))
        .map(|n| n.name.clone())
        .collect();
    free.sort_by_key(|n| (Some(n) != obs.prefer_node.as_ref(), n.clone()));
    free
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn member(name: &str, voter: bool, healthy: bool, leader: bool) -> Member {
        Member {
            name: name.into(),
            node: format!("node-{name}"),
            voter,
            started: healthy,
            healthy,
            leader,
            overdue: false,
        }
    }

    fn overdue(mut m: Member) -> Member {
        m.overdue = true;
        m
    }

    fn nodes(n: usize) -> Vec<Node> {
        (0..n)
            .map(|i| Node {
                name: format!("node-{i}"),
                eligible: true,
            })
            .collect()
    }

    fn obs(size: usize, members: Vec<Member>, nodes: Vec<Node>) -> Observed {
        Observed {
            size,
            members,
            nodes,
            prefer_node: None,
        }
    }

    #[test]
    fn table() {
        let v = |n: &str| member(n, true, true, false);
        let leader = |n: &str| member(n, true, true, true);
        let sick = |n: &str| member(n, true, false, false);
        let learner = |n: &str, ready: bool| member(n, false, ready, false);
        let cases: Vec<(&str, Observed, Step)> = vec![
            (
                "empty: seed on the first node",
                obs(3, vec![], nodes(3)),
                Step::Bootstrap { node: "node-0".into() },
            ),
            (
                "empty, no node",
                obs(3, vec![], vec![]),
                wait("no eligible node for the first member"),
            ),
            (
                "one of three: add a learner on a free node",
                obs(3, vec![leader("0")], nodes(3)),
                Step::AddLearner { node: "node-1".into() },
            ),
            (
                "learner caught up: promote",
                obs(3, vec![leader("0"), learner("1", true)], nodes(3)),
                Step::Promote { member: "1".into() },
            ),
            (
                "learner not yet started: wait",
                obs(3, vec![leader("0"), learner("1", false)], nodes(3)),
                wait("learner 1 is catching up"),
            ),
            (
                "scale down with a learner in flight: drop the learner",
                obs(1, vec![leader("0"), learner("1", false)], nodes(3)),
                Step::Remove { member: "1".into() },
            ),
            (
                "converged",
                obs(3, vec![leader("0"), v("1"), v("2")], nodes(3)),
                Step::Converged,
            ),
            (
                "scale down removes a follower, not the leader",
                obs(1, vec![leader("a"), v("b")], nodes(3)),
                Step::Remove { member: "b".into() },
            ),
            (
                "scale down removes the unhealthy member first",
                obs(3, vec![leader("a"), v("b"), v("c"), v("d"), sick("e")], nodes(5)),
                Step::Remove { member: "e".into() },
            ),
            (
                // A stale report can name an unhealthy leader: removing a healthy follower then
                // would leave one healthy voter of two.
                "scale down that would lose quorum waits",
                obs(2, vec![member("a", true, false, true), v("b"), v("c")], nodes(3)),
                wait("removing b would leave 1 of 2 voters healthy: no quorum"),
            ),
            (
                "no adding while a voter is unhealthy",
                obs(5, vec![leader("a"), v("b"), sick("c")], nodes(5)),
                wait("a voting member is unhealthy; members are added only to a healthy cluster"),
            ),
            (
                "an unhealthy voter past the timeout is replaced",
                obs(3, vec![leader("a"), v("b"), overdue(sick("c"))], nodes(3)),
                Step::Replace { member: "c".into() },
            ),
            (
                "an unhealthy voter within the timeout is waited for",
                obs(3, vec![leader("a"), v("b"), sick("c")], nodes(3)),
                Step::Converged,
            ),
            (
                "a learner that never caught up is replaced",
                obs(3, vec![leader("a"), v("b"), overdue(learner("c", false))], nodes(3)),
                Step::Replace { member: "c".into() },
            ),
            (
                "two of two unhealthy: quorum lost, nothing replaced",
                obs(2, vec![leader("a"), overdue(sick("b")), overdue(sick("c"))], nodes(3)),
                wait("quorum lost: 1 of 3 voting members healthy; nothing is changed"),
            ),
            (
                "after a replacement the new member goes to the replaced one's node",
                Observed {
                    prefer_node: Some("node-2".into()),
                    ..obs(3, vec![leader("0"), v("1")], nodes(4))
                },
                Step::AddLearner { node: "node-2".into() },
            ),
            (
                "quorum lost: nothing is done",
                obs(3, vec![leader("a"), sick("b"), sick("c")], nodes(3)),
                wait("quorum lost: 1 of 3 voting members healthy; nothing is changed"),
            ),
        ];
        for (what, o, want) in cases {
            assert_eq!(next(&o), want, "{what}");
        }
    }

    #[test]
    fn too_few_nodes_is_reported_and_nothing_is_torn_down() {
        let o = obs(
            5,
            vec![member("0", true, true, true), member("1", true, true, false)],
            nodes(2),
        );
        match next(&o) {
            Step::Wait { reason } => assert!(reason.contains("fewer eligible nodes than size"), "{reason}"),
            other => panic!("expected a wait, got {other:?}"),
        }
    }

    /// Every size is reached from an empty cluster, and every smaller size from seven members,
    /// one change at a time.
    #[test]
    fn scales_up_and_down_through_every_size() {
        let run = |mut model: Model, size: usize| {
            model.obs.size = size;
            let mut steps = 0;
            loop {
                let step = next(&model.obs);
                if step == Step::Converged {
                    break;
                }
                if let Step::Wait { reason } = &step {
                    assert!(reason.contains("catching up"), "stuck scaling to {size}: {reason}");
                }
                model.apply(&step);
                model.tick();
                steps += 1;
                assert!(steps < 40, "no convergence to {size}");
            }
            model
        };
        for size in 1..=7 {
            let empty = Model {
                next_id: 0,
                obs: obs(size, vec![], nodes(7)),
            };
            let grown = run(empty, size);
            assert_eq!(grown.obs.members.iter().filter(|m| m.voter).count(), size);
            let seven = run(grown, 7);
            let shrunk = run(seven, size);
            assert_eq!(shrunk.obs.members.len(), size);
            assert!(shrunk.obs.members.iter().any(|m| m.leader), "the leader stays");
        }
    }

    #[test]
    fn ineligible_nodes_are_not_used() {
        let mut ns = nodes(3);
        ns[1].eligible = false;
        let o = obs(2, vec![member("0", true, true, true)], ns);
        assert_eq!(next(&o), Step::AddLearner { node: "node-2".into() });
    }

    /// A model of etcd and the agents, to run the planner's steps against.
    #[derive(Debug, Clone)]
    struct Model {
        obs: Observed,
        next_id: usize,
    }

    impl Model {
        fn apply(&mut self, step: &Step) {
            let members = &mut self.obs.members;
            match step {
                Step::Bootstrap { node } => {
                    assert!(members.is_empty(), "bootstrap into an existing cluster");
                    members.push(Member {
                        name: format!("m{}", self.next_id),
                        node: node.clone(),
                        voter: true,
                        started: true,
                        healthy: true,
                        leader: true,
                        overdue: false,
                    });
                    self.next_id += 1;
                }
                Step::AddLearner { node } => {
                    assert!(members.iter().all(|m| m.voter), "a second change in flight");
                    assert!(members.iter().all(|m| m.node != *node), "two members on {node}");
                    members.push(Member {
                        name: format!("m{}", self.next_id),
                        node: node.clone(),
                        voter: false,
                        started: false,
                        healthy: false,
                        leader: false,
                        overdue: false,
                    });
                    self.next_id += 1;
                }
                Step::Promote { member } => {
                    let m = members
                        .iter_mut()
                        .find(|m| m.name == *member)
                        .expect("promoted member exists");
                    assert!(!m.voter && m.healthy, "promoting {member} before it caught up");
                    m.voter = true;
                    let voters = members.iter().filter(|m| m.voter).count();
                    let healthy = members.iter().filter(|m| m.voter && m.healthy).count();
                    assert!(has_quorum(voters, healthy), "promotion without quorum: {members:?}");
                }
                Step::Remove { member } | Step::Replace { member } => {
                    if matches!(step, Step::Replace { .. }) {
                        let m = members
                            .iter()
                            .find(|m| m.name == *member)
                            .expect("replaced member exists");
                        assert!(!m.healthy && m.overdue, "replacing {member}, which is not failed");
                    }
                    let i = members
                        .iter()
                        .position(|m| m.name == *member)
                        .expect("removed member exists");
                    assert!(!members[i].leader, "removing the leader");
                    members.remove(i);
                    let voters = members.iter().filter(|m| m.voter).count();
                    let healthy = members.iter().filter(|m| m.voter && m.healthy).count();
                    assert!(has_quorum(voters, healthy), "removal lost quorum: {members:?}");
                }
                Step::Upgrade { .. } | Step::Defragment { .. } | Step::RecoverSpace | Step::Rebuild { .. } => {
                    panic!("the membership planner only changes membership")
                }
                Step::Wait { .. } | Step::Converged => {}
            }
        }

        /// The world moves on: a learner that was started by its agent catches up.
        fn tick(&mut self) {
            if let Some(l) = self.obs.members.iter_mut().find(|m| !m.voter) {
                l.started = true;
                l.healthy = true;
            }
        }
    }

    fn arb_member(i: usize) -> impl Strategy<Value = Member> {
        (any::<bool>(), any::<bool>(), any::<bool>()).prop_map(move |(voter, healthy, late)| Member {
            name: format!("x{i}"),
            node: format!("node-{i}"),
            voter,
            started: healthy,
            healthy,
            leader: false,
            overdue: !healthy && late,
        })
    }

    fn arb_observed() -> impl Strategy<Value = Observed> {
        (1usize..=7, 0usize..=6, 0usize..=9)
            .prop_flat_map(|(size, n_members, extra_nodes)| {
                let members: Vec<_> = (0..n_members).map(arb_member).collect();
                (
                    Just(size),
                    members,
                    Just(n_members + extra_nodes),
                    prop::collection::vec(any::<bool>(), 16),
                )
            })
            .prop_map(|(size, mut members, n_nodes, eligible)| {
                // At most one learner (etcd 3.4 allows no more), and one leader among healthy voters.
                let mut seen_learner = false;
                for m in &mut members {
                    if !m.voter && std::mem::replace(&mut seen_learner, true) {
                        m.voter = true;
                    }
                }
                if let Some(l) = members.iter_mut().find(|m| m.voter && m.healthy) {
                    l.leader = true;
                }
                let nodes = (0..n_nodes)
                    .map(|i| Node {
                        name: format!("node-{i}"),
                        eligible: i < members.len() || eligible[i % 16],
                    })
                    .collect();
                Observed {
                    size,
                    members,
                    nodes,
                    prefer_node: None,
                }
            })
    }

    proptest! {
        /// From any mix of members: never two changes in flight, never a step that loses quorum,
        /// never the leader removed (the model asserts these), and with quorum, healthy voters
        /// and enough eligible nodes, the membership converges to the spec.
        #[test]
        fn converges_safely_from_any_mix(start in arb_observed()) {
            let mut model = Model { next_id: 100, obs: start.clone() };
            let voters = start.members.iter().filter(|m| m.voter).count();
            let healthy = start.members.iter().filter(|m| m.voter && m.healthy).count();
            let eligible = start.nodes.iter().filter(|n| n.eligible).count();
            let all_healthy = healthy == voters;
            let can_converge = (start.members.is_empty() || has_quorum(voters, healthy))
                && (all_healthy || voters > start.size.max(1))
                && eligible >= start.size;
            let mut last = Step::Converged;
            for _ in 0..64 {
                last = next(&model.obs);
                model.apply(&last);
                model.tick();
                if last == Step::Converged {
                    break;
                }
            }
            if can_converge && all_healthy {
                prop_assert_eq!(&last, &Step::Converged, "from {:?}", start);
                let voters: Vec<_> = model.obs.members.iter().filter(|m| m.voter).collect();
                prop_assert_eq!(voters.len(), start.size.max(1));
                prop_assert!(model.obs.members.iter().all(|m| m.voter));
            }
            // Failed members past the timeout are replaced: with quorum and enough nodes, the
            // cluster converges with every voter healthy (the model never heals a member).
            let failed_all_overdue = start.members.iter().all(|m| m.healthy || m.overdue);
            let stays_quorate = start.members.is_empty() || has_quorum(voters, healthy);
            if stays_quorate && failed_all_overdue && eligible >= start.size {
                prop_assert_eq!(&last, &Step::Converged, "from {:?}", start);
                prop_assert!(model.obs.members.iter().all(|m| m.voter && m.healthy), "{:?}", model.obs);
            }
            if !start.members.is_empty() && !has_quorum(voters, healthy) {
                prop_assert!(matches!(next(&start), Step::Wait { .. }), "acted without quorum");
            }
        }
    }
}
