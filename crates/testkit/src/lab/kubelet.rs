//! The stand-in kubelet of the lab's hosts: it runs the pods bound to their Nodes (made by the
//! DaemonSet controller: the API server's, or a real cluster's) as `runc-etcd agent` services
//! inside the hosts, with the pod's arguments and its ServiceAccount's token at the standard
//! path. A pod being deleted is stopped, then let go (deleted again with a grace period of 0),
//! as a kubelet does; on a powered-off host it stays Terminating until its Node goes. It also
//! renews each running host's node Lease.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

use super::LabHost;
use super::control::{HOST_KUBECONFIG, PODS_DIR, SA_DIR, io, token_of};

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
    args: Vec<String>,
    namespace: String,
    token: String,
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
            let args = spec.containers[0].args.clone().unwrap_or_default();
            let args = args.iter().map(|a| a.replace("$(NODE_NAME)", &node)).collect();
            want.insert((unit_for(&pod), i), Agent { args, namespace, token });
        }
        for (key, agent) in &want {
            if running.get(key) != Some(agent) || recheck {
                let (unit, h) = (key.0.clone(), self.hosts[key.1].clone());
                let (agent, node) = (agent.clone(), self.node_names[key.1].clone());
                let started = tokio::task::spawn_blocking(move || start_agent(&h, &unit, &node, &agent))
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

fn start_agent(h: &LabHost, unit: &str, node: &str, agent: &Agent) -> crate::Result<()> {
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
    // The pod's token, at the standard path in the unit's own mount namespace.
    let account = format!("{PODS_DIR}/{unit}/serviceaccount");
    std::fs::create_dir_all(h.path(&account)).map_err(io("the pod's token folder"))?;
    std::fs::create_dir_all(h.path(SA_DIR)).map_err(io("the token mount point"))?;
    runc_etcd_host::write_atomic(&h.path(&format!("{account}/token")), agent.token.as_bytes(), 0o600)?;
    runc_etcd_host::write_atomic(
        &h.path(&format!("{account}/namespace")),
        agent.namespace.as_bytes(),
        0o644,
    )?;
    let mut cmd: Vec<String> = [
        "systemd-run",
        "--unit",
        unit,
        "-p",
        "Restart=always",
        "-p",
        "RestartSec=1",
        "-p",
        &format!("BindReadOnlyPaths={account}:{SA_DIR}"),
    ]
    .map(String::from)
    .to_vec();
    for env in [
        format!("KUBECONFIG={HOST_KUBECONFIG}"),
        format!("NODE_NAME={node}"),
        format!("RUNC_ETCD_INSECURE_REGISTRIES={}", h.insecure_registries),
        "RUNC_ETCD_LOG=runc_etcd=debug,info".into(),
    ] {
        cmd.push(format!("--setenv={env}"));
    }
    cmd.push("/opt/lab/bin/runc-etcd".into());
    cmd.extend(agent.args.iter().cloned());
    let refs: Vec<&str> = cmd.iter().map(String::as_str).collect();
    h.check(&refs)
        .map_err(|e| crate::Error::transient("starting an agent", e))?;
    Ok(())
}
