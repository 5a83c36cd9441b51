//! The control-plane tier: a lab, its API (in-process, or the real cluster named by
//! RUNC_ETCD_TEST_KUBECONFIG), Nodes for its hosts, agents played from the DaemonSets, and
//! operator processes. Tests read what a user would: EtcdCluster status, objects, Events, etcd.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use etcd_client::{Certificate, Identity, TlsOptions};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use runc_etcd_api::EtcdCluster;
use runc_etcd_testkit::lab::Lab;
use runc_etcd_testkit::lab::control::ControlPlane;
use runc_etcd_testkit::lab::registry::{S3_ACCESS_KEY, S3_SECRET_KEY};

pub struct Plane {
    pub cp: ControlPlane,
    pub rt: tokio::runtime::Runtime,
    pub lab: Lab,
    /// Where the tests put their clusters, if not in the operator's namespace (`use_namespace`).
    apps: Option<String>,
}

pub fn bin_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_runc-etcd"))
        .parent()
        .unwrap()
        .to_path_buf()
}

impl Drop for Plane {
    /// Takes the lab off the API server (on a shared real cluster, its Nodes and namespace).
    fn drop(&mut self) {
        if let Err(e) = self.rt.block_on(self.cp.release()) {
            eprintln!("releasing the lab's control plane: {e}");
        }
    }
}

impl Plane {
    /// A lab of `hosts` hosts with a control plane and one operator running.
    pub fn up(hosts: u8) -> Plane {
        Self::up_with(hosts, &[])
    }

    /// As `up`, the operator started with extra environment (e.g. a failpoint).
    pub fn up_with(hosts: u8, operator_env: &[(&str, &str)]) -> Plane {
        let lab = super::lab(hosts);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runc_etcd_host::install_crypto_provider();
        let mut cp = rt
            .block_on(ControlPlane::start(&lab, &bin_dir()))
            .unwrap_or_else(|e| panic!("control plane: {e}"));
        cp.start_operator(operator_env).unwrap();
        Plane {
            cp,
            rt,
            lab,
            apps: None,
        }
    }

    /// The namespace where tests put their clusters: the lab's (the operator's), unless
    /// `use_namespace` chose another.
    pub fn ns(&self) -> &str {
        self.apps.as_deref().unwrap_or(&self.cp.namespace)
    }

    /// Makes namespace `<lab namespace>-<suffix>` (taken off the API server with the lab) and
    /// puts the clusters there from now on; returns its name.
    pub fn use_namespace(&mut self, suffix: &str) -> String {
        let name = format!("{}-{suffix}", self.cp.namespace);
        self.rt
            .block_on(self.cp.create_namespace(&name))
            .unwrap_or_else(|e| panic!("namespace {name}: {e}"));
        self.apps = Some(name.clone());
        name
    }

    /// A cluster's instance on the hosts (`<namespace>.<name>`): its unit and state folder.
    pub fn instance(&self, cluster: &str) -> String {
        format!("{}.{cluster}", self.ns())
    }

    pub fn clusters(&self) -> Api<EtcdCluster> {
        Api::namespaced(self.cp.client.clone(), self.ns())
    }

    /// `kubectl apply` of an EtcdCluster (server-side apply).
    pub fn apply(&self, yaml: &str) -> Result<EtcdCluster, kube::Error> {
        let obj: serde_json::Value = serde_saphyr::from_str(yaml).expect("test YAML parses");
        let name = obj["metadata"]["name"].as_str().unwrap().to_string();
        self.rt.block_on(
            self.clusters()
                .patch(&name, &PatchParams::apply("kubectl").force(), &Patch::Apply(&obj)),
        )
    }

    pub fn get(&self, name: &str) -> Option<EtcdCluster> {
        self.rt.block_on(self.clusters().get_opt(name)).unwrap()
    }

    pub fn delete(&self, name: &str) {
        self.rt
            .block_on(self.clusters().delete(name, &DeleteParams::default()))
            .unwrap();
    }

    /// Waits until the cluster satisfies `cond`, or panics with its status and the logs.
    pub fn wait(&self, name: &str, what: &str, secs: u64, cond: impl Fn(&EtcdCluster) -> bool) -> EtcdCluster {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(c) = self.get(name)
                && cond(&c)
            {
                return c;
            }
            if Instant::now() > deadline {
                let status = self.get(name).map(|c| serde_json::to_string_pretty(&c.status).unwrap());
                // Every operator's: the leader is not always the last one started.
                let operators: String = (0..self.cp.operators())
                    .map(|i| format!("operator-{i} log (tail):\n{}\n", tail(&self.cp.operator_log(i), 40)))
                    .collect();
                panic!(
                    "timed out after {secs}s waiting for {name} to be {what}\nstatus: {status:?}\n{operators}agents:\n{}",
                    self.cp.agent_logs(15)
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Available with `n` ready voting members, converged.
    pub fn wait_ready(&self, name: &str, n: i32, secs: u64) -> EtcdCluster {
        self.wait(name, &format!("Available with {n} members"), secs, |c| {
            let s = c.status.clone().unwrap_or_default();
            s.ready_members == n
                && s.members.len() == n as usize
                && condition(c, "Available") == Some("True")
                && condition(c, "Progressing") == Some("False")
        })
    }

    fn secret(&self, name: &str) -> Option<Secret> {
        let api: Api<Secret> = Api::namespaced(self.cp.client.clone(), self.ns());
        self.rt.block_on(api.get_opt(name)).unwrap()
    }

    /// One file of a Secret of the lab namespace ("" if it is not there).
    pub fn secret_file(&self, name: &str, key: &str) -> String {
        self.secret(name)
            .and_then(|s| s.data?.get(key).map(|b| String::from_utf8_lossy(&b.0).into_owned()))
            .unwrap_or_default()
    }

    /// The client identity the operator made for users (Secret `<cluster>-client-tls`).
    /// A client of the control plane as whoever holds `token` (e.g. a ServiceAccount's, from
    /// `kubectl create token`). kube's client sends it over plain HTTP too, where kubectl does not.
    pub fn client_with_token(&self, token: &str) -> kube::Client {
        let mut kc = kube::config::Kubeconfig::read_from(&self.cp.local_kubeconfig).unwrap();
        for a in &mut kc.auth_infos {
            a.auth_info = Some(kube::config::AuthInfo {
                token: Some(token.to_string().into()),
                ..Default::default()
            });
        }
        let _guard = self.rt.enter();
        let config = self
            .rt
            .block_on(kube::Config::from_custom_kubeconfig(kc, &Default::default()))
            .unwrap();
        kube::Client::try_from(config).unwrap()
    }

    /// A client of the control plane as ServiceAccount `name` of the lab's namespace (its token
    /// from the TokenRequest API, as `kubectl create token` gets it).
    pub fn service_account_client(&self, name: &str) -> kube::Client {
        use k8s_openapi::api::authentication::v1::TokenRequest;
        let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.cp.client.clone(), self.ns());
        let request: TokenRequest = serde_json::from_value(serde_json::json!({"spec": {"audiences": []}})).unwrap();
        let token = self
            .rt
            .block_on(accounts.create_token_request(name, &Default::default(), &request))
            .unwrap()
            .status
            .unwrap()
            .token;
        self.client_with_token(&token)
    }

    pub fn client_tls(&self, cluster: &str) -> Option<TlsOptions> {
        let s = self.secret(&format!("{cluster}-client-tls"))?;
        let data = s.data.unwrap();
        let f = |k: &str| String::from_utf8(data[k].0.clone()).unwrap();
        Some(
            TlsOptions::new()
                .ca_certificate(Certificate::from_pem(f("ca.crt")))
                .identity(Identity::from_pem(f("tls.crt"), f("tls.key"))),
        )
    }

    /// Client URLs from the Service's EndpointSlice (ready endpoints), as a client would find them.
    pub fn service_endpoints(&self, cluster: &str, scheme: &str) -> Vec<String> {
        let api: Api<EndpointSlice> = Api::namespaced(self.cp.client.clone(), self.ns());
        let slice = self.rt.block_on(api.get(&format!("{cluster}-client"))).unwrap();
        let port = slice.ports.unwrap()[0].port.unwrap();
        slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
            .map(|e| format!("{scheme}://{}:{port}", e.addresses[0]))
            .collect()
    }

    /// The cluster's current revision (etcd's key-value revision), read through its Service.
    pub fn revision(&self, cluster: &str) -> i64 {
        let (endpoints, tls) = (self.service_endpoints(cluster, "https"), self.client_tls(cluster));
        runc_etcd_testkit::lab::netns::run_in(&self.lab.client_ns(), move || async move {
            let mut c = super::connect(endpoints, tls).await;
            let r = c.get("revision", None).await.expect("get");
            r.header().expect("a response header").revision()
        })
    }

    /// Writes `<prefix><i>` = `v<i>` for i in 0..n through the cluster's Service endpoints.
    pub fn put_keys(&self, cluster: &str, prefix: &str, n: usize) {
        let (endpoints, tls, prefix) = (
            self.service_endpoints(cluster, "https"),
            self.client_tls(cluster),
            prefix.to_string(),
        );
        runc_etcd_testkit::lab::netns::run_in(&self.lab.client_ns(), move || async move {
            let mut c = super::connect(endpoints, tls).await;
            for i in 0..n {
                c.put(format!("{prefix}{i}"), format!("v{i}"), None).await.expect("put");
            }
        });
    }

    /// Every key (with its value) through the cluster's Service endpoints.
    pub fn all_keys(&self, cluster: &str) -> BTreeMap<String, String> {
        let (endpoints, tls) = (self.service_endpoints(cluster, "https"), self.client_tls(cluster));
        runc_etcd_testkit::lab::netns::run_in(&self.lab.client_ns(), move || async move {
            let mut c = super::connect(endpoints, tls).await;
            let r = c
                .get("", Some(etcd_client::GetOptions::new().with_all_keys()))
                .await
                .expect("get");
            r.kvs()
                .iter()
                .map(|kv| (kv.key_str().unwrap().to_string(), kv.value_str().unwrap().to_string()))
                .collect()
        })
    }

    /// GET `path` from `addr` inside the lab's LAN: (HTTP status, body).
    pub fn http_get(&self, addr: &str, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (addr, req) = (addr.to_string(), format!("GET {path} HTTP/1.0\r\nHost: lab\r\n\r\n"));
        let raw = runc_etcd_testkit::lab::netns::run_in(&self.lab.client_ns(), move || async move {
            let mut s = tokio::net::TcpStream::connect(&addr).await.expect("connect");
            s.write_all(req.as_bytes()).await.expect("send");
            let mut out = String::new();
            s.read_to_string(&mut out).await.expect("read");
            out
        });
        let status = raw.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
        let body = raw.split_once("\r\n\r\n").map(|x| x.1.to_string()).unwrap_or_default();
        (status, body)
    }

    /// Reasons of the Events about the cluster.
    /// The writes the operator and the agents (their ServiceAccounts) make over `secs`, as the
    /// API server counts them, heartbeats left out (the agents' and the leader's Leases are
    /// renewed by design, as a kubelet's are). None against a server this process does not run.
    pub fn writes_over(&self, secs: u64) -> Option<Vec<(String, u64)>> {
        let server = self.cp.server.as_ref()?;
        let before = server.requests();
        std::thread::sleep(Duration::from_secs(secs));
        let after = server.requests();
        let writes = after
            .into_iter()
            .filter(|(c, _)| {
                c.writes() && c.user.starts_with("system:serviceaccount:") && c.resource != "coordination.k8s.io/leases"
            })
            .filter_map(|(c, n)| {
                let was = before.get(&c).copied().unwrap_or(0);
                (n > was).then(|| (format!("{} {} {}", c.user, c.verb, c.resource), n - was))
            })
            .collect();
        Some(writes)
    }

    /// The writes over `secs` once the lab is at rest: first a 10-second window without any
    /// (a minute at most), so that what finishes the last change (a database still growing
    /// after the last write, reported once) is not taken for churn.
    pub fn writes_at_rest(&self, secs: u64) -> Option<Vec<(String, u64)>> {
        for _ in 0..6 {
            if self.writes_over(10)?.is_empty() {
                break;
            }
        }
        self.writes_over(secs)
    }

    pub fn event_reasons(&self, cluster: &str) -> Vec<String> {
        self.events(cluster).into_iter().map(|(reason, _)| reason).collect()
    }

    /// How often an Event with `reason` was emitted about the cluster (repeats of the same Event
    /// are one object with a series count, as on a real cluster).
    pub fn event_count(&self, cluster: &str, reason: &str) -> i32 {
        let api: Api<Event> = Api::namespaced(self.cp.client.clone(), self.ns());
        self.rt
            .block_on(api.list(&ListParams::default()))
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(cluster))
            .filter(|e| e.reason.as_deref() == Some(reason))
            .map(|e| e.series.map_or(1, |s| s.count))
            .sum()
    }

    /// (reason, note) of the Events about the cluster, oldest first.
    pub fn events(&self, cluster: &str) -> Vec<(String, String)> {
        let api: Api<Event> = Api::namespaced(self.cp.client.clone(), self.ns());
        let mut events: Vec<Event> = self
            .rt
            .block_on(api.list(&ListParams::default()))
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(cluster))
            .collect();
        events.sort_by_key(|e| e.event_time.as_ref().map(|t| t.0));
        events
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.note.unwrap_or_default()))
            .collect()
    }

    /// Names of the objects of `kind` labelled with the cluster.
    pub fn owned<K>(&self, cluster: &str) -> Vec<String>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.cp.client.clone(), self.ns());
        let lp = ListParams::default().labels(&format!("runc-etcd.io/cluster={cluster}"));
        let list = self.rt.block_on(api.list(&lp)).unwrap();
        list.items
            .iter()
            .map(|o| o.meta().name.clone().unwrap_or_default())
            .collect()
    }

    pub fn label_node(&self, n: u8, labels: &[(&str, &str)]) {
        let labels: BTreeMap<String, String> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.rt
            .block_on(self.cp.register_node(self.lab.host(n), &labels))
            .unwrap();
    }
}

pub fn condition<'a>(c: &'a EtcdCluster, type_: &str) -> Option<&'a str> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| x.status.as_str())
}

pub fn tail(s: &str, lines: usize) -> String {
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub fn cluster_yaml(name: &str, size: u32, image: &str, extra: &str) -> String {
    format!(
        "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata:\n  name: {name}\nspec:\n  size: {size}\n  version: 3.5.16\n  image: {image}\n{extra}"
    )
}

/// The lab host number of a Node.
pub fn host_of(p: &Plane, node: &str) -> u8 {
    (1..=p.lab.hosts.len() as u8)
        .find(|n| p.cp.node_name(p.lab.host(*n)) == node)
        .unwrap()
}

/// Available with `n` ready voting members in status.
pub fn available_with(c: &EtcdCluster, n: i32) -> bool {
    let s = c.status.clone().unwrap_or_default();
    s.ready_members == n && s.members.len() == n as usize && condition(c, "Available") == Some("True")
}

/// Whether the cluster reports `reason` in its Degraded condition with a message containing `text`.
pub fn degraded_by(c: &EtcdCluster, reason: &str, text: &str) -> bool {
    c.status
        .clone()
        .unwrap_or_default()
        .conditions
        .iter()
        .any(|x| x.type_ == "Degraded" && x.status == "True" && x.reason == reason && x.message.contains(text))
}

/// Every write the writer saw acknowledged is readable through the cluster's endpoints.
pub fn assert_no_write_lost(p: &Plane, c: &EtcdCluster, acked: &[String]) {
    let (endpoints, tls) = (
        c.status.clone().unwrap().client_endpoints,
        p.client_tls(&c.metadata.name.clone().unwrap()),
    );
    let have = runc_etcd_testkit::lab::netns::run_in(&p.lab.client_ns(), move || async move {
        let mut c = super::connect(endpoints, tls).await;
        let keys_only = etcd_client::GetOptions::new().with_prefix().with_keys_only();
        let r = c.get("w/", Some(keys_only)).await.expect("get");
        r.kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .collect::<std::collections::BTreeSet<_>>()
    });
    super::assert_none_missing(acked, |k| have.contains(k));
}

/// Each member, asked alone, lists the same members and names the same leader, and they are
/// the `n` the status lists (a rogue member keeps the cluster ID: the ID alone proves nothing).
pub fn assert_one_cluster(p: &Plane, c: &EtcdCluster, n: usize) {
    let s = c.status.clone().unwrap();
    let urls: Vec<String> = s.members.iter().map(|m| m.client_url.clone()).collect();
    assert_eq!(urls.len(), n, "status lists {n} members: {:?}", s.members);
    let tls = p.client_tls(&c.metadata.name.clone().unwrap());
    let views = runc_etcd_testkit::lab::netns::run_in(&p.lab.client_ns(), move || async move {
        let mut views = Vec::new();
        for url in urls {
            let mut c = super::connect(vec![url.clone()], tls.clone()).await;
            let list = c.member_list().await.expect("member list");
            let mut ids: Vec<u64> = list.members().iter().map(|m| m.id()).collect();
            ids.sort();
            let leader = c.status().await.expect("status").leader();
            views.push((url, ids, leader));
        }
        views
    });
    for (url, ids, leader) in &views {
        assert_eq!(ids.len(), n, "{url} lists {ids:x?}");
        assert_eq!(
            (ids, leader),
            (&views[0].1, &views[0].2),
            "{url} disagrees with {}: {views:x?}",
            views[0].0
        );
    }
}

/// The EtcdBackups of the lab's namespace.
pub fn backups(p: &Plane) -> Vec<runc_etcd_api::EtcdBackup> {
    let api: Api<runc_etcd_api::EtcdBackup> = Api::namespaced(p.cp.client.clone(), p.ns());
    p.rt.block_on(api.list(&ListParams::default())).unwrap().items
}

pub fn backup(p: &Plane, name: &str) -> Option<runc_etcd_api::EtcdBackup> {
    backups(p)
        .into_iter()
        .find(|b| b.metadata.name.as_deref() == Some(name))
}

/// Creates EtcdBackup `name` of cluster "main" and waits until it is finished.
pub fn back_up(p: &Plane, name: &str) -> runc_etcd_api::EtcdBackup {
    let api: Api<runc_etcd_api::EtcdBackup> = Api::namespaced(p.cp.client.clone(), p.ns());
    let b: runc_etcd_api::EtcdBackup = serde_json::from_value(serde_json::json!({
        "apiVersion": "runc-etcd.io/v1alpha1", "kind": "EtcdBackup",
        "metadata": {"name": name}, "spec": {"clusterName": "main"}}))
    .unwrap();
    p.rt.block_on(api.create(&kube::api::PostParams::default(), &b))
        .unwrap();
    super::eventually("the backup finishes", 60, || {
        backup(p, name).is_some_and(|b| b.finished())
    });
    backup(p, name).unwrap()
}

/// An S3 bucket in the lab, its credentials Secret, and the `spec.backup` lines that use it.
pub fn s3_destination(p: &Plane) -> (runc_etcd_testkit::lab::registry::Server, String) {
    let s3 = p.lab.start_s3(&["etcd-backups"]).unwrap();
    let secrets: Api<Secret> = Api::namespaced(p.cp.client.clone(), p.ns());
    let creds: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "s3-creds"},
        "stringData": {"accessKeyId": S3_ACCESS_KEY, "secretAccessKey": S3_SECRET_KEY}}))
    .unwrap();
    p.rt.block_on(secrets.create(&PostParams::default(), &creds)).unwrap();
    let spec = format!(
        "  backup:\n    s3:\n      endpoint: http://{}\n      bucket: etcd-backups\n      prefix: lab\n      credentialsSecret: s3-creds\n",
        s3.address
    );
    (s3, spec)
}

/// Cuts a host's power, and marks its Node not Ready as Kubernetes would.
pub fn lose_host(p: &Plane, n: u8) {
    p.lab.host(n).power_off(false);
    p.rt.block_on(p.cp.set_node_ready(p.lab.host(n), false)).unwrap();
}
