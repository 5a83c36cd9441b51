//! The stand-in kubelet of the lab's hosts: it runs the pods bound to their Nodes (made by the
//! DaemonSet controller: the API server's, or a real cluster's) as systemd services inside the
//! hosts, each as a container runtime would run it:
//! - its root is the image's root file system (`pod_image`: the image built from the
//!   Dockerfile), under a writable overlay of its own;
//! - it sees only the volumes its pod declares (hostPath) at their mount paths, and its
//!   ServiceAccount's token at the standard path;
//! - it runs the image's entrypoint with the container's arguments, `$(VAR)` expanded from its
//!   env, fieldRefs resolved (`spec.nodeName`, `metadata.name`, `metadata.namespace`,
//!   `status.hostIP`), as the securityContext's user (else the image's);
//! - on the host's network and PID namespace (every lab pod is hostNetwork and hostPID).
//!
//! Three things a real node provides otherwise come from the lab: the API server's address, as a
//! kubeconfig beside the token (no kube-proxy routes the `kubernetes` Service here), the lab
//! registry as an insecure one, and debug logging. A pod being deleted is stopped, then let go
//! (deleted again with a grace period of 0), as a kubelet does; on a powered-off host it stays
//! Terminating until its Node goes. It also renews each running host's node Lease.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use super::LabHost;
use super::control::{HOST_KUBECONFIG, PODS_DIR, SA_DIR, io, token_of};
use super::pod_image::IMAGE_ROOT;

pub struct Kubelet {
    pub client: kube::Client,
    pub hosts: Vec<LabHost>,
    pub node_names: Vec<String>,
    /// ServiceAccount tokens by (namespace, name).
    pub tokens: BTreeMap<(String, String), String>,
}

/// The unit a pod runs as on its host: named after the pod's DaemonSet, so that a pod replaced
/// by a new one (a template change) is the same unit restarted.
fn unit_for(pod: &Pod) -> String {
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .next()
        .map(|o| o.name.clone())
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default();
    format!(
        "runc-etcd-agent-{}-{owner}",
        pod.metadata.namespace.as_deref().unwrap_or("default")
    )
}

/// What the kubelet runs for a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Agent {
    /// The container's arguments, expanded.
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// hostPath volumes: (path on the host, mount path, read-only).
    mounts: Vec<(String, String, bool)>,
    /// The hostPaths of type DirectoryOrCreate.
    create: Vec<String>,
    user: Option<i64>,
    namespace: String,
    token: String,
}

/// What a pod's container runs with: its env (fieldRefs resolved), arguments (`$(VAR)`
/// expanded), hostPath mounts and user. An env source or volume this stand-in cannot provide
/// is an error, as a kubelet's `CreateContainerConfigError`.
/// (arguments, env, hostPath mounts, the DirectoryOrCreate paths, user)
type Container = (
    Vec<String>,
    Vec<(String, String)>,
    Vec<(String, String, bool)>,
    Vec<String>,
    Option<i64>,
);

fn container(pod: &Pod, node: &str, host_ip: &str) -> Result<Container, String> {
    let spec = pod.spec.clone().unwrap_or_default();
    let c = spec.containers.first().ok_or("a pod without containers")?;
    let mut env = Vec::new();
    for e in c.env.iter().flatten() {
        let value = match (&e.value, e.value_from.as_ref().and_then(|f| f.field_ref.as_ref())) {
            (Some(v), _) => v.clone(),
            (None, Some(field)) => match field.field_path.as_str() {
                "spec.nodeName" => node.to_string(),
                "metadata.name" => pod.metadata.name.clone().unwrap_or_default(),
                "metadata.namespace" => pod.metadata.namespace.clone().unwrap_or_default(),
                "status.hostIP" | "status.podIP" => host_ip.to_string(),
                other => return Err(format!("env {}: fieldRef {other} is not provided here", e.name)),
            },
            (None, None) if e.value_from.is_none() => String::new(),
            (None, None) => return Err(format!("env {}: only values and fieldRefs are provided here", e.name)),
        };
        env.push((e.name.clone(), value));
    }
    let expand = |arg: &String| {
        env.iter()
            .fold(arg.clone(), |a, (k, v)| a.replace(&format!("$({k})"), v))
    };
    let args = c.args.iter().flatten().map(expand).collect();
    let (mut mounts, mut create) = (Vec::new(), Vec::new());
    for m in c.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .ok_or_else(|| format!("volumeMount {}: no such volume", m.name))?;
        let path = volume
            .host_path
            .as_ref()
            .ok_or_else(|| format!("volume {}: only hostPath volumes are provided here", m.name))?;
        mounts.push((path.path.clone(), m.mount_path.clone(), m.read_only == Some(true)));
        if path.type_.as_deref() == Some("DirectoryOrCreate") {
            create.push(path.path.clone());
        }
    }
    let user = c.security_context.as_ref().and_then(|s| s.run_as_user);
    Ok((args, env, mounts, create, user))
}

impl Kubelet {
    pub async fn run(mut self) {
        let mut running: BTreeMap<(String, usize), Agent> = BTreeMap::new();
        let mut tick = 0u32;
        loop {
            if let Err(e) = self.sync(&mut running, tick.is_multiple_of(20)).await {
                tracing::debug!("lab kubelet: {e}");
            }
            tick += 1;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The token of a pod's ServiceAccount (the TokenRequest API, as a kubelet gets it).
    async fn token(&mut self, namespace: &str, account: &str) -> crate::Result<String> {
        let key = (namespace.to_string(), account.to_string());
        if let Some(t) = self.tokens.get(&key) {
            return Ok(t.clone());
        }
        let t = token_of(&self.client, namespace, account).await?;
        self.tokens.insert(key, t.clone());
        Ok(t)
    }

    async fn sync(&mut self, running: &mut BTreeMap<(String, usize), Agent>, recheck: bool) -> crate::Result<()> {
        if recheck {
            let nodes = Api::<Node>::all(self.client.clone())
                .list(&ListParams::default())
                .await?
                .items;
            self.heartbeat(&nodes).await?;
        }
        let pods = Api::<Pod>::all(self.client.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let mut want: BTreeMap<(String, usize), Agent> = BTreeMap::new();
        let mut terminating: Vec<(Pod, usize)> = Vec::new();
        for pod in pods {
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let Some(i) = self.node_names.iter().position(|n| *n == node) else {
                continue;
            };
            if pod.metadata.deletion_timestamp.is_some() {
                terminating.push((pod, i));
                continue;
            }
            let spec = pod.spec.clone().unwrap_or_default();
            let namespace = pod.metadata.namespace.clone().unwrap_or_default();
            let account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
            let token = match self.token(&namespace, &account).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!("lab kubelet: no token for {}: {e}", unit_for(&pod));
                    continue;
                }
            };
            let (args, env, mounts, create, user) = match container(&pod, &node, &self.hosts[i].ip().to_string()) {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("lab kubelet: cannot run {}: {e}", unit_for(&pod));
                    continue;
                }
            };
            let agent = Agent {
                args,
                env,
                mounts,
                create,
                user,
                namespace,
                token,
            };
            want.insert((unit_for(&pod), i), agent);
        }
        for (key, agent) in &want {
            if running.get(key) != Some(agent) || recheck {
                let (unit, h) = (key.0.clone(), self.hosts[key.1].clone());
                let agent = agent.clone();
                let started = tokio::task::spawn_blocking(move || start_agent(&h, &unit, &agent))
                    .await
                    .expect("agent start does not panic");
                match started {
                    Ok(()) => {
                        running.insert(key.clone(), want[key].clone());
                    }
                    Err(e) => tracing::debug!("lab kubelet: {e}"),
                }
            }
        }
        let gone: Vec<_> = running.keys().filter(|k| !want.contains_key(*k)).cloned().collect();
        for key in gone {
            if self.stop(&key.0, key.1).await {
                running.remove(&key);
            }
        }
        // A pod being deleted: its containers stopped, it is let go.
        for (pod, i) in terminating {
            let unit = unit_for(&pod);
            if want.contains_key(&(unit.clone(), i)) || self.stop(&unit, i).await {
                running.remove(&(unit, i));
                let (ns, name) = (
                    pod.metadata.namespace.unwrap_or_default(),
                    pod.metadata.name.unwrap_or_default(),
                );
                Api::<Pod>::namespaced(self.client.clone(), &ns)
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await?;
            }
        }
        Ok(())
    }

    /// Stops an agent unit; false if its host is off (nothing can be stopped there).
    async fn stop(&self, unit: &str, host: usize) -> bool {
        let (unit, h) = (unit.to_string(), self.hosts[host].clone());
        if h.pid().is_none() {
            return false;
        }
        tokio::task::spawn_blocking(move || h.exec(&["systemctl", "stop", &unit]))
            .await
            .expect("agent stop does not panic")
            .is_ok()
    }

    /// Renews the node Lease of every running host, as its kubelet would: a real cluster's node
    /// lifecycle controller marks a Node whose Lease lapses (40 s) not Ready and taints it.
    async fn heartbeat(&self, nodes: &[Node]) -> crate::Result<()> {
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        for (h, name) in self.hosts.iter().zip(&self.node_names) {
            let Some(node) = nodes.iter().find(|n| n.metadata.name.as_ref() == Some(name)) else {
                continue;
            };
            if h.pid().is_none() {
                continue; // powered off: its Lease lapses
            }
            let lease = json!({
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": name, "ownerReferences": [{"apiVersion": "v1", "kind": "Node",
                    "name": name, "uid": node.metadata.uid}]},
                "spec": {"holderIdentity": name, "leaseDurationSeconds": 40,
                    "renewTime": chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()},
            });
            leases
                .patch(
                    name,
                    &PatchParams::apply("runc-etcd-lab").force(),
                    &Patch::Apply(&lease),
                )
                .await?;
        }
        Ok(())
    }
}

fn start_agent(h: &LabHost, unit: &str, agent: &Agent) -> crate::Result<()> {
    if h.pid().is_none() {
        return Err(crate::Error::transient(
            "starting an agent",
            format!("host {} is off", h.name()),
        ));
    }
    let active = h
        .exec(&["systemctl", "is-active", "--quiet", unit])
        .map(|o| o.status.success())
        .unwrap_or(false);
    if active {
        return Ok(());
    }
    let _ = h.exec(&["systemctl", "reset-failed", unit]);
    let pod = format!("{PODS_DIR}/{unit}");
    // The pod's token, and (the lab's addition) the API server's address beside it.
    let account = format!("{pod}/serviceaccount");
    std::fs::create_dir_all(h.path(&account)).map_err(io("the pod's token folder"))?;
    runc_etcd_host::write_atomic(&h.path(&format!("{account}/token")), agent.token.as_bytes(), 0o600)?;
    runc_etcd_host::write_atomic(
        &h.path(&format!("{account}/namespace")),
        agent.namespace.as_bytes(),
        0o644,
    )?;
    let kubeconfig = std::fs::read(h.path(HOST_KUBECONFIG)).map_err(io("the lab's kubeconfig"))?;
    runc_etcd_host::write_atomic(&h.path(&format!("{account}/kubeconfig")), &kubeconfig, 0o600)?;
    // Its root: the image's, under a writable overlay of its own (where mount points are made).
    let root = format!("{pod}/root");
    let mounted = h
        .exec(&["mountpoint", "-q", &root])
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !mounted {
        for d in ["upper", "work", "root"] {
            std::fs::create_dir_all(h.path(&format!("{pod}/{d}"))).map_err(io("the pod's root folders"))?;
        }
        let options = format!("lowerdir={IMAGE_ROOT},upperdir={pod}/upper,workdir={pod}/work");
        h.check(&["mount", "-t", "overlay", "overlay", "-o", &options, &root])
            .map_err(|e| crate::Error::transient("mounting a pod's root", e))?;
    }
    // Mount points, made in the pod's root as a container runtime makes them; a hostPath of
    // type DirectoryOrCreate made on the host as a kubelet makes it.
    for (path, at, _) in &agent.mounts {
        if agent.create.contains(path) {
            std::fs::create_dir_all(h.path(path)).map_err(io("a hostPath folder"))?;
        }
        std::fs::create_dir_all(h.path(&format!("{root}{at}"))).map_err(io("a mount point"))?;
    }
    std::fs::create_dir_all(h.path(&format!("{root}{SA_DIR}"))).map_err(io("the token mount point"))?;
    let mut props = vec![
        format!("RootDirectory={root}"),
        "MountAPIVFS=yes".into(),
        "Restart=always".into(),
        "RestartSec=1".into(),
        format!("BindReadOnlyPaths={account}:{SA_DIR}"),
    ];
    for (path, at, read_only) in &agent.mounts {
        let bind = if *read_only { "BindReadOnlyPaths" } else { "BindPaths" };
        props.push(format!("{bind}={path}:{at}"));
    }
    let user = agent
        .user
        .or_else(|| super::pod_image::image_user(&h.image_dir).map(i64::from));
    if let Some(user) = user {
        props.push(format!("User={user}"));
    }
    let mut cmd: Vec<String> = vec!["systemd-run".into(), "--unit".into(), unit.into()];
    for p in props {
        cmd.extend(["-p".into(), p]);
    }
    let lab_env = [
        ("KUBECONFIG".to_string(), format!("{SA_DIR}/kubeconfig")),
        ("RUNC_ETCD_INSECURE_REGISTRIES".into(), h.insecure_registries.clone()),
        ("RUNC_ETCD_LOG".into(), "runc_etcd=debug,info".into()),
    ];
    for (k, v) in agent.env.iter().chain(&lab_env) {
        cmd.push(format!("--setenv={k}={v}"));
    }
    // The image's entrypoint, with the container's arguments.
    cmd.push("/usr/local/bin/runc-etcd".into());
    cmd.extend(agent.args.iter().cloned());
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    h.check(&refs)
        .map_err(|e| crate::Error::transient("starting an agent", e))?;
    Ok(())
}
