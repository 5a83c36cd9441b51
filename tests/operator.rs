//! The operator end to end: EtcdClusters applied to an API server, the controller in the lab's
//! LAN, agents on simulated hosts (played from the agent DaemonSet), real etcd under systemd.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use common::plane::*;
use common::*;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;
use runc_etcd_api::EtcdMember;
use runc_etcd_testkit::lab::netns;

/// The unit and state folder of cluster "main" on the hosts.
fn unit(p: &Plane) -> String {
    format!("runc-etcd@{}.service", p.instance("main"))
}
fn state(p: &Plane) -> String {
    format!("/var/lib/runc-etcd/{}", p.instance("main"))
}

fn unit_active(p: &Plane, n: u8) -> bool {
    p.lab
        .host(n)
        .exec(&["systemctl", "is-active", "--quiet", &unit(p)])
        .unwrap()
        .status
        .success()
}

/// Polls etcd's member list until stopped; returns the most learners ever seen at once.
struct Observer {
    stop: Arc<AtomicBool>,
    max_learners: Arc<AtomicUsize>,
    handle: std::thread::JoinHandle<()>,
}

impl Observer {
    fn start(p: &Plane, endpoints: Vec<String>) -> Observer {
        let stop = Arc::new(AtomicBool::new(false));
        let max_learners = Arc::new(AtomicUsize::new(0));
        let (flag, max) = (stop.clone(), max_learners.clone());
        let tls = p.client_tls("main");
        let handle = netns::spawn_in(&p.lab.client_ns(), move || async move {
            let mut c = connect(endpoints, tls).await;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(list) = c.member_list().await {
                    let learners = list.members().iter().filter(|m| m.is_learner()).count();
                    max.fetch_max(learners, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Observer {
            stop,
            max_learners,
            handle,
        }
    }

    fn stop(self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.join().unwrap();
        self.max_learners.load(Ordering::Relaxed)
    }
}

#[test]
fn a_cluster_is_created_resized_under_load_and_deleted() {
    let p = Plane::up(5);
    let image = p.lab.image(V_MID);
    p.apply(&cluster_yaml("main", 3, &image, "")).unwrap();
    // Watched as a user would with `kubectl get etcd -w`: a new cluster growing to its size is
    // Creating, its learners catching up included; never Degraded, nothing being wrong.
    let phases = std::sync::Mutex::new(Vec::<String>::new());
    let c = p.wait("main", "Available with 3 members", 180, |c| {
        let s = c.status.clone().unwrap_or_default();
        let phase = s.phase.map(|p| p.to_string()).unwrap_or_default();
        let mut seen = phases.lock().unwrap();
        if seen.last() != Some(&phase) {
            seen.push(phase);
        }
        s.ready_members == 3 && s.members.len() == 3 && condition(c, "Progressing") == Some("False")
    });
    let phases = phases.into_inner().unwrap();
    assert!(
        !phases.iter().any(|p| p == "Degraded"),
        "phases while created: {phases:?}"
    );

    // status.members: IDs, roles and versions, on three different nodes.
    let s = c.status.clone().unwrap();
    let nodes: std::collections::BTreeSet<_> = s.members.iter().map(|m| m.node.clone()).collect();
    assert_eq!(nodes.len(), 3, "{:?}", s.members);
    assert!(s.members.iter().all(|m| m.member_id.is_some() && m.healthy));
    assert!(s.members.iter().all(|m| m.version.as_deref() == Some(V_MID)));
    let roles: Vec<_> = s.members.iter().filter_map(|m| m.role).collect();
    assert_eq!(roles.iter().filter(|r| *r == "leader").count(), 1, "{roles:?}");
    assert_eq!(roles.iter().filter(|r| *r == "follower").count(), 2, "{roles:?}");
    assert_eq!(s.current_version.as_deref(), Some(V_MID));
    assert_eq!(s.phase.as_deref(), Some("Running"));
    // Each member's agent reports it Running (its own poll, so eventually) and renews a
    // heartbeat Lease named after it.
    let members: Api<EtcdMember> = Api::namespaced(p.cp.client.clone(), p.ns());
    let leases: Api<Lease> = Api::namespaced(p.cp.client.clone(), p.ns());
    eventually("every agent reports its member Running", 30, || {
        p.rt.block_on(members.list(&Default::default()))
            .unwrap()
            .items
            .iter()
            .all(|m| {
                let status = m.status.clone().unwrap_or_default();
                status.phase.as_deref() == Some("Running") && status.member_id.is_some()
            })
    });
    p.rt.block_on(async {
        for m in members.list(&Default::default()).await.unwrap().items {
            let name = m.metadata.name.clone().unwrap();
            let lease = leases.get(&name).await.expect("a heartbeat lease per member");
            let holder = lease.spec.unwrap().holder_identity;
            assert_eq!(holder.as_deref(), Some(m.spec.node_name.as_str()));
        }
    });

    // The operator's and an agent's /metrics say what status says; both are healthy and ready.
    let operator = format!("{}:8080", p.lab.net.gateway());
    let (code, metrics) = p.http_get(&operator, "/metrics");
    assert_eq!(code, 200);
    for line in [
        format!(
            r#"runc_etcd_cluster_members_healthy{{namespace="{}",cluster="main"}} 3"#,
            p.ns()
        ),
        format!(
            r#"runc_etcd_cluster_upgrade_members_done{{namespace="{}",cluster="main"}} 3"#,
            p.ns()
        ),
        "runc_etcd_operator_leader 1".into(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
    assert!(metrics.contains(r#"runc_etcd_reconciles_total{controller="cluster",kind="ok"}"#));
    let leaders = metrics
        .lines()
        .filter(|l| l.starts_with("runc_etcd_member_role{") && l.contains(r#"role="leader""#) && l.ends_with(" 1"))
        .count();
    assert_eq!(leaders, 1, "{metrics}");
    let node = &s.members[0].node;
    let h = (1..=5u8).find(|n| p.cp.node_name(p.lab.host(*n)) == *node).unwrap();
    let agent = format!("{}:2382", p.lab.host(h).ip());
    let (code, metrics) = p.http_get(&agent, "/metrics");
    assert_eq!(code, 200);
    let running = format!(
        r#"runc_etcd_agent_member_running{{namespace="{}",cluster="main",member="{}"}} 1"#,
        p.ns(),
        s.members[0].name
    );
    assert!(metrics.lines().any(|l| l == running), "{running} not in\n{metrics}");
    for addr in [&operator, &agent] {
        assert_eq!(p.http_get(addr, "/healthz"), (200, "ok".into()));
        assert_eq!(p.http_get(addr, "/readyz"), (200, "ready".into()));
    }

    // The agents put each member's certificates on its host, keys readable by root only.
    for n in 1..=5u8 {
        let pki = p.lab.host(n).path(&format!("{}/pki", state(&p)));
        if !pki.exists() {
            continue;
        }
        for key in ["pki/server.key", "pki/peer.key", "client/client.key"] {
            let meta = std::fs::metadata(p.lab.host(n).path(&format!("{}/{key}", state(&p)))).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "h{n} {key}");
        }
        assert!(
            !p.lab.host(n).path(&format!("{}/ca", state(&p))).exists(),
            "h{n}: the CA key stays in its Secret"
        );
    }

    // A client that finds the members through the Service's endpoints, with the client
    // certificate from the cluster's Secret, reads and writes.
    let endpoints = p.service_endpoints("main", "https");
    assert_eq!(endpoints.len(), 3, "{endpoints:?}");
    let tls = p.client_tls("main");
    let got = netns::run_in(&p.lab.client_ns(), {
        let (endpoints, tls) = (endpoints.clone(), tls.clone());
        move || async move {
            let mut c = connect(endpoints, tls).await;
            c.put("hello", "world", None).await.expect("put");
            let r = c.get("hello", None).await.expect("get");
            r.kvs()[0].value_str().unwrap().to_string()
        }
    });
    assert_eq!(got, "world");

    // Resize 3 → 5 → 3 under a writer: nothing acknowledged is lost, one change at a time.
    let writer = Writer::start_with(&p.lab, endpoints.clone(), tls.clone());
    let observer = Observer::start(&p, endpoints.clone());
    p.apply(&cluster_yaml("main", 5, &image, "")).unwrap();
    p.wait_ready("main", 5, 240);
    p.apply(&cluster_yaml("main", 3, &image, "")).unwrap();
    let c = p.wait_ready("main", 3, 240);
    let max_learners = observer.stop();
    let acked = writer.stop();
    assert!(acked.len() > 50, "the writer made progress: {}", acked.len());
    assert!(max_learners <= 1, "{max_learners} learners at once");
    assert_no_write_lost(&p, &c, &acked);
    let reasons = p.event_reasons("main");
    for r in ["AddLearnerSucceeded", "PromoteMemberSucceeded", "RemoveMemberSucceeded"] {
        assert!(reasons.iter().any(|x| x == r), "no {r} event in {reasons:?}");
    }
    // The operator's metrics forget the members that left.
    let (_, metrics) = p.http_get(&format!("{}:8080", p.lab.net.gateway()), "/metrics");
    let healthy = metrics
        .lines()
        .filter(|l| l.starts_with("runc_etcd_member_healthy{"))
        .count();
    assert_eq!(healthy, 3, "{metrics}");
    // Removed members were stopped and archived on their hosts.
    let running: Vec<u8> = (1..=5).filter(|n| unit_active(&p, *n)).collect();
    assert_eq!(running.len(), 3, "units active on {running:?}");

    // Delete: units gone everywhere, data archived, nothing left behind.
    p.delete("main");
    eventually("the cluster to be deleted", 120, || p.get("main").is_none());
    for n in 1..=5 {
        assert!(!unit_active(&p, n), "h{n} still runs {}", unit(&p));
        let h = p.lab.host(n);
        assert!(
            !h.path(&format!("{}/member.json", state(&p))).exists(),
            "h{n} still has a member record"
        );
    }
    let archived: usize = (1..=5)
        .filter(|n| {
            std::fs::read_dir(p.lab.host(*n).path(&format!("{}/archive", state(&p))))
                .map(|d| d.flatten().any(|e| e.path().join("data/member").is_dir()))
                .unwrap_or(false)
        })
        .count();
    assert_eq!(archived, 5, "every host that ran a member keeps its data in archive/");
    assert!(p.owned::<EtcdMember>("main").is_empty());
    assert!(p.owned::<Secret>("main").is_empty());
    assert!(p.owned::<Service>("main").is_empty());
    assert!(p.owned::<DaemonSet>("main").is_empty());
}

/// (id, is_learner, started) of every member, through `endpoints`.
fn member_list(p: &Plane, endpoints: Vec<String>) -> Vec<(u64, bool, bool)> {
    let tls = p.client_tls("main");
    netns::run_in(&p.lab.client_ns(), move || async move {
        let mut c = connect(endpoints, tls).await;
        let list = c.member_list().await.expect("member list");
        list.members()
            .iter()
            .map(|m| (m.id(), m.is_learner(), !m.name().is_empty()))
            .collect()
    })
}

#[test]
fn a_new_leader_finishes_the_scale_up_its_predecessor_died_in() {
    // Operator 0 dies right after etcd registered a learner, before anything else happened.
    if !cfg!(feature = "failpoints") {
        panic!(
            "this test needs the operator's failpoints: cargo nextest run --features runc-etcd/failpoints (as .ci/run does)"
        );
    }
    let mut p = Plane::up_with(3, &[("RUNC_ETCD_FAILPOINT", "after-add-learner")]);
    let image = p.lab.image(V_MID);
    p.apply(&cluster_yaml("main", 1, &image, "")).unwrap();
    let c = p.wait_ready("main", 1, 120);
    let seed = c.status.unwrap().client_endpoints;
    p.apply(&cluster_yaml("main", 2, &image, "")).unwrap();
    eventually("operator 0 to die at the failpoint", 60, || {
        p.cp.operator_exit(0).is_some()
    });
    assert_eq!(p.cp.operator_exit(0), Some(86), "{}", p.cp.operator_log(0));

    // Mid-change: a learner registered in etcd but never started; the change is in status.
    let before = member_list(&p, seed.clone());
    let learners: Vec<_> = before.iter().filter(|m| m.1).collect();
    assert_eq!(learners.len(), 1, "{before:?}");
    assert!(!learners[0].2, "the learner has not started: {before:?}");
    let op = p.get("main").unwrap().status.unwrap().last_operation.unwrap();
    assert_eq!((op.kind.as_str(), op.state.as_str()), ("AddLearner", "InProgress"));

    // A new operator takes the lease once it expires and finishes that same change.
    p.cp.start_operator(&[]).unwrap();
    let c = p.wait_ready("main", 2, 180);
    let after = member_list(&p, c.status.clone().unwrap().client_endpoints);
    assert_eq!(after.len(), 2, "no second learner was added: {after:?}");
    assert!(after.iter().all(|m| !m.1 && m.2), "{after:?}");
    assert!(
        after.iter().any(|m| m.0 == learners[0].0),
        "the same learner was promoted"
    );
    let op = c.status.clone().unwrap().last_operation.unwrap();
    assert_eq!(op.state, "Succeeded", "{op:?}");
    assert!(p.cp.operator_log(1).contains("leading as operator-1"));

    // Kill the leader with SIGKILL at arbitrary moments of the next scale-up, three times: each
    // successor resumes from status, and the change still goes one learner at a time.
    let observer = Observer::start(&p, c.status.clone().unwrap().client_endpoints);
    p.apply(&cluster_yaml("main", 3, &image, "")).unwrap();
    let mut leader = 1;
    for pause_ms in [1500, 2300, 3100] {
        std::thread::sleep(Duration::from_millis(pause_ms));
        p.cp.kill_operator(leader);
        leader = p.cp.start_operator(&[]).unwrap();
    }
    let c = p.wait_ready("main", 3, 240);
    assert!(observer.stop() <= 1, "more than one learner at once");
    let after = member_list(&p, c.status.unwrap().client_endpoints);
    assert_eq!(after.len(), 3, "{after:?}");
    assert!(after.iter().all(|m| !m.1 && m.2), "{after:?}");
}

#[test]
fn bad_specs_are_refused_and_impossible_ones_reported() {
    let p = Plane::up(3);
    let image = p.lab.image(V_MID);
    // Refused by the API server at apply, with a message that names the field; nothing created.
    for (spec, says) in [
        (cluster_yaml("bad", 0, &image, ""), "spec.size"),
        (
            cluster_yaml("bad", 3, &image, "").replace("version: 3.5.16", "version: latest"),
            "spec.version",
        ),
        (
            cluster_yaml("bad", 3, &image, "  ports: {client: 2379, peer: 2379}\n"),
            "must all differ",
        ),
    ] {
        let err = p.apply(&spec).expect_err("refused");
        let msg = match err {
            kube::Error::Api(e) => {
                assert_eq!(e.code, 422, "{e:?}");
                e.message
            }
            other => panic!("not an API refusal: {other}"),
        };
        assert!(msg.contains(says), "{msg:?} does not mention {says}");
        assert!(p.get("bad").is_none());
    }

    // A permission taken from the operator (its rule on Services, which every cluster enforces)
    // is said in the status; once it is back, the cluster goes on by itself.
    let roles: Api<ClusterRole> = Api::all(p.cp.client.clone());
    let role = format!("{}-operator", runc_etcd_testkit::lab::release(p.lab.id));
    let granted = p.rt.block_on(roles.get(&role)).unwrap();
    let mut taken = granted.clone();
    taken.metadata.managed_fields = None;
    if let Some(rules) = taken.rules.as_mut() {
        rules.retain(|r| r.resources.as_ref().is_none_or(|x| x != &["services"]));
    }
    p.rt.block_on(roles.replace(&role, &Default::default(), &taken))
        .unwrap();

    // Valid but impossible: 3 members wanted, 2 eligible nodes. Reported, nothing torn down.
    p.label_node(1, &[("etcd", "yes")]);
    p.label_node(2, &[("etcd", "yes")]);
    p.apply(&cluster_yaml("main", 3, &image, "  nodeSelector: {etcd: \"yes\"}\n"))
        .unwrap();
    let c = p.wait("main", "refused a permission", 60, |c| {
        c.status.as_ref().is_some_and(|s| {
            s.conditions
                .iter()
                .any(|x| x.type_ == "Degraded" && x.reason == "OperatorForbidden")
        })
    });
    let says = &c.status.unwrap().conditions;
    assert!(
        says.iter()
            .any(|x| x.message.contains("resource \"services\"") && x.message.contains("Fix: grant it")),
        "{says:?}"
    );
    let mut back = p.rt.block_on(roles.get(&role)).unwrap();
    back.rules = granted.rules;
    p.rt.block_on(roles.replace(&role, &Default::default(), &back)).unwrap();
    let c = p.wait("main", "short of nodes", 180, |c| {
        let s = c.status.clone().unwrap_or_default();
        s.ready_members == 2
            && s.conditions
                .iter()
                .any(|x| x.type_ == "Degraded" && x.status == "True" && x.reason == "InsufficientNodes")
    });
    let s = c.status.unwrap();
    assert_eq!(condition_of(&s, "Available"), "True");
    assert!(
        s.conditions
            .iter()
            .any(|x| x.message.contains("fewer eligible nodes than size")),
        "{:?}",
        s.conditions
    );
    eventually("an InsufficientNodes event", 30, || {
        p.event_reasons("main").iter().any(|r| r == "InsufficientNodes")
    });
    assert!(unit_active(&p, 1) && unit_active(&p, 2) && !unit_active(&p, 3));

    // A third node becomes eligible: the cluster grows to its size by itself.
    p.label_node(3, &[("etcd", "yes")]);
    p.wait_ready("main", 3, 180);
    assert!(unit_active(&p, 3));

    // The selector is dropped from the spec: server-side apply removes it from the cluster (the
    // user's field) and from the agent DaemonSet (the operator's), which a merge patch would keep.
    let without = p
        .apply(&cluster_yaml("main", 3, &image, ""))
        .expect("the spec without a selector applies");
    assert!(
        without.spec.node_selector.is_empty(),
        "{:?}",
        without.spec.node_selector
    );
    let sets: Api<DaemonSet> = Api::namespaced(p.cp.client.clone(), p.ns());
    eventually("the agent DaemonSet without a node selector", 60, || {
        let ds = p.rt.block_on(sets.list(&Default::default())).unwrap().items;
        ds.len() == 1
            && ds[0]
                .spec
                .as_ref()
                .and_then(|s| s.template.spec.as_ref())
                .is_some_and(|t| t.node_selector.as_ref().is_none_or(|s| s.is_empty()))
    });
}

fn condition_of<'a>(s: &'a runc_etcd_api::EtcdClusterStatus, type_: &str) -> &'a str {
    s.conditions
        .iter()
        .find(|c| c.type_ == type_)
        .map(|c| c.status.as_str())
        .unwrap_or("")
}

/// `kubectl <args>` against the control plane (the kubeconfig a person would export).
fn kubectl(p: &Plane, args: &[&str], stdin: Option<&str>) -> std::process::Output {
    use std::io::Write;
    let mut child = std::process::Command::new("kubectl")
        .args(args)
        .env("KUBECONFIG", &p.cp.local_kubeconfig)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("kubectl runs (scripts/setup.sh installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or("").as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn kubectl_applies_lists_and_deletes_etcdclusters() {
    let p = Plane::up(1);
    // `kubectl get -w`, started before the cluster exists, prints each change as a row.
    let watcher = std::process::Command::new("kubectl")
        .args(["get", "etcdclusters", "-w", "--no-headers"])
        .env("KUBECONFIG", &p.cp.local_kubeconfig)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Plain HTTP, as the spec asks: no TLS Secrets, http:// endpoints.
    let yaml = cluster_yaml("main", 1, &p.lab.image(V_MID), "  tls: {enabled: false}\n");
    let out = kubectl(&p, &["apply", "-f", "-"], Some(&yaml));
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("etcdcluster.runc-etcd.io/main created"));

    // `kubectl get` prints the printer columns: NAME SIZE READY VERSION PHASE AGE.
    eventually("kubectl get to show the cluster running", 120, || {
        let out = kubectl(&p, &["get", "etcd", "main", "--no-headers"], None);
        let line = String::from_utf8_lossy(&out.stdout).to_string();
        let cols: Vec<&str> = line.split_whitespace().collect();
        cols.get(..5) == Some(&["main", "1", "1", V_MID, "Running"][..])
    });
    let mut watcher = watcher;
    let _ = watcher.kill();
    let watched = String::from_utf8_lossy(&watcher.wait_with_output().unwrap().stdout).to_string();
    assert!(
        watched
            .lines()
            .any(|l| l.split_whitespace().take(5).eq(["main", "1", "1", V_MID, "Running"])),
        "kubectl get -w printed:\n{watched}"
    );
    let endpoints = p.service_endpoints("main", "http");
    let value = netns::run_in(&p.lab.client_ns(), move || async move {
        let mut c = connect(endpoints, None).await;
        c.put("k", "plain", None).await.expect("put over http");
        c.get("k", None).await.expect("get").kvs()[0]
            .value_str()
            .unwrap()
            .to_string()
    });
    assert_eq!(value, "plain");
    assert!(
        p.owned::<Secret>("main").is_empty(),
        "no TLS Secrets for a plain cluster"
    );
    let out = kubectl(&p, &["get", "etcdclusters"], None);
    let header = String::from_utf8_lossy(&out.stdout)
        .lines()
        .next()
        .unwrap_or("")
        .to_string();
    assert_eq!(
        header.split_whitespace().collect::<Vec<_>>(),
        ["NAME", "SIZE", "READY", "VERSION", "PHASE", "AGE"]
    );

    // The agents run as their ServiceAccount, with the chart's RBAC: its token (as `kubectl
    // create token` gives it) reads the members, and is refused the cluster's Secrets and Nodes.
    let out = kubectl(&p, &["create", "token", "runc-etcd-agent"], None);
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let agent = p.client_with_token(&token);
    let members: Api<EtcdMember> = Api::namespaced(agent.clone(), p.ns());
    assert!(
        !p.rt
            .block_on(members.list(&Default::default()))
            .unwrap()
            .items
            .is_empty()
    );
    let who = format!("system:serviceaccount:{}:runc-etcd-agent", p.ns());
    let secrets: Api<Secret> = Api::namespaced(agent.clone(), p.ns());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(agent);
    for (refused, refusal) in [
        (
            p.rt.block_on(secrets.list(&Default::default())).map(drop),
            format!(
                "secrets is forbidden: User \"{who}\" cannot list resource \"secrets\" in API group \"\" in the namespace \"{}\"",
                p.ns()
            ),
        ),
        (
            p.rt.block_on(nodes.list(&Default::default())).map(drop),
            format!(
                "nodes is forbidden: User \"{who}\" cannot list resource \"nodes\" in API group \"\" at the cluster scope"
            ),
        ),
    ] {
        match refused {
            Err(kube::Error::Api(e)) => assert_eq!((e.code, e.message), (403, refusal)),
            other => panic!("expected a 403, got {other:?}"),
        }
    }

    // What a newcomer reaches for: `describe` shows the Events the operator recorded (it writes
    // events.k8s.io Events; kubectl reads core ones), `get events` lists them, `explain` knows
    // every field, and `auth can-i` answers from RBAC, impersonating the agent.
    let reasons = p.event_reasons("main");
    assert!(!reasons.is_empty());
    let described =
        String::from_utf8_lossy(&kubectl(&p, &["describe", "etcdcluster", "main"], None).stdout).to_string();
    let events_part = described.split("Events:").nth(1).unwrap_or_default();
    assert!(
        reasons.iter().all(|r| events_part.contains(r.as_str())),
        "describe shows {reasons:?}:\n{described}"
    );
    let out = kubectl(
        &p,
        &[
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=main",
            "-o",
            "custom-columns=R:.reason,M:.message",
            "--no-headers",
        ],
        None,
    );
    let listed = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(reasons.iter().all(|r| listed.contains(r.as_str())), "{}", text(&out));
    let out = kubectl(&p, &["explain", "etcdcluster.spec.tls.certificateValidity"], None);
    let explained = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success() && explained.contains("FIELD: certificateValidity"),
        "{}",
        text(&out)
    );
    let agent = format!("system:serviceaccount:{}:runc-etcd-agent", p.ns());
    for (question, answer) in [
        (&["list", "etcdmembers.runc-etcd.io"][..], "yes"),
        (&["patch", "etcdmembers.runc-etcd.io"][..], "no"),
        (&["get", "secrets/main-ca"][..], "no"),
        (&["list", "nodes"][..], "no"),
    ] {
        let out = kubectl(
            &p,
            &[&["auth", "can-i"][..], question, &["--as", &agent]].concat(),
            None,
        );
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            answer,
            "can-i {question:?}: {}",
            text(&out)
        );
    }

    // A bad spec is refused with the API server's message, and changes nothing.
    let out = kubectl(&p, &["apply", "-f", "-"], Some(&yaml.replace("size: 1", "size: 10")));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.size") && err.contains("less than or equal to 9"),
        "{err}"
    );
    assert_eq!(p.get("main").unwrap().spec.size, 1);

    // `kubectl delete` returns once the finalizer ran: the member is retired, nothing is left.
    let out = kubectl(&p, &["delete", "etcdcluster", "main", "--timeout=120s"], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(p.get("main").is_none());
    assert!(!unit_active(&p, 1));
    let out = kubectl(&p, &["get", "etcdmembers", "-o", "name"], None);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "");
}

fn follower_nodes(c: &runc_etcd_api::EtcdCluster) -> Vec<String> {
    let s = c.status.clone().unwrap();
    s.members
        .iter()
        .filter(|m| m.role.as_deref() == Some("follower"))
        .map(|m| m.node.clone())
        .collect()
}

fn read_key(p: &Plane, c: &runc_etcd_api::EtcdCluster, key: &str) -> Option<String> {
    let (endpoints, tls, key) = (
        c.status.clone().unwrap().client_endpoints,
        p.client_tls("main"),
        key.to_string(),
    );
    netns::run_in(&p.lab.client_ns(), move || async move {
        let mut client = connect(endpoints, tls).await;
        let r = client.get(key, None).await.expect("get");
        r.kvs().first().map(|kv| kv.value_str().unwrap().to_string())
    })
}

fn members_on(c: &runc_etcd_api::EtcdCluster) -> Vec<(String, String)> {
    let s = c.status.clone().unwrap();
    s.members.iter().map(|m| (m.name.clone(), m.node.clone())).collect()
}

#[test]
fn failed_members_are_replaced_on_their_node_or_another() {
    let p = Plane::up(4);
    let image = p.lab.image(V_MID);
    let spec = cluster_yaml(
        "main",
        3,
        &image,
        "  recovery: {memberUnhealthyTimeout: 10s, keepArchives: 2}\n",
    );
    p.apply(&spec).unwrap();
    let c = p.wait_ready("main", 3, 180);
    let endpoints = c.status.clone().unwrap().client_endpoints;
    let tls = p.client_tls("main");
    netns::run_in(&p.lab.client_ns(), move || async move {
        connect(endpoints, tls)
            .await
            .put("before", "failures", None)
            .await
            .expect("put");
    });

    // 1. A member whose etcd crash-loops (its database destroyed) on a healthy node: replaced on
    //    the same node, its broken data archived there.
    let node = follower_nodes(&c)[0].clone();
    let (old_name, _) = members_on(&c).into_iter().find(|(_, n)| *n == node).unwrap();
    let h = p.lab.host(host_of(&p, &node));
    // Two archives of earlier replacements on that node, and a folder the engine did not make.
    let archive = h.path(&format!("{}/archive", state(&p)));
    let (oldest, older) = ("2020-01-01T00-00-00Z-replaced", "2020-01-02T00-00-00Z-replaced");
    for old in [oldest, older, "notes"] {
        std::fs::create_dir_all(archive.join(old).join("data")).unwrap();
        std::fs::write(archive.join(old).join("data/db"), vec![7u8; 4096]).unwrap();
    }
    h.check(&[
        "sh",
        "-c",
        &format!(
            "systemctl kill -s KILL {}; echo garbage > {}/data/member/snap/db",
            unit(&p),
            state(&p)
        ),
    ])
    .unwrap();
    let c = p.wait("main", "the broken member replaced on its node", 240, |c| {
        let on = members_on(c);
        available_with(c, 3) && on.iter().any(|(n, at)| *at == node && *n != old_name)
    });
    assert!(!members_on(&c).iter().any(|(n, _)| *n == old_name));
    assert_eq!(read_key(&p, &c, "before").as_deref(), Some("failures"));
    assert!(p.event_reasons("main").iter().any(|r| r == "ReplaceMemberSucceeded"));

    // Three archives now, two kept (keepArchives): the oldest goes, named in an Event; the
    // broken data (the newest) stays, and so does what the engine did not make.
    eventually("the oldest archive to be deleted", 90, || {
        !archive.join(oldest).exists()
    });
    let left: Vec<String> = std::fs::read_dir(&archive)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        archive.join(older).exists() && archive.join("notes").exists(),
        "{left:?}"
    );
    let kept = std::fs::read_dir(&archive)
        .unwrap()
        .flatten()
        .any(|e| std::fs::read(e.path().join("data/member/snap/db")).is_ok_and(|db| db == b"garbage\n"));
    assert!(kept, "the broken data is archived on its host, not deleted");
    let deleted: Vec<String> = p
        .events("main")
        .into_iter()
        .filter(|(reason, _)| reason == "ArchiveDeleted")
        .map(|(_, note)| note)
        .collect();
    assert_eq!(deleted.len(), 1, "{deleted:?}");
    assert!(deleted[0].contains(oldest) && deleted[0].contains(&node), "{deleted:?}");
    let (_, metrics) = p.http_get(&format!("{}:2382", h.ip()), "/metrics");
    let labels = format!(r#"{{namespace="{}",cluster="main",node="{node}"}}"#, p.ns());
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("runc_etcd_agent_archives{labels} 2")),
        "{metrics}"
    );
    let bytes: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("runc_etcd_agent_archive_bytes{labels} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no archive bytes in\n{metrics}"));
    assert!(bytes > 4096, "the older archive and the broken member's data: {bytes}");

    // 2. A member whose host is lost (power cut, Node NotReady): replaced on the spare node.
    let lost_node = follower_nodes(&c)[0].clone();
    let lost = p.lab.host(host_of(&p, &lost_node));
    lost.power_off(false);
    p.rt.block_on(p.cp.set_node_ready(lost, false)).unwrap();
    let c = p.wait("main", "the lost member replaced elsewhere", 240, |c| {
        available_with(c, 3) && !members_on(c).iter().any(|(_, at)| *at == lost_node)
    });
    assert_eq!(read_key(&p, &c, "before").as_deref(), Some("failures"));
    assert!(p.event_reasons("main").iter().any(|r| r == "MemberHostLost"));

    // The lost host comes back: its agent finds a member nobody wants and archives it.
    lost.boot(true).unwrap();
    p.rt.block_on(p.cp.set_node_ready(lost, true)).unwrap();
    eventually("the returned host's stale member to be archived", 120, || {
        !lost.path(&format!("{}/member.json", state(&p))).exists()
    });
    assert!(!unit_active(&p, host_of(&p, &lost_node)));
    let c = p.wait_ready("main", 3, 60);
    assert!(
        !members_on(&c).iter().any(|(_, at)| *at == lost_node),
        "the cluster stays as it was"
    );
}

/// The cluster spec at etcd `version` (its lab image).
fn at_version(p: &Plane, version: &str) -> String {
    cluster_yaml("main", 3, &p.lab.image(version), "")
        .replace(&format!("version: {V_MID}"), &format!("version: {version}"))
}

#[test]
fn rolling_upgrades_and_settings_go_member_by_member_and_a_downgrade_is_refused() {
    let p = Plane::up(3);
    p.apply(&at_version(&p, V_OLD)).unwrap();
    let c = p.wait_ready("main", 3, 180);
    assert_eq!(c.status.clone().unwrap().current_version.as_deref(), Some(V_OLD));

    // 3.4 → 3.6 skips a minor version: refused in status, nothing touched.
    p.apply(&at_version(&p, "3.6.0")).unwrap();
    p.wait("main", "the skip refused", 60, |c| {
        degraded_by(c, "UnsupportedUpgrade", "3.6.0")
    });

    let mut acked = vec![];
    // 3.4.23 → 3.5.16 → 3.5.30, each under writes; a backup before each.
    for version in [V_MID, V_NEW] {
        let c = p.get("main").unwrap();
        let s = c.status.clone().unwrap();
        let leader = s
            .members
            .iter()
            .find(|m| m.role.as_deref() == Some("leader"))
            .unwrap()
            .name
            .clone();
        let writer = Writer::start_with(&p.lab, s.client_endpoints.clone(), p.client_tls("main"));
        p.apply(&at_version(&p, version)).unwrap();
        let c = p.wait("main", &format!("upgraded to {version}"), 300, |c| {
            let s = c.status.clone().unwrap_or_default();
            available_with(c, 3)
                && s.current_version.as_deref() == Some(version)
                && s.members.iter().all(|m| m.version.as_deref() == Some(version))
                && condition(c, "Progressing") == Some("False")
        });
        // The leader went last.
        let last = c.status.clone().unwrap().last_operation.unwrap();
        assert_eq!(
            (last.kind.as_str(), last.member.as_deref()),
            ("UpgradeMember", Some(leader.as_str()))
        );
        let mut more = writer.stop();
        assert!(more.len() > 20, "the writer made progress: {}", more.len());
        acked.append(&mut more);
        assert_no_write_lost(&p, &c, &acked);
    }
    assert!(
        p.event_count("main", "BackupBeforeChange") >= 2,
        "a backup before each upgrade"
    );
    let new = at_version(&p, V_NEW);

    // One member at a time, an Event for each.
    assert_eq!(p.event_count("main", "UpgradeMemberStarted"), 6);
    assert_eq!(p.event_count("main", "UpgradeMemberSucceeded"), 6);
    // Each host keeps the previous image unpacked for a rollback.
    for n in 1..=3 {
        let images = std::fs::read_dir(p.lab.host(n).path("/var/lib/runc-etcd/images"))
            .unwrap()
            .count();
        assert_eq!(images, 2, "h{n} keeps the old and the new image");
    }

    // New etcd settings roll through the members the same way: one restart at a time.
    let tuned = new.clone() + "  etcd: {heartbeatIntervalMs: 150, electionTimeoutMs: 1500, snapshotCount: 5000}\n";
    p.apply(&tuned).unwrap();
    eventually("every member restarted with the new settings", 240, || {
        (1..=3).all(|n| {
            std::fs::read_to_string(p.lab.host(n).path(&format!("{}/etcd.conf.yml", state(&p))))
                .is_ok_and(|conf| conf.contains("heartbeat-interval: 150") && conf.contains("snapshot-count: 5000"))
        })
    });
    p.wait("main", "converged with the new settings", 120, |c| {
        available_with(c, 3) && condition(c, "Progressing") == Some("False")
    });
    let moves = p.event_count("main", "UpgradeMemberSucceeded");
    assert_eq!(moves, 9, "six image moves, then three settings moves");

    // 3.5 → 3.4 is a downgrade across minor versions: refused, reported, nothing touched.
    p.apply(&at_version(&p, V_OLD)).unwrap();
    let c = p.wait("main", "the downgrade refused", 60, |c| {
        degraded_by(c, "UnsupportedUpgrade", "downgrade")
    });
    assert_eq!(c.status.unwrap().current_version.as_deref(), Some(V_NEW));
    let members: Api<EtcdMember> = Api::namespaced(p.cp.client.clone(), p.ns());
    let images: Vec<String> =
        p.rt.block_on(members.list(&Default::default()))
            .unwrap()
            .items
            .into_iter()
            .map(|m| m.spec.image)
            .collect();
    assert!(images.iter().all(|i| *i == p.lab.image(V_NEW)), "{images:?}");
    assert!(p.event_reasons("main").iter().any(|r| r == "UnsupportedUpgrade"));
}

#[test]
fn fragmented_and_full_databases_are_recovered() {
    let p = Plane::up(3);
    let extra = "  etcd: {quotaBackendBytes: 134217728}\n  maintenance: {defragThresholdPercent: 50, defragMinBytes: 1048576}\n";
    p.apply(&cluster_yaml("main", 3, &p.lab.image(V_MID), extra)).unwrap();
    let c = p.wait_ready("main", 3, 180);
    let (endpoints, tls) = (c.status.clone().unwrap().client_endpoints, p.client_tls("main"));
    let mib = "x".repeat(1 << 20);

    // 40 MiB written, deleted and compacted away: the files are mostly free pages, and each
    // member is defragmented in turn.
    netns::run_in(&p.lab.client_ns(), {
        let (endpoints, tls, mib) = (endpoints.clone(), tls.clone(), mib.clone());
        move || async move {
            let mut c = connect(endpoints, tls).await;
            for i in 0..40 {
                c.put(format!("frag/{i}"), mib.clone(), None).await.expect("put");
            }
            let del = c
                .delete("frag/", Some(etcd_client::DeleteOptions::new().with_prefix()))
                .await
                .expect("delete");
            let rev = del.header().unwrap().revision();
            c.compact(rev, Some(etcd_client::CompactionOptions::new().with_physical()))
                .await
                .expect("compact");
            // bbolt counts the freed pages as free only after later write transactions.
            for i in 0..5 {
                c.put("poke", i.to_string(), None).await.expect("put");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    });
    p.wait("main", "every member defragmented", 120, |_| {
        p.event_count("main", "DefragmentMemberSucceeded") >= 3
    });
    p.wait("main", "small databases", 60, |c| {
        let s = c.status.clone().unwrap_or_default();
        available_with(c, 3) && s.members.iter().all(|m| m.db_size_bytes.is_some_and(|b| b < 20 << 20))
    });

    // Overwriting one key until the 128 MiB quota is reached: etcd raises NOSPACE and refuses
    // writes; the operator compacts, defragments and disarms, and writes work again.
    let (last, refused) = netns::run_in(&p.lab.client_ns(), {
        let (endpoints, tls, mib) = (endpoints.clone(), tls.clone(), mib.clone());
        move || async move {
            let mut c = connect(endpoints, tls).await;
            let mut last = 0;
            for i in 1..400 {
                match c.put("big", format!("{i}:{mib}"), None).await {
                    Ok(_) => last = i,
                    Err(e) => return (last, e.to_string()),
                }
            }
            (last, String::new())
        }
    });
    assert!(refused.contains("space exceeded"), "the quota was reached: {refused:?}");
    let back = netns::run_in(&p.lab.client_ns(), {
        let (endpoints, tls) = (endpoints.clone(), tls.clone());
        move || async move {
            let mut c = connect(endpoints, tls).await;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            loop {
                if c.put("after", "recovered", None).await.is_ok() {
                    let v = c.get("big", None).await.expect("get");
                    return v.kvs()[0].value_str().unwrap().split(':').next().unwrap().to_string();
                }
                assert!(std::time::Instant::now() < deadline, "writes still refused after 120s");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    // The write refused with NOSPACE may still have been applied: etcd applies a put that
    // crosses the quota and only then answers "database space exceeded". So the value is the
    // last acknowledged one, or that refused one; never an older one.
    assert!(
        [last.to_string(), (last + 1).to_string()].contains(&back),
        "the last acknowledged value ({last}) survived: got {back}"
    );
    // The Event comes with the pass's report, just after the alarm is disarmed (and writes are
    // taken again): a moment later than the writer may look.
    eventually("a RecoverSpaceSucceeded event", 30, || {
        p.event_count("main", "RecoverSpaceSucceeded") >= 1
    });
    p.wait("main", "healthy again", 60, |c| {
        available_with(c, 3) && condition(c, "Degraded") == Some("False")
    });
}

/// Issue 12, item 7: a member whose unpacked image is gone from its host (removed by hand, or by
/// a collection that raced a pull) is pulled again by its agent, by the digest its record pins,
/// and runs again. Before, the unit failed to start forever: nothing pulled it again.
#[test]
fn a_member_whose_image_is_gone_pulls_it_again() {
    use common::hazard::*;
    let p = Plane::up(3);
    let (_, w) = settled_under_writes(&p);
    let h = p.lab.host(1);
    let record: runc_etcd_host::member::MemberRecord = serde_json::from_slice(
        &std::fs::read(h.path(&format!("/var/lib/runc-etcd/{}/member.json", p.instance("main")))).unwrap(),
    )
    .unwrap();
    let image = h.path(&format!(
        "/var/lib/runc-etcd/images/{}",
        record.image.digest.trim_start_matches("sha256:")
    ));
    assert!(image.join("rootfs").is_dir());
    std::fs::remove_dir_all(&image).unwrap();
    let unit = format!("runc-etcd@{}.service", p.instance("main"));
    h.check(&["systemctl", "kill", "--signal=SIGKILL", &unit]).unwrap();
    eventually("the image pulled again", 60, || {
        image.join("rootfs/usr/local/bin/etcd").is_file()
    });
    let images = std::fs::metadata(image.parent().unwrap()).unwrap();
    assert_eq!(images.permissions().mode() & 0o777, 0o700, "images/ is root's alone");
    every_unit_active(&p);
    let c = p.wait_ready("main", 3, 120);
    nothing_lost(&p, &c, w, 50, 3);

    // Settled, the cluster costs the API server no writes (issue 15): two of the operator's
    // 15-second passes and the agents' own, heartbeats aside.
    if let Some(writes) = p.writes_at_rest(35) {
        assert!(writes.is_empty(), "writes at rest: {writes:#?}");
    }
}

/// The agents' PriorityClass is the operator's setting (the chart's `agent.priorityClassName`):
/// a class that does not exist admits no agent pod, as the Priority admission plugin refuses it;
/// once it exists, the agents run and the cluster comes up.
#[test]
fn agents_run_with_the_priority_class_the_chart_names() {
    use k8s_openapi::api::scheduling::v1::PriorityClass;
    let p = Plane::up_with(1, &[("RUNC_ETCD_AGENT_PRIORITY_CLASS", "etcd-agents")]);
    p.apply(&cluster_yaml("main", 1, &p.lab.image(V_MID), "")).unwrap();
    let sets: Api<DaemonSet> = Api::namespaced(p.cp.client.clone(), p.ns());
    eventually("the agent DaemonSet with the class", 60, || {
        p.rt.block_on(sets.list(&Default::default()))
            .unwrap()
            .items
            .iter()
            .any(|d| {
                d.spec
                    .as_ref()
                    .and_then(|s| s.template.spec.as_ref()?.priority_class_name.as_deref())
                    == Some("etcd-agents")
            })
    });
    std::thread::sleep(Duration::from_secs(10));
    assert!(
        !unit_active(&p, 1),
        "no agent runs while its PriorityClass does not exist"
    );
    let classes: Api<PriorityClass> = Api::all(p.cp.client.clone());
    let class: PriorityClass = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "etcd-agents", "labels": {"runc-etcd.io/lab": p.lab.id.to_string()}},
        "value": 1_000_000_000, "description": "runc-etcd agents"
    }))
    .unwrap();
    p.rt.block_on(classes.create(&Default::default(), &class)).unwrap();
    p.wait_ready("main", 1, 120);
    p.rt.block_on(classes.delete("etcd-agents", &Default::default()))
        .unwrap();
}
