//! The in-process API server keeps the Kubernetes semantics the operator relies on, checked
//! through kube's own client and watcher.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use runc_etcd_api::{EtcdCluster, EtcdMember};
use runc_etcd_testkit::apiserver::ApiServer;
use serde_json::json;

fn cluster(name: &str, spec: serde_json::Value) -> EtcdCluster {
    serde_json::from_value(json!({
        "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
        "metadata": {"name": name, "namespace": "default"}, "spec": spec,
    }))
    .unwrap()
}

fn member(name: &str, node: &str, owner: &EtcdCluster) -> EtcdMember {
    serde_json::from_value(json!({
        "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdMember",
        "metadata": {"name": name, "namespace": "default", "labels": {"cluster": "main"},
            "ownerReferences": [{"apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster",
                "name": owner.metadata.name, "uid": owner.metadata.uid, "controller": true}]},
        "spec": {"cluster": "main", "memberName": name, "nodeName": node, "ip": "10.0.0.1", "clientPort": 2379,
            "peerPort": 2380, "initialCluster": [format!("{name}=https://10.0.0.1:2380")],
            "initialClusterState": "new", "image": "etcd@sha256:00"},
    }))
    .unwrap()
}

/// Waits (5 s at most) for what the server's background controllers finish (`deletion`).
async fn soon<F: std::future::Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    for _ in 0..50 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("not within 5 s: {what}");
}

fn rejected(e: kube::Error) -> (u16, String) {
    match e {
        kube::Error::Api(s) => (s.code, s.message),
        other => panic!("expected an API error, got {other}"),
    }
}

#[tokio::test]
async fn create_conflicts_generation_and_status() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let api: Api<EtcdCluster> = Api::namespaced(server.client(), "default");
    let created = api
        .create(&PostParams::default(), &cluster("main", json!({"version": "3.5.16"})))
        .await
        .unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(created.metadata.uid.is_some() && created.metadata.resource_version.is_some());
    let (code, _) = rejected(api.create(&PostParams::default(), &created).await.unwrap_err());
    assert_eq!(code, 409, "AlreadyExists");

    // A spec change bumps generation; a status write does not, and leaves the spec alone.
    let mut resized = created.clone();
    resized.spec.size = 5;
    let resized = api.replace("main", &PostParams::default(), &resized).await.unwrap();
    assert_eq!(resized.metadata.generation, Some(2));
    let status = json!({"status": {"phase": "Running", "readyMembers": 3}});
    let with_status = api
        .patch_status("main", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    assert_eq!(with_status.metadata.generation, Some(2));
    assert_eq!(with_status.spec.size, 5);
    assert_eq!(with_status.status.unwrap().ready_members, 3);
    // A spec write does not touch status.
    let patched = api
        .patch(
            "main",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": 3}, "status": null})),
        )
        .await
        .unwrap();
    assert_eq!(patched.status.unwrap().phase.as_deref(), Some("Running"));
    assert_eq!(patched.metadata.generation, Some(3));

    // A write based on a stale resourceVersion is a conflict; a custom resource takes none
    // without one.
    let (code, msg) = rejected(api.replace("main", &PostParams::default(), &resized).await.unwrap_err());
    assert_eq!(code, 409, "{msg}");
    let mut unconditional = resized.clone();
    unconditional.metadata.resource_version = None;
    let (code, msg) = rejected(
        api.replace("main", &PostParams::default(), &unconditional)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422, "{msg}");
    assert!(
        msg.ends_with("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"),
        "{msg}"
    );
    // So is a patch that names a stale one (how an agent claims a backup only if unmoved).
    let stale =
        json!({"metadata": {"resourceVersion": resized.metadata.resource_version}, "status": {"phase": "Failed"}});
    let (code, msg) = rejected(
        api.patch_status("main", &PatchParams::default(), &Patch::Merge(&stale))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 409, "{msg}");
    let current =
        json!({"metadata": {"resourceVersion": patched.metadata.resource_version}, "status": {"phase": "Failed"}});
    api.patch_status("main", &PatchParams::default(), &Patch::Merge(&current))
        .await
        .unwrap();
}

#[tokio::test]
async fn invalid_specs_are_refused_with_the_fix() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let api: Api<EtcdCluster> = Api::namespaced(server.client(), "default");
    for (spec, want) in [
        (json!({"version": "3.5.16", "size": 0}), "spec.size"),
        (json!({"version": "latest"}), "spec.version"),
        (
            json!({"version": "3.5.16", "ports": {"client": 2380, "peer": 2380}}),
            "ports must all differ",
        ),
    ] {
        let (code, msg) = rejected(
            api.create(&PostParams::default(), &cluster("bad", spec.clone()))
                .await
                .unwrap_err(),
        );
        assert_eq!(code, 422, "{spec}: {msg}");
        assert!(msg.contains(want), "{spec}: {msg}");
    }
    assert!(
        api.list(&ListParams::default()).await.unwrap().items.is_empty(),
        "nothing was stored"
    );

    let owner = api
        .create(&PostParams::default(), &cluster("main", json!({"version": "3.5.16"})))
        .await
        .unwrap();
    let members: Api<EtcdMember> = Api::namespaced(server.client(), "default");
    members
        .create(&PostParams::default(), &member("main-0", "n1", &owner))
        .await
        .unwrap();
    let moved = json!({"spec": {"nodeName": "n2"}});
    let (code, msg) = rejected(
        members
            .patch("main-0", &PatchParams::default(), &Patch::Merge(moved))
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 422);
    assert!(msg.contains("nodeName cannot change"), "{msg}");
}

#[tokio::test]
async fn finalizers_and_owner_garbage_collection() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let clusters: Api<EtcdCluster> = Api::namespaced(server.client(), "default");
    let members: Api<EtcdMember> = Api::namespaced(server.client(), "default");
    let mut c = cluster("main", json!({"version": "3.5.16"}));
    c.metadata.finalizers = Some(vec!["runc-etcd.io/members".into()]);
    let owner = clusters.create(&PostParams::default(), &c).await.unwrap();
    members
        .create(&PostParams::default(), &member("main-0", "n1", &owner))
        .await
        .unwrap();

    // With a finalizer, delete only marks the object; its dependents stay.
    clusters.delete("main", &DeleteParams::default()).await.unwrap();
    let marked = clusters.get("main").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert!(members.get("main-0").await.is_ok());

    // The last finalizer removed: the object goes, and so do the objects it owns.
    let release = json!({"metadata": {"finalizers": null}});
    clusters
        .patch("main", &PatchParams::default(), &Patch::Merge(release))
        .await
        .unwrap();
    assert_eq!(rejected(clusters.get("main").await.unwrap_err()).0, 404);
    soon("the member garbage collected", || async {
        members.get_opt("main-0").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn patches_and_selectors() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    // Server-side apply creates, then updates.
    let pp = PatchParams::apply("test").force();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "labels": {"app": "etcd", "tier": "x"}}, "data": {"k": "1"}});
    cms.patch("a", &pp, &Patch::Apply(&cm)).await.unwrap();
    let cm2 = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "b", "labels": {"app": "other"}}});
    cms.patch("b", &pp, &Patch::Apply(&cm2)).await.unwrap();
    let ops: json_patch::Patch =
        serde_json::from_value(json!([{"op": "add", "path": "/data/k2", "value": "2"}])).unwrap();
    let a = cms
        .patch("a", &PatchParams::default(), &Patch::<()>::Json(ops))
        .await
        .unwrap();
    assert_eq!(a.data.unwrap().get("k2").map(String::as_str), Some("2"));

    let names = |l: kube::core::ObjectList<ConfigMap>| {
        l.items
            .into_iter()
            .map(|c| c.metadata.name.unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app=etcd")).await.unwrap()),
        vec!["a"]
    );
    assert_eq!(
        names(cms.list(&ListParams::default().labels("app!=etcd")).await.unwrap()),
        vec!["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().labels("app in (etcd,other),!tier"))
                .await
                .unwrap()
        ),
        vec!["b"]
    );
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await
                .unwrap()
        ),
        vec!["b"]
    );
}

#[tokio::test]
async fn watches_see_every_change_in_order() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let clusters: Api<EtcdCluster> = Api::namespaced(server.client(), "default");
    let owner = clusters
        .create(&PostParams::default(), &cluster("main", json!({"version": "3.5.16"})))
        .await
        .unwrap();
    let members: Api<EtcdMember> = Api::namespaced(server.client(), "default");
    let config = watcher::Config::default().fields("spec.nodeName=n1");
    let mut events = watcher(members.clone(), config).boxed();

    // The initial list (empty), then changes as they happen, filtered by node.
    let init = tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(init, Some(watcher::Event::Init)));
    let done = tokio::time::timeout(Duration::from_secs(5), events.try_next())
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(done, Some(watcher::Event::InitDone)), "{done:?}");
    members
        .create(&PostParams::default(), &member("other", "n2", &owner))
        .await
        .unwrap();
    members
        .create(&PostParams::default(), &member("main-0", "n1", &owner))
        .await
        .unwrap();
    let status = json!({"status": {"phase": "Running"}});
    members
        .patch_status("main-0", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .unwrap();
    members.delete("main-0", &DeleteParams::default()).await.unwrap();

    let mut seen = Vec::new();
    while seen.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(5), events.try_next())
            .await
            .unwrap()
            .unwrap()
        {
            Some(watcher::Event::Apply(m)) => seen.push(format!(
                "apply {} {:?}",
                m.metadata.name.unwrap(),
                m.status.and_then(|s| s.phase)
            )),
            Some(watcher::Event::Delete(m)) => seen.push(format!("delete {}", m.metadata.name.unwrap())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec!["apply main-0 None", "apply main-0 Some(\"Running\")", "delete main-0"]
    );
}

#[tokio::test]
async fn a_write_that_changes_nothing_is_not_an_event() {
    // Controllers apply their children on every pass: a no-op must not wake their watchers,
    // or a controller that owns what it applies would reconcile in a loop.
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let api: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let apply = PatchParams::apply("test").force();
    let first = api.patch("c", &apply, &Patch::Apply(&cm)).await.unwrap();
    let again = api.patch("c", &apply, &Patch::Apply(&cm)).await.unwrap();
    assert_eq!(first.metadata.resource_version, again.metadata.resource_version);
    let merged = api
        .patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "1"}})))
        .await
        .unwrap();
    assert_eq!(first.metadata.resource_version, merged.metadata.resource_version);
    let changed = api
        .patch("c", &PatchParams::default(), &Patch::Merge(json!({"data": {"a": "2"}})))
        .await
        .unwrap();
    assert_ne!(first.metadata.resource_version, changed.metadata.resource_version);
}

#[tokio::test]
async fn objects_need_their_namespace_and_go_with_it() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "1"}});
    let cm: ConfigMap = serde_json::from_value(cm).unwrap();
    let elsewhere: Api<ConfigMap> = Api::namespaced(server.client(), "team-a");
    let (code, message) = rejected(elsewhere.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!((code, message.as_str()), (404, r#"namespaces "team-a" not found"#));

    let namespaces: Api<Namespace> = Api::all(server.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "team-a"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    elsewhere.create(&PostParams::default(), &cm).await.unwrap();
    namespaces.delete("team-a", &DeleteParams::default()).await.unwrap();
    soon("the namespace's objects gone", || async {
        elsewhere.get_opt("c").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn the_standalone_server_wants_https_and_its_token_and_is_reachable_through_a_relay() {
    use runc_etcd_testkit::lab::external;
    runc_etcd_host::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let (server, path) = external::standalone("127.0.0.1:0".parse().unwrap(), dir.path()).unwrap();
    assert!(server.url().starts_with("https://127.0.0.1:"));

    // Its kubeconfig (a CA file, a token) works; without the token the server says 401.
    let kc = external::self_contained(&path, "default").unwrap();
    let client = |kc: kube::config::Kubeconfig| async move {
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .unwrap();
        kube::Client::try_from(config).unwrap()
    };
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client(kc.clone()).await);
    nodes.list(&ListParams::default()).await.unwrap();
    let mut anonymous = kc.clone();
    anonymous.auth_infos[0].auth_info.as_mut().unwrap().token = None;
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client(anonymous).await);
    assert_eq!(rejected(nodes.list(&ListParams::default()).await.unwrap_err()).0, 401);

    // Reached through a relay at another address (as lab hosts reach it), the certificate is
    // still checked against the server's own name.
    let listener = std::net::TcpListener::bind("127.0.0.2:0").unwrap();
    let (relay, _task) = external::relay(listener, &server.url()).await.unwrap();
    let relayed = external::through_relay(&kc, relay).unwrap();
    let cluster = relayed.clusters[0].cluster.as_ref().unwrap();
    assert_eq!(cluster.tls_server_name.as_deref(), Some("127.0.0.1"));
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client(relayed.clone()).await);
    nodes.list(&ListParams::default()).await.unwrap();
    let mut unverifiable = relayed;
    unverifiable.clusters[0].cluster.as_mut().unwrap().tls_server_name = Some("example.com".into());
    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(client(unverifiable).await);
    assert!(
        nodes.list(&ListParams::default()).await.is_err(),
        "a certificate for another name is refused"
    );
}

/// A deposed leader (or a pass that read a stale copy) records its operation only onto the
/// cluster it read: the new leader's newer decision is not overwritten.
#[tokio::test]
async fn a_stale_operation_record_is_refused() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let api: Api<EtcdCluster> = Api::namespaced(server.client(), "default");
    let read_by_old_leader = api
        .create(&PostParams::default(), &cluster("main", json!({"version": "3.5.16"})))
        .await
        .unwrap();
    let op =
        |kind: &str, member: &str| json!({"lastOperation": {"type": kind, "member": member, "state": "InProgress"}});
    // The new leader records its change on the current object.
    assert!(
        runc_etcd_api::objects::write_status_if_unchanged(&api, &read_by_old_leader, &op("AddLearner", "main-new"))
            .await
            .unwrap()
    );
    // The old leader, still holding its older copy, tries to record another.
    let written =
        runc_etcd_api::objects::write_status_if_unchanged(&api, &read_by_old_leader, &op("RemoveMember", "main-old"))
            .await
            .unwrap();
    assert!(!written, "a write onto a stale copy is refused");
    let now = api.get("main").await.unwrap().status.unwrap().last_operation.unwrap();
    assert_eq!(
        (now.kind.as_str(), now.member.as_deref()),
        ("AddLearner", Some("main-new"))
    );
}

#[tokio::test]
async fn a_deleted_namespace_terminates_until_its_finalizers_are_done() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let namespaces: Api<Namespace> = Api::all(server.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let members: Api<EtcdMember> = Api::namespaced(server.client(), "apps");
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "apps");
    let owner = Api::<EtcdCluster>::namespaced(server.client(), "default")
        .create(&PostParams::default(), &cluster("main", json!({"version": "3.5.16"})))
        .await
        .unwrap();
    let mut m = member("main-0", "n1", &owner);
    m.metadata.namespace = Some("apps".into());
    m.metadata.owner_references = None;
    m.metadata.finalizers = Some(vec!["runc-etcd.io/agent".into()]);
    members.create(&PostParams::default(), &m).await.unwrap();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "plain"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    // Terminating: what has no finalizer goes, the rest is marked, nothing new may be made.
    namespaces.delete("apps", &DeleteParams::default()).await.unwrap();
    let terminating = namespaces.get("apps").await.unwrap();
    assert_eq!(terminating.status.unwrap().phase.as_deref(), Some("Terminating"));
    soon("the ConfigMap gone", || async {
        cms.get_opt("plain").await.unwrap().is_none()
    })
    .await;
    soon("the member marked", || async {
        members
            .get("main-0")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    })
    .await;
    let (code, msg) = rejected(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(code, 403, "{msg}");
    assert!(msg.contains("being terminated"), "{msg}");

    // The last finalizer done: the namespace goes.
    let release = json!({"metadata": {"finalizers": null}});
    members
        .patch("main-0", &PatchParams::default(), &Patch::Merge(release))
        .await
        .unwrap();
    soon("the namespace gone", || async {
        namespaces.get_opt("apps").await.unwrap().is_none()
    })
    .await;
}

#[tokio::test]
async fn a_foreground_deletion_waits_for_the_dependents() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let clusters: Api<EtcdCluster> = Api::namespaced(server.client(), "default");
    let members: Api<EtcdMember> = Api::namespaced(server.client(), "default");
    let owner = clusters
        .create(&PostParams::default(), &cluster("main", json!({"version": "3.5.16"})))
        .await
        .unwrap();
    let mut m = member("main-0", "n1", &owner);
    m.metadata.finalizers = Some(vec!["runc-etcd.io/agent".into()]);
    if let Some(r) = m.metadata.owner_references.as_mut() {
        r[0].block_owner_deletion = Some(true);
    }
    members.create(&PostParams::default(), &m).await.unwrap();

    // A dependent that does not block its owner (no blockOwnerDeletion), held by a finalizer.
    let mut loose = member("main-1", "n1", &owner);
    loose.metadata.finalizers = Some(vec!["runc-etcd.io/agent".into()]);
    if let Some(r) = loose.metadata.owner_references.as_mut() {
        r[0].block_owner_deletion = None;
    }
    members.create(&PostParams::default(), &loose).await.unwrap();

    clusters.delete("main", &DeleteParams::foreground()).await.unwrap();
    let marked = clusters.get("main").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    assert_eq!(marked.metadata.finalizers, Some(vec!["foregroundDeletion".to_string()]));
    for name in ["main-0", "main-1"] {
        soon("every dependent marked", || async {
            members.get(name).await.unwrap().metadata.deletion_timestamp.is_some()
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        clusters.get_opt("main").await.unwrap().is_some(),
        "waits for its blocking dependent"
    );

    // The blocking dependent gone, the owner goes, though the other is still there.
    let release = json!({"metadata": {"finalizers": null}});
    members
        .patch("main-0", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    soon("the owner gone after its blocking dependent", || async {
        clusters.get_opt("main").await.unwrap().is_none()
    })
    .await;
    assert!(members.get_opt("main-1").await.unwrap().is_some());
    members
        .patch("main-1", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    soon("the other dependent gone", || async {
        members.get_opt("main-1").await.unwrap().is_none()
    })
    .await;
}

/// A ServiceAccount's token (from the TokenRequest API, as a kubelet gets it) is that account,
/// and RBAC decides what it may do, with kube-apiserver's 403 words; the listener the operator
/// and agents use lets nothing in without a token it knows.
#[tokio::test]
async fn service_account_tokens_are_held_to_their_rbac() {
    use k8s_openapi::api::authentication::v1::TokenRequest;
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
    use runc_etcd_testkit::apiserver::Access;
    runc_etcd_host::install_crypto_provider();
    let local = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pods = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let pods_url = format!("http://{}", pods.local_addr().unwrap());
    let server = ApiServer::serve(vec![(local, Access::AdminWithoutToken), (pods, Access::TokenRequired)]).unwrap();
    let admin = server.client();
    let as_token = |token: Option<&str>| {
        let mut config = kube::Config::new(pods_url.parse().unwrap());
        config.auth_info.token = token.map(|t| t.to_string().into());
        config.default_namespace = "ops".into();
        kube::Client::try_from(config).unwrap()
    };
    let namespaces: Api<Namespace> = Api::all(admin.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "ops"}})).unwrap(),
        )
        .await
        .unwrap();
    let accounts: Api<ServiceAccount> = Api::namespaced(admin.clone(), "ops");
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": []}})).unwrap();
    let (code, _) = rejected(
        accounts
            .create_token_request("agent", &PostParams::default(), &request)
            .await
            .unwrap_err(),
    );
    assert_eq!(code, 404, "no token for an account that does not exist");
    accounts
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "agent"}})).unwrap(),
        )
        .await
        .unwrap();
    let token = accounts
        .create_token_request("agent", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token;

    // Without a token, or with one the server never issued: 401.
    for client in [as_token(None), as_token(Some("forged"))] {
        let secrets: Api<Secret> = Api::default_namespaced(client);
        assert_eq!(rejected(secrets.get("mine").await.unwrap_err()).0, 401);
    }
    // With the account's token and no Role: 403, said as a real server says it.
    let agent = as_token(Some(&token));
    let secrets: Api<Secret> = Api::default_namespaced(agent.clone());
    let (code, message) = rejected(secrets.get("mine").await.unwrap_err());
    assert_eq!(code, 403);
    assert_eq!(
        message,
        r#"secrets "mine" is forbidden: User "system:serviceaccount:ops:agent" cannot get resource "secrets" in API group "" in the namespace "ops""#
    );
    // Discovery is every authenticated user's (the bootstrap role system:discovery).
    agent.apiserver_version().await.unwrap();

    // A Role for one named Secret: that one, and no other, and no list.
    let roles: Api<Role> = Api::namespaced(admin.clone(), "ops");
    let role = json!({"metadata": {"name": "mine"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get"]}]});
    roles
        .create(&PostParams::default(), &serde_json::from_value(role).unwrap())
        .await
        .unwrap();
    let bindings: Api<RoleBinding> = Api::namespaced(admin.clone(), "ops");
    let binding = json!({"metadata": {"name": "mine"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "mine"},
        "subjects": [{"kind": "ServiceAccount", "name": "agent", "namespace": "ops"}]});
    bindings
        .create(&PostParams::default(), &serde_json::from_value(binding).unwrap())
        .await
        .unwrap();
    let admin_secrets: Api<Secret> = Api::namespaced(admin.clone(), "ops");
    for name in ["mine", "ca"] {
        let s = json!({"metadata": {"name": name}, "stringData": {"k": "v"}});
        admin_secrets
            .create(&PostParams::default(), &serde_json::from_value(s).unwrap())
            .await
            .unwrap();
    }
    assert!(secrets.get("mine").await.unwrap().data.unwrap().contains_key("k"));
    assert_eq!(rejected(secrets.get("ca").await.unwrap_err()).0, 403);
    let (code, message) = rejected(secrets.list(&ListParams::default()).await.unwrap_err());
    assert_eq!(code, 403);
    assert!(message.starts_with("secrets is forbidden: "), "{message}");

    // A deleted account's token stops working.
    accounts.delete("agent", &DeleteParams::default()).await.unwrap();
    assert_eq!(rejected(secrets.get("mine").await.unwrap_err()).0, 401);
}

/// What kubectl relies on: Events written as events.k8s.io are read as core Events (and
/// selected by core's field names); access reviews and impersonation answer from RBAC.
#[tokio::test]
async fn events_are_one_store_and_access_reviews_answer_from_rbac() {
    use k8s_openapi::api::authorization::v1::{SelfSubjectAccessReview, SubjectAccessReview};
    use k8s_openapi::api::core::v1::Event as CoreEvent;
    use k8s_openapi::api::events::v1::Event;
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let admin = server.client();
    let new: Event = serde_json::from_value(json!({
        "metadata": {"name": "main.1", "namespace": "default"},
        "eventTime": "2026-12-03T10:00:00.000000Z", "reportingController": "runc-etcd",
        "reportingInstance": "operator-0", "action": "Reconcile", "reason": "MemberAdded", "type": "Normal",
        "note": "member m1 placed on node n1",
        "regarding": {"apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdCluster", "name": "main", "namespace": "default"},
    }))
    .unwrap();
    Api::<Event>::namespaced(admin.clone(), "default")
        .create(&PostParams::default(), &new)
        .await
        .unwrap();
    let core: Api<CoreEvent> = Api::namespaced(admin.clone(), "default");
    let found = core
        .list(&ListParams::default().fields("involvedObject.name=main,involvedObject.kind=EtcdCluster"))
        .await
        .unwrap()
        .items;
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].message.as_deref(), Some("member m1 placed on node n1"));
    assert_eq!(found[0].reporting_component.as_deref(), Some("runc-etcd"));
    assert!(
        core.list(&ListParams::default().fields("involvedObject.name=other"))
            .await
            .unwrap()
            .items
            .is_empty()
    );

    // A review for a ServiceAccount with nothing bound: no; the administrator: yes.
    let review = |user: &str| -> SubjectAccessReview {
        serde_json::from_value(json!({"spec": {"user": user, "groups": ["system:authenticated"],
            "resourceAttributes": {"verb": "get", "resource": "secrets", "namespace": "default", "name": "main-ca"}}}))
        .unwrap()
    };
    let reviews: Api<SubjectAccessReview> = Api::all(admin.clone());
    let answer = reviews
        .create(&PostParams::default(), &review("system:serviceaccount:default:agent"))
        .await
        .unwrap();
    assert!(!answer.status.unwrap().allowed);
    // Impersonating it (kubectl --as), its own review says the same, and so does the API.
    let mut config = kube::Config::new(server.url().parse().unwrap());
    config.auth_info.impersonate = Some("system:serviceaccount:default:agent".into());
    let agent = kube::Client::try_from(config).unwrap();
    let ask: SelfSubjectAccessReview = serde_json::from_value(json!({"spec": {"resourceAttributes":
        {"verb": "list", "resource": "secrets", "namespace": "default"}}}))
    .unwrap();
    let own = Api::<SelfSubjectAccessReview>::all(agent.clone())
        .create(&PostParams::default(), &ask)
        .await
        .unwrap();
    assert!(!own.status.unwrap().allowed);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(agent, "default");
    assert_eq!(rejected(secrets.list(&ListParams::default()).await.unwrap_err()).0, 403);
}

#[tokio::test]
async fn server_side_apply_keeps_owners_refuses_conflicts_and_removes_what_is_no_longer_applied() {
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "default");
    let cm = |data: serde_json::Value| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data});
    let data = |c: ConfigMap| c.data.unwrap_or_default().into_iter().collect::<Vec<_>>();
    let by = |m: &str| PatchParams::apply(m);
    let s = |k: &str, v: &str| (k.to_string(), v.to_string());

    // Two appliers may own one field when they apply the same value.
    cms.patch(
        "c",
        &by("operator"),
        &Patch::Apply(cm(json!({"a": "1", "b": "1", "shared": "s"}))),
    )
    .await
    .unwrap();
    let c = cms
        .patch("c", &by("helm"), &Patch::Apply(cm(json!({"shared": "s"}))))
        .await
        .unwrap();
    let owners: Vec<(String, String)> = c
        .metadata
        .managed_fields
        .unwrap()
        .into_iter()
        .map(|e| (e.manager.unwrap(), e.operation.unwrap()))
        .collect();
    assert_eq!(owners, [s("operator", "Apply"), s("helm", "Apply")]);

    // A merge patch by someone else takes the field it changed.
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..Default::default()
    };
    cms.patch("c", &edit, &Patch::Merge(json!({"data": {"a": "2"}})))
        .await
        .unwrap();
    // So applying it again conflicts, in kube-apiserver's words, and changes nothing...
    let (code, message) = rejected(
        cms.patch(
            "c",
            &by("operator"),
            &Patch::Apply(cm(json!({"a": "1", "b": "1", "shared": "s"}))),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(code, 409);
    assert!(
        message.starts_with("Apply failed with 1 conflict: conflict with \"kubectl-edit\" using v1 at ")
            && message.ends_with(": .data.a"),
        "{message}"
    );
    assert_eq!(data(cms.get("c").await.unwrap())[0], s("a", "2"));
    // ...unless forced, which takes it back. Dropping a field removes it, unless another
    // manager owns it: `shared` stays while helm applies it.
    let c = cms
        .patch("c", &by("operator").force(), &Patch::Apply(cm(json!({"a": "1"}))))
        .await
        .unwrap();
    assert_eq!(data(c), [s("a", "1"), s("shared", "s")]);
    let c = cms.patch("c", &by("helm"), &Patch::Apply(cm(json!({})))).await.unwrap();
    assert_eq!(data(c), [s("a", "1")]);
    // A field another writer added is not the applier's to remove.
    cms.patch("c", &edit, &Patch::Merge(json!({"data": {"mine": "x"}})))
        .await
        .unwrap();
    let c = cms
        .patch("c", &by("operator"), &Patch::Apply(cm(json!({"a": "1"}))))
        .await
        .unwrap();
    assert_eq!(data(c), [s("a", "1"), s("mine", "x")]);

    // An apply names its manager (only an apply may force: kube's client checks that itself).
    let anonymous = PatchParams {
        field_manager: None,
        ..Default::default()
    };
    let (code, message) = rejected(
        cms.patch("c", &anonymous, &Patch::Apply(cm(json!({"a": "1"}))))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, message.as_str()),
        (
            422,
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        )
    );
}

/// An orphaning deletion leaves the dependents without their owner; a namespace's pods go
/// first (a bound pod once its kubelet lets it go), the rest after them; a pod on a node that
/// does not exist is collected.
#[tokio::test]
async fn orphans_stay_and_a_namespace_deletes_its_pods_first() {
    use k8s_openapi::api::core::v1::{Node, Pod};
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let clusters: Api<EtcdCluster> = Api::namespaced(server.client(), "default");
    let members: Api<EtcdMember> = Api::namespaced(server.client(), "default");
    let owner = clusters
        .create(&PostParams::default(), &cluster("main", json!({"version": "3.5.16"})))
        .await
        .unwrap();
    members
        .create(&PostParams::default(), &member("main-0", "n1", &owner))
        .await
        .unwrap();
    let orphan = DeleteParams {
        propagation_policy: Some(kube::api::PropagationPolicy::Orphan),
        ..Default::default()
    };
    clusters.delete("main", &orphan).await.unwrap();
    soon("the owner gone", || async {
        clusters.get_opt("main").await.unwrap().is_none()
    })
    .await;
    let kept = members.get("main-0").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());
    assert_eq!(kept.metadata.owner_references.unwrap_or_default(), vec![]);

    let nodes: Api<Node> = Api::all(server.client());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "n1"}})).unwrap(),
        )
        .await
        .unwrap();
    let namespaces: Api<Namespace> = Api::all(server.client());
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": "apps"}})).unwrap();
    namespaces.create(&PostParams::default(), &ns).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(server.client(), "apps");
    let pod = |name: &str, node: &str| -> Pod {
        serde_json::from_value(json!({"metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "i"}]}}))
        .unwrap()
    };
    pods.create(&PostParams::default(), &pod("agent", "n1")).await.unwrap();
    let cms: Api<ConfigMap> = Api::namespaced(server.client(), "apps");
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "plain"}})).unwrap();
    cms.create(&PostParams::default(), &cm).await.unwrap();

    namespaces.delete("apps", &DeleteParams::default()).await.unwrap();
    soon("the pod marked", || async {
        pods.get("agent").await.unwrap().metadata.deletion_timestamp.is_some()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pods.get_opt("agent").await.unwrap().is_some(),
        "its kubelet has not let it go"
    );
    assert!(
        cms.get_opt("plain").await.unwrap().is_some(),
        "nothing else before the pods"
    );
    // The kubelet stops its containers and deletes it for good.
    pods.delete("agent", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    soon("the namespace gone", || async {
        namespaces.get_opt("apps").await.unwrap().is_none()
    })
    .await;

    // A pod whose node is gone is collected.
    let default_pods: Api<Pod> = Api::namespaced(server.client(), "default");
    default_pods
        .create(&PostParams::default(), &pod("lost", "n9"))
        .await
        .unwrap();
    soon("the pod of a node that does not exist gone", || async {
        default_pods.get_opt("lost").await.unwrap().is_none()
    })
    .await;
}

/// The DaemonSet controller makes one pod per eligible Node through admission (a refusal is a
/// FailedCreate Event, and no pod), and replaces a pod whose template changed once its kubelet
/// has let the old one go.
#[tokio::test]
async fn daemonsets_make_their_pods_through_admission() {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{Node, Pod};
    use k8s_openapi::api::events::v1::Event;
    runc_etcd_host::install_crypto_provider();
    let server = ApiServer::start().await.unwrap();
    let nodes: Api<Node> = Api::all(server.client());
    for (name, labels) in [("n1", json!({"etcd": "yes"})), ("n2", json!({}))] {
        let node = json!({"metadata": {"name": name, "labels": labels}});
        nodes
            .create(&PostParams::default(), &serde_json::from_value(node).unwrap())
            .await
            .unwrap();
    }
    let namespaces: Api<Namespace> = Api::all(server.client());
    let ns = json!({"metadata": {"name": "ops", "labels": {"pod-security.kubernetes.io/enforce": "baseline"}}});
    namespaces
        .create(&PostParams::default(), &serde_json::from_value(ns).unwrap())
        .await
        .unwrap();
    let ds = |image: &str| -> DaemonSet {
        serde_json::from_value(
            json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agents"},
            "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "a"}},
                "spec": {"nodeSelector": {"etcd": "yes"}, "hostNetwork": true,
                    "containers": [{"name": "agent", "image": image, "securityContext": {"privileged": true}}]}}}}),
        )
        .unwrap()
    };
    let sets: Api<DaemonSet> = Api::namespaced(server.client(), "ops");
    sets.create(&PostParams::default(), &ds("a:1")).await.unwrap();
    let events: Api<Event> = Api::namespaced(server.client(), "ops");
    soon("a FailedCreate event", || async {
        events.list(&Default::default()).await.unwrap().items.iter().any(|e| {
            e.reason.as_deref() == Some("FailedCreate")
                && e.note.as_deref().is_some_and(|n| {
                    n.contains("violates PodSecurity \"baseline:latest\": host namespaces (hostNetwork=true)")
                })
        })
    })
    .await;
    let pods: Api<Pod> = Api::namespaced(server.client(), "ops");
    assert!(pods.list(&Default::default()).await.unwrap().items.is_empty());

    // Admitted: one pod, on the node the selector picks, owned by its DaemonSet.
    let privileged = json!({"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "privileged"}}});
    namespaces
        .patch("ops", &PatchParams::default(), &Patch::Merge(privileged))
        .await
        .unwrap();
    let one = || async {
        let items = pods.list(&Default::default()).await.unwrap().items;
        (items.len() == 1).then(|| items[0].clone())
    };
    soon("one pod", || async { one().await.is_some() }).await;
    let pod = one().await.unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some("n1"));
    assert_eq!(pod.metadata.owner_references.unwrap()[0].name, "agents");

    // A new template: the old pod is deleted, and replaced once its kubelet lets it go.
    sets.replace("agents", &PostParams::default(), &ds("a:2"))
        .await
        .unwrap_or_else(|_| panic!("replace"));
    soon("the old pod marked", || async {
        pods.get(&pod.metadata.name.clone().unwrap())
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    })
    .await;
    pods.delete(
        &pod.metadata.name.clone().unwrap(),
        &DeleteParams::default().grace_period(0),
    )
    .await
    .unwrap();
    soon("a pod of the new template", || async {
        one().await.is_some_and(|p| {
            p.spec.unwrap().containers[0].image.as_deref() == Some("a:2") && p.metadata.deletion_timestamp.is_none()
        })
    })
    .await;
}
