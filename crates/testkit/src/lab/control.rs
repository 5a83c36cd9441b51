//! The lab's control plane (ARCHITECTURE.md §7, tier 3): a Kubernetes API (the in-process test
//! server, or a real cluster named by `RUNC_ETCD_TEST_KUBECONFIG`), a Node object per lab host,
//! operator processes in the lab's LAN, and a stand-in kubelet (`kubelet`) that runs the pods
//! bound to the lab's Nodes (the agent DaemonSets' pods, made by the API server's DaemonSet
//! controller) as `runc-etcd agent` systemd services inside the hosts.
//!
//! The operator and the agents run as the chart makes them: with their ServiceAccounts' tokens
//! (TokenRequest, as a kubelet gets them) and the chart's RBAC, installed by `chart`; on the
//! in-process server their LAN listener takes no request without a token.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{AuthInfo, Kubeconfig};
use serde_json::json;

use super::{Lab, LabHost, chart, external, netns};
use crate::apiserver::{Access, ApiServer};
use runc_etcd_api::objects::delete_if_present;

/// Where hosts find the API server; its user is the token at `SA_DIR`.
pub(super) const HOST_KUBECONFIG: &str = "/etc/runc-etcd-lab/kubeconfig";
/// Where a pod finds its ServiceAccount's token (`token`, `namespace`).
pub(super) const SA_DIR: &str = "/run/secrets/kubernetes.io/serviceaccount";
/// Where the stand-in kubelet keeps each agent unit's token on its host, bound at `SA_DIR` in
/// the unit's own mount namespace.
pub(super) const PODS_DIR: &str = "/run/runc-etcd-lab/pods";
/// The operator's ServiceAccount, as the chart names it.
const OPERATOR_SA: &str = "runc-etcd-operator";
/// The env var naming a real cluster to run the control-plane tests against.
pub const REAL_CLUSTER_ENV: &str = "RUNC_ETCD_TEST_KUBECONFIG";

pub struct ControlPlane {
    /// The in-process API server (None against a real cluster).
    pub server: Option<ApiServer>,
    pub client: kube::Client,
    /// The lab's namespace: its clusters, and its operator's election Lease.
    pub namespace: String,
    /// Kubeconfig of the operator's ServiceAccount on the lab's LAN, and of the administrator on
    /// this machine (kubectl); both default to the lab's namespace.
    pub operator_kubeconfig: PathBuf,
    pub local_kubeconfig: PathBuf,
    /// The namespaces the chart's agent Roles are installed in (`create_namespace` adds to them).
    cluster_namespaces: tokio::sync::Mutex<Vec<String>>,
    dir: PathBuf,
    bin: PathBuf,
    switch_ns: String,
    hosts: Vec<LabHost>,
    lab_id: u8,
    operators: Vec<Child>,
    /// The stand-in kubelet, and (against an outside API server) the relay to it.
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A kubeconfig for a plain-HTTP server (the in-process one), without a token.
pub fn kubeconfig(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n    server: {server}\nusers:\n- name: lab\n  user: {{}}\ncontexts:\n- name: lab\n  context:\n    cluster: lab\n    user: lab\n    namespace: {namespace}\ncurrent-context: lab\n"
    )
}

/// The same kubeconfig with the token in `token_file` as its only credential.
fn with_token_file(kc: &Kubeconfig, token_file: &str) -> Kubeconfig {
    let mut kc = kc.clone();
    for a in &mut kc.auth_infos {
        a.auth_info = Some(AuthInfo {
            token_file: Some(token_file.to_string()),
            ..Default::default()
        });
    }
    kc
}

/// A ServiceAccount's token, from the TokenRequest API.
pub(super) async fn token_of(client: &kube::Client, namespace: &str, name: &str) -> crate::Result<String> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let request: TokenRequest = serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 86400}}))
        .expect("a valid TokenRequest");
    let answer = accounts
        .create_token_request(name, &Default::default(), &request)
        .await?;
    Ok(answer.status.map(|s| s.token).unwrap_or_default())
}

pub(super) fn io(what: &str) -> impl FnOnce(std::io::Error) -> crate::Error + '_ {
    move |e| crate::Error::transient(what, e)
}

impl ControlPlane {
    /// Starts the API (in-process unless `RUNC_ETCD_TEST_KUBECONFIG` is set), registers a Node
    /// per host and starts the stand-in kubelet. Call inside a multi-threaded tokio runtime.
    pub async fn start(lab: &Lab, bin: &Path) -> crate::Result<ControlPlane> {
        let dir = lab.dir.clone();
        let namespace = format!("runc-etcd-lab{}", lab.id);
        let operator_kubeconfig = dir.join("kubeconfig-operator");
        let local_kubeconfig = dir.join("kubeconfig");
        let write = |path: &Path, text: &str| runc_etcd_host::write_atomic(path, text.as_bytes(), 0o600);
        let json = |kc: &Kubeconfig| serde_json::to_string_pretty(kc).expect("a kubeconfig serializes");
        let mut tasks = Vec::new();
        let (server, client, on_lan) = match std::env::var_os(REAL_CLUSTER_ENV) {
            Some(path) => {
                let local = external::self_contained(Path::new(&path), &namespace)?;
                let server = external::server_of(&local).unwrap_or_default();
                let on_lan = netns::bind_in(&lab.client_ns(), (lab.net.gateway(), 0).into())
                    .map_err(io("binding the API relay on the lab LAN"))?;
                let (relay, task) = external::relay(on_lan, &server).await?;
                tasks.push(task);
                let on_lan = external::through_relay(&local, relay)?;
                write(&local_kubeconfig, &json(&local))?;
                let config = kube::Config::from_custom_kubeconfig(local, &Default::default())
                    .await
                    .map_err(|e| crate::Error::transient("kubeconfig", e))?;
                (None, kube::Client::try_from(config)?, on_lan)
            }
            None => {
                let local = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("binding the API server"))?;
                let on_lan = netns::bind_in(&lab.client_ns(), (lab.net.gateway(), 0).into())
                    .map_err(io("binding on the lab LAN"))?;
                let lan_addr = on_lan.local_addr().map_err(io("lab address"))?;
                let server = ApiServer::serve(vec![
                    (local, Access::AdminWithoutToken),
                    (on_lan, Access::TokenRequired),
                ])
                .map_err(io("starting the API server"))?;
                let on_lan: Kubeconfig = serde_saphyr::from_str(&kubeconfig(&format!("http://{lan_addr}"), &namespace))
                    .expect("a valid kubeconfig");
                write(&local_kubeconfig, &kubeconfig(&server.url(), &namespace))?;
                let client = server.client();
                (Some(server), client, on_lan)
            }
        };
        // A lab with this number that a killed run left on a shared cluster goes first.
        release(&client, &namespace, lab.id).await?;
        install_crds(&client).await?;
        create_namespace(&client, &namespace).await?;
        let cluster_namespaces = vec![namespace.clone()];
        chart::install(&client, lab.id, &namespace, &cluster_namespaces).await?;
        let operator_token = dir.join("operator-token");
        write(&operator_token, &token_of(&client, &namespace, OPERATOR_SA).await?)?;
        let operator = with_token_file(&on_lan, &operator_token.to_string_lossy());
        write(&operator_kubeconfig, &json(&operator))?;
        let text = json(&with_token_file(&on_lan, &format!("{SA_DIR}/token")));
        for h in &lab.hosts {
            let path = h.path(HOST_KUBECONFIG);
            std::fs::create_dir_all(path.parent().expect("has a parent")).map_err(io("kubeconfig dir"))?;
            runc_etcd_host::write_atomic(&path, text.as_bytes(), 0o600)?;
        }
        let mut cp = ControlPlane {
            server,
            client,
            namespace,
            operator_kubeconfig,
            local_kubeconfig,
            cluster_namespaces: tokio::sync::Mutex::new(cluster_namespaces),
            dir,
            bin: bin.to_path_buf(),
            switch_ns: lab.client_ns(),
            hosts: lab.hosts.clone(),
            lab_id: lab.id,
            operators: Vec::new(),
            tasks,
        };
        for h in &lab.hosts {
            cp.register_node(h, &BTreeMap::new()).await?;
        }
        let kubelet = super::kubelet::Kubelet {
            client: cp.client.clone(),
            hosts: lab.hosts.clone(),
            node_names: lab.hosts.iter().map(|h| cp.node_name(h)).collect(),
            tokens: BTreeMap::new(),
        };
        cp.tasks.push(tokio::spawn(kubelet.run()));
        Ok(cp)
    }

    /// Stops the lab's operators and takes what it made off the API server: its Nodes, and its
    /// namespace with every object in it (finalizers dropped: no operator or agent is left to
    /// honour them). What matters on a shared real cluster; the in-process one goes anyway.
    pub async fn release(&mut self) -> crate::Result<()> {
        for i in 0..self.operators.len() {
            self.kill_operator(i);
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
        release(&self.client, &self.namespace, self.lab_id).await
    }

    /// Makes another namespace for clusters, labelled with the lab so that `release` takes it
    /// too, and adds it to the chart's `clusterNamespaces` (a `helm upgrade`).
    pub async fn create_namespace(&self, name: &str) -> crate::Result<()> {
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"runc-etcd.io/lab": self.lab_id.to_string()}}
        }))
        .expect("a valid Namespace");
        namespaces.create(&Default::default(), &ns).await?;
        let mut all = self.cluster_namespaces.lock().await;
        all.push(name.to_string());
        chart::install(&self.client, self.lab_id, &self.namespace, &all).await
    }

    /// The Node name of a lab host (unique per lab, so labs can share a real cluster).
    pub fn node_name(&self, h: &LabHost) -> String {
        format!("lab{}-{}", self.lab_id, h.name())
    }

    /// Creates (or relabels) the host's Node: Ready, with its address as InternalIP.
    pub async fn register_node(&self, h: &LabHost, labels: &BTreeMap<String, String>) -> crate::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = self.node_name(h);
        let mut all = labels.clone();
        all.insert("kubernetes.io/hostname".into(), name.clone());
        all.insert("runc-etcd.io/lab".into(), self.lab_id.to_string());
        let node = json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": all},
            "spec": {},
        });
        nodes
            .patch(
                &name,
                &PatchParams::apply("runc-etcd-lab").force(),
                &Patch::Apply(&node),
            )
            .await?;
        self.set_node_ready(h, true).await
    }

    /// Sets the Node's Ready condition, as a kubelet (True) or the node lifecycle controller
    /// (False, for a host that stopped answering) would.
    pub async fn set_node_ready(&self, h: &LabHost, ready: bool) -> crate::Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let name = self.node_name(h);
        let (status, reason) = if ready {
            ("True", "LabHostRunning")
        } else {
            ("False", "NodeStatusUnknown")
        };
        // Room for pods: a real cluster's scheduler binds the DaemonSet controller's pods only to
        // a Node with allocatable pods, cpu and memory.
        let room = json!({"cpu": "2", "memory": "4Gi", "pods": "110"});
        let status = json!({"status": {
            "addresses": [{"type": "InternalIP", "address": h.ip().to_string()}, {"type": "Hostname", "address": name}],
            "conditions": [{"type": "Ready", "status": status, "reason": reason, "message": "a simulated host"}],
            "capacity": room, "allocatable": room,
        }});
        nodes
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&status))
            .await?;
        Ok(())
    }

    /// Starts an operator in the lab's LAN; `env` adds variables (e.g. a failpoint). Returns its index.
    pub fn start_operator(&mut self, env: &[(&str, &str)]) -> crate::Result<usize> {
        let i = self.operators.len();
        let log = std::fs::File::create(self.dir.join(format!("operator-{i}.log"))).map_err(io("operator log"))?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.switch_ns))
            .arg("--")
            .arg(self.bin.join("runc-etcd"))
            .args(["operator", "--namespace", &self.namespace, "--lease-seconds", "4"])
            .args(["--identity", &format!("operator-{i}")])
            .env("KUBECONFIG", &self.operator_kubeconfig)
            .env("RUNC_ETCD_LOG", "runc_etcd=debug,info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("operator log"))?)
            .stderr(log);
        for (k, v) in env {
            cmd.env(k, v);
        }
        self.operators.push(cmd.spawn().map_err(io("starting the operator"))?);
        Ok(i)
    }

    /// Kills operator `i` with SIGKILL (no chance to clean up) and reaps it.
    pub fn kill_operator(&mut self, i: usize) {
        let child = &mut self.operators[i];
        let _ = child.kill();
        let _ = child.wait();
    }

    /// How many operators were started (the newest is the last index).
    pub fn operators(&self) -> usize {
        self.operators.len()
    }

    /// The process ID of operator `i` (nsenter executes the operator in its own process).
    pub fn operator_pid(&self, i: usize) -> u32 {
        self.operators[i].id()
    }

    /// Whether operator `i` has exited, with its exit code.
    pub fn operator_exit(&mut self, i: usize) -> Option<i32> {
        self.operators[i]
            .try_wait()
            .ok()
            .flatten()
            .map(|s| s.code().unwrap_or(-1))
    }

    pub fn operator_log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("operator-{i}.log"))).unwrap_or_default()
    }

    /// The journal of the agent units on every host (for test failure messages).
    pub fn agent_logs(&self, lines: u32) -> String {
        self.hosts
            .iter()
            .map(|h| {
                let out = h
                    .exec(&[
                        "sh",
                        "-c",
                        &format!("journalctl -u 'runc-etcd-agent-*' --no-pager -n {lines} -o cat"),
                    ])
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                format!("--- {}\n{out}", h.name())
            })
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for i in 0..self.operators.len() {
            self.kill_operator(i);
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

async fn create_namespace(client: &kube::Client, name: &str) -> crate::Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
    api.patch(name, &PatchParams::apply("runc-etcd-lab").force(), &Patch::Apply(&ns))
        .await?;
    Ok(())
}

async fn drop_finalizers<K>(client: &kube::Client, ns: &str) -> crate::Result<()>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(client.clone(), ns);
    let unfinalize = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    for o in api.list(&ListParams::default()).await?.items {
        let name = o.meta().name.clone().unwrap_or_default();
        match api.patch(&name, &PatchParams::default(), &unfinalize).await {
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            other => drop(other?),
        }
    }
    Ok(())
}

/// Deletes lab `id`'s Nodes and namespace `ns`, first dropping the finalizers of the project's
/// objects in it, then waits until the namespace is gone (a real cluster empties it first).
async fn release(client: &kube::Client, ns: &str, id: u8) -> crate::Result<()> {
    use runc_etcd_api::{EtcdBackup, EtcdCluster, EtcdMember};
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mine = ListParams::default().labels(&format!("runc-etcd.io/lab={id}"));
    // The lab's namespace, and those it made for clusters (`create_namespace`).
    let mut all = vec![ns.to_string()];
    for n in namespaces.list(&mine).await?.items {
        all.extend(n.metadata.name);
    }
    for ns in &all {
        drop_finalizers::<EtcdBackup>(client, ns).await?;
        drop_finalizers::<EtcdMember>(client, ns).await?;
        drop_finalizers::<EtcdCluster>(client, ns).await?;
    }
    // Nodes first: on a real cluster the agent pods bound to them are only let go (by the pod
    // garbage collector) once their Node is gone, and the namespace waits for its pods.
    let nodes: Api<Node> = Api::all(client.clone());
    for n in nodes.list(&mine).await?.items {
        delete_if_present(&nodes, n.metadata.name.as_deref().unwrap_or_default()).await?;
    }
    for ns in &all {
        delete_if_present(&namespaces, ns).await?;
    }
    chart::remove(client, id).await?;
    for _ in 0..360 {
        let mut left = Vec::new();
        for ns in &all {
            if namespaces.get_opt(ns).await?.is_some() {
                left.push(ns.clone());
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    Err(crate::Error::transient(
        "releasing the lab",
        format!("namespaces {all:?} are still there after three minutes"),
    ))
}

async fn install_crds(client: &kube::Client) -> crate::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in runc_etcd_api::crds() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply("runc-etcd-lab").force(), &Patch::Apply(&crd))
            .await?;
    }
    Ok(())
}
