//! The objects the controller makes for a cluster, built as plain values (pure, unit-tested) and
//! written with server-side apply: the agent DaemonSet, the client Service and its EndpointSlice,
//! the TLS Secrets and the EtcdMembers. All are owned by the EtcdCluster and carry its label.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{DaemonSet, DaemonSetSpec, DaemonSetUpdateStrategy, RollingUpdateDaemonSet};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, HostPathVolumeSource, ObjectFieldSelector, PodSpec, PodTemplateSpec, Secret,
    SecurityContext, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Resource;

use runc_etcd_api::contract::{
    AGENT_HOST_PATHS, CLUSTER_LABEL, ClusterNames, DEFAULT_BACKUP_DIR, IMAGE_RUNC, MEMBER_FINALIZER, NODE_LABEL,
    member_secret, node_label,
};
use runc_etcd_api::{EtcdCluster, EtcdMember, EtcdMemberSpec, InitialClusterState};
use runc_etcd_host::pki::{ClientTls, IssuedCerts};

pub const MANAGER: &str = "runc-etcd-operator";

/// What the DaemonSet runs, and where; set by the operator's flags (its own image, by default).
#[derive(Debug, Clone)]
pub struct AgentImage {
    pub image: String,
    pub service_account: String,
    /// The agent pods' PriorityClass (None: none).
    pub priority_class: Option<String>,
    /// Where the agent DaemonSets live: the operator's own namespace, never the cluster's, so
    /// that deleting a cluster's namespace cannot take its agents before they have retired its
    /// members (README "Deleting a namespace").
    pub namespace: String,
}

/// The agent DaemonSet's name in the operator's namespace: unique across the clusters'
/// namespaces (`<namespace>.<cluster>-agent`; a namespace has no dot, so no two clusters meet).
pub fn agent_daemonset_name(c: &EtcdCluster) -> String {
    format!("{}.{}", c.ns(), c.agent_name())
}

/// The label that names an agent DaemonSet's cluster namespace (its cluster's name is in
/// CLUSTER_LABEL).
pub const CLUSTER_NAMESPACE_LABEL: &str = "runc-etcd.io/cluster-namespace";

fn owner(c: &EtcdCluster) -> OwnerReference {
    c.controller_owner_ref(&())
        .expect("an EtcdCluster from the API server has a uid")
}

fn meta(c: &EtcdCluster, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: c.meta().namespace.clone(),
        labels: Some(BTreeMap::from([
            (CLUSTER_LABEL.to_string(), c.name()),
            ("app.kubernetes.io/managed-by".to_string(), "runc-etcd".to_string()),
        ])),
        owner_references: Some(vec![owner(c)]),
        ..Default::default()
    }
}

/// The agent DaemonSet: one privileged pod per eligible node (the cluster's node selector and
/// tolerations), talking to the host's systemd.
/// `restore_dir`: the host folder of the backup a new seed restores from, when it is another
/// than the cluster's own (a cluster restored from another's host-folder backup).
pub fn agent_daemonset(c: &EtcdCluster, agent: &AgentImage, restore_dir: Option<&std::path::Path>) -> DaemonSet {
    let mut host_paths: Vec<(String, String)> = AGENT_HOST_PATHS
        .iter()
        .map(|(n, p)| (n.to_string(), p.to_string()))
        .collect();
    // A host-folder backup destination is mounted too, once checked (a folder of its own: it
    // overlaps none of the above).
    let backup_dir = c
        .spec
        .backup
        .as_ref()
        .and_then(|b| b.host_path.as_ref())
        .and_then(|h| crate::backup::check_host_path(&h.path).ok());
    // The default lies in the state folder, mounted already.
    if let Some(dir) = backup_dir
        .as_deref()
        .filter(|d| *d != std::path::Path::new(DEFAULT_BACKUP_DIR))
    {
        host_paths.push(("backups".into(), dir.display().to_string()));
    }
    // The agents run in a pod that sees only these folders: a restore reads its snapshot there.
    if let Some(dir) =
        restore_dir.filter(|d| *d != std::path::Path::new(DEFAULT_BACKUP_DIR) && Some(*d) != backup_dir.as_deref())
    {
        host_paths.push(("restore".into(), dir.display().to_string()));
    }
    let labels = BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "runc-etcd-agent".to_string()),
        (CLUSTER_LABEL.to_string(), c.name()),
    ]);
    let env_node = EnvVar {
        name: "NODE_NAME".into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "spec.nodeName".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let container = Container {
        name: "agent".into(),
        image: Some(agent.image.clone()),
        args: Some(
            [
                "agent",
                "--namespace",
                &c.ns(),
                "--cluster",
                &c.name(),
                "--node",
                "$(NODE_NAME)",
                "--metrics-address",
                &format!("0.0.0.0:{}", c.spec.ports.agent),
                "--install-runc",
                IMAGE_RUNC,
                "--keep-archives",
                &c.spec.recovery.keep_archives.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        ),
        env: Some(vec![env_node]),
        // Root and privileged: it writes unit files and member data on the host, talks to the
        // host's systemd, and runs runc (the image's default user is the operator's non-root one).
        security_context: Some(SecurityContext {
            privileged: Some(true),
            run_as_user: Some(0),
            run_as_non_root: Some(false),
            ..Default::default()
        }),
        volume_mounts: Some(
            host_paths
                .iter()
                .map(|(name, path)| VolumeMount {
                    name: name.clone(),
                    mount_path: path.clone(),
                    ..Default::default()
                })
                .collect(),
        ),
        ..Default::default()
    };
    let volumes = host_paths
        .iter()
        .map(|(name, path)| Volume {
            name: name.clone(),
            host_path: Some(HostPathVolumeSource {
                path: path.clone(),
                type_: Some("DirectoryOrCreate".into()),
            }),
            ..Default::default()
        })
        .collect();
    let spec = &c.spec;
    // No owner: an owner must be in the same namespace. The operator deletes it once the
    // cluster's members are retired (finalize).
    let mut metadata = meta(c, agent_daemonset_name(c));
    metadata.namespace = Some(agent.namespace.clone());
    metadata.owner_references = None;
    if let Some(l) = metadata.labels.as_mut() {
        l.insert(CLUSTER_NAMESPACE_LABEL.into(), c.ns());
    }
    DaemonSet {
        metadata,
        spec: Some(DaemonSetSpec {
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..Default::default()
            },
            // An agent restart never touches etcd (systemd runs it), so one node at a time is
            // only about not losing every agent at once.
            update_strategy: Some(DaemonSetUpdateStrategy {
                type_: Some("RollingUpdate".into()),
                rolling_update: Some(RollingUpdateDaemonSet {
                    max_unavailable: Some(IntOrString::Int(1)),
                    ..Default::default()
                }),
            }),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..Default::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(agent.service_account.clone()),
                    host_network: Some(true),
                    host_pid: Some(true),
                    node_selector: (!spec.node_selector.is_empty()).then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    priority_class_name: agent.priority_class.clone(),
                    containers: vec![container],
                    volumes: Some(volumes),
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        status: None,
    }
}

/// The client Service: no selector (members are not pods); its EndpointSlice lists the members.
pub fn client_service(c: &EtcdCluster) -> Service {
    Service {
        metadata: meta(c, c.client_service()),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("client".into()),
                port: c.spec.ports.client,
                target_port: Some(IntOrString::Int(c.spec.ports.client)),
                protocol: Some("TCP".into()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

/// The Service's endpoints: every member address, ready when that member is healthy.
pub fn client_endpoints(c: &EtcdCluster, members: &[(String, String, bool)]) -> EndpointSlice {
    let mut m = meta(c, c.client_service());
    m.labels
        .get_or_insert_default()
        .insert("kubernetes.io/service-name".into(), c.client_service());
    m.labels
        .get_or_insert_default()
        .insert("endpointslice.kubernetes.io/managed-by".into(), "runc-etcd.io".into());
    EndpointSlice {
        metadata: m,
        address_type: "IPv4".into(),
        endpoints: members
            .iter()
            .map(|(ip, node, ready)| Endpoint {
                addresses: vec![ip.clone()],
                node_name: Some(node.clone()),
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ports: Some(vec![EndpointPort {
            name: Some("client".into()),
            port: Some(c.spec.ports.client),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    }
}

fn secret(c: &EtcdCluster, name: String, files: &[(&str, &str)]) -> Secret {
    Secret {
        metadata: meta(c, name),
        type_: Some("Opaque".into()),
        data: Some(
            files
                .iter()
                .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Default::default()
    }
}

pub fn ca_secret(c: &EtcdCluster, ca: &runc_etcd_host::pki::Ca) -> Secret {
    secret(c, c.ca_secret(), &[("ca.crt", &ca.cert), ("ca.key", &ca.key)])
}

/// A client identity for users and the controller (`tls.crt`/`tls.key`, as kubernetes.io/tls).
pub fn client_secret(c: &EtcdCluster, tls: &ClientTls) -> Secret {
    secret(
        c,
        c.client_secret(),
        &[("ca.crt", &tls.ca), ("tls.crt", &tls.cert), ("tls.key", &tls.key)],
    )
}

/// An application's client identity (`spec.tls.clients`), labelled with its name.
pub fn app_secret(c: &EtcdCluster, app: &str, tls: &ClientTls) -> Secret {
    let mut s = secret(
        c,
        c.app_secret(app),
        &[("ca.crt", &tls.ca), ("tls.crt", &tls.cert), ("tls.key", &tls.key)],
    );
    s.metadata
        .labels
        .get_or_insert_default()
        .insert(runc_etcd_api::contract::APP_LABEL.into(), app.into());
    s
}

/// A member's certificates, signed for the key its host holds: no private key.
pub fn member_tls_secret(c: &EtcdCluster, member: &str, certs: &IssuedCerts) -> Secret {
    secret(
        c,
        member_secret(member),
        &[
            ("ca.crt", &certs.ca_cert),
            ("server.crt", &certs.server),
            ("peer.crt", &certs.peer),
            ("client.crt", &certs.client),
        ],
    )
}

/// The agents' Role in the cluster's namespace (`<cluster>-agent`): `get` on exactly the
/// Secrets they read, by name — the members' certificates and the backups' S3 credentials —
/// and so never the CA's or an application's. With no name to give, no rule: a rule with an
/// empty `resourceNames` would grant every Secret.
pub fn agent_role(c: &EtcdCluster, secrets: &std::collections::BTreeSet<String>) -> Role {
    let rules = (!secrets.is_empty()).then(|| {
        vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["secrets".into()]),
            resource_names: Some(secrets.iter().cloned().collect()),
            verbs: vec!["get".into()],
            ..Default::default()
        }]
    });
    Role {
        metadata: meta(c, c.agent_name()),
        rules: Some(rules.unwrap_or_default()),
    }
}

/// Binds `agent_role` to the agents' ServiceAccount (in the operator's namespace).
pub fn agent_role_binding(c: &EtcdCluster, agent: &AgentImage) -> RoleBinding {
    RoleBinding {
        metadata: meta(c, c.agent_name()),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: c.agent_name(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: agent.service_account.clone(),
            namespace: Some(agent.namespace.clone()),
            ..Default::default()
        }]),
    }
}

/// A member as the controller plans it.
#[derive(Debug, Clone)]
pub struct PlannedMember {
    pub name: String,
    pub node: String,
    pub ip: String,
    pub initial_cluster: Vec<String>,
    pub state: InitialClusterState,
    /// The EtcdBackup a restored cluster's seed starts from.
    pub restore_from: Option<String>,
}

pub fn scheme(c: &EtcdCluster) -> &'static str {
    if c.spec.tls.enabled { "https" } else { "http" }
}

pub fn peer_url(c: &EtcdCluster, ip: &str) -> String {
    format!("{}://{ip}:{}", scheme(c), c.spec.ports.peer)
}

pub fn client_url(c: &EtcdCluster, ip: &str) -> String {
    format!("{}://{ip}:{}", scheme(c), c.spec.ports.client)
}

/// The image the members run: `image` as given, else `<repository>:v<version>`.
pub fn image(c: &EtcdCluster) -> String {
    match (&c.spec.image, &c.spec.repository) {
        (Some(image), _) => image.clone(),
        (None, Some(repo)) => format!("{repo}:v{}", c.spec.version),
        (None, None) => format!("gcr.io/etcd-development/etcd:v{}", c.spec.version),
    }
}

/// The cluster's etcd settings as its members carry them (None: all defaults).
pub fn tuning(c: &EtcdCluster) -> Option<runc_etcd_api::EtcdTuning> {
    (c.spec.etcd != runc_etcd_api::EtcdTuning::default()).then(|| c.spec.etcd.clone())
}

pub fn etcd_member(c: &EtcdCluster, p: &PlannedMember) -> EtcdMember {
    let mut m = EtcdMember::new(
        &p.name,
        EtcdMemberSpec {
            cluster: c.name(),
            member_name: p.name.clone(),
            node_name: p.node.clone(),
            ip: p.ip.clone(),
            client_port: c.spec.ports.client,
            peer_port: c.spec.ports.peer,
            initial_cluster: p.initial_cluster.clone(),
            initial_cluster_state: p.state,
            image: image(c),
            tls_secret: c.spec.tls.enabled.then(|| member_secret(&p.name)),
            etcd: tuning(c),
            next_image: None,
            restore_from: p.restore_from.clone(),
            restore_bump_revision: p.restore_from.is_some() && c.spec.recovery.bump_revision_on_restore,
            cluster_token: c.status.as_ref().and_then(|s| s.cluster_token.clone()),
        },
    );
    let mut md = meta(c, p.name.clone());
    md.labels
        .get_or_insert_default()
        .insert(NODE_LABEL.into(), node_label(&p.node));
    md.finalizers = Some(vec![MEMBER_FINALIZER.into()]);
    m.metadata = md;
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(yaml: &str) -> EtcdCluster {
        let mut c: EtcdCluster = serde_saphyr::from_str(yaml).unwrap();
        c.metadata.uid = Some("uid-1".into());
        c.metadata.namespace = Some("prod".into());
        c
    }

    const SPEC: &str = "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata: {name: main}\nspec:\n  version: 3.5.16\n  repository: registry.local/etcd\n  nodeSelector: {etcd: \"yes\"}\n  tolerations: [{key: dedicated, operator: Exists, effect: NoSchedule}]\n";

    #[test]
    fn the_daemonset_follows_the_cluster_placement() {
        let c = cluster(SPEC);
        let agent = AgentImage {
            image: "runc-etcd:1".into(),
            service_account: "runc-etcd-agent".into(),
            priority_class: Some("etcd-agents".into()),
            namespace: "runc-etcd-system".into(),
        };
        let ds = agent_daemonset(&c, &agent, None);
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.priority_class_name.as_deref(), Some("etcd-agents"));
        assert_eq!(pod.node_selector.unwrap()["etcd"], "yes");
        assert_eq!(pod.tolerations.unwrap()[0].key.as_deref(), Some("dedicated"));
        let args = pod.containers[0].args.clone().unwrap();
        assert_eq!(args[..5], ["agent", "--namespace", "prod", "--cluster", "main"]);
        assert!(args.ends_with(&["--keep-archives".into(), "3".into()]), "{args:?}");
        // It lives beside the operator, unowned (an owner must share its namespace), and its
        // labels name the cluster so the controller can map it back.
        assert_eq!(ds.metadata.namespace.as_deref(), Some("runc-etcd-system"));
        assert_eq!(ds.metadata.name.as_deref(), Some("prod.main-agent"));
        assert!(ds.metadata.owner_references.is_none());
        let labels = ds.metadata.labels.unwrap();
        assert_eq!(labels[CLUSTER_LABEL], "main");
        assert_eq!(labels[CLUSTER_NAMESPACE_LABEL], "prod");
    }

    #[test]
    fn members_carry_the_agent_finalizer_and_node_label() {
        let c = cluster(SPEC);
        let p = PlannedMember {
            name: "main-abcde".into(),
            node: "n1".into(),
            ip: "10.0.0.1".into(),
            initial_cluster: vec!["main-abcde=https://10.0.0.1:2380".into()],
            state: InitialClusterState::New,
            restore_from: None,
        };
        let m = etcd_member(&c, &p);
        assert_eq!(m.metadata.finalizers.unwrap(), [MEMBER_FINALIZER]);
        assert_eq!(m.metadata.labels.unwrap()[NODE_LABEL], "n1");
        assert_eq!(m.spec.image, "registry.local/etcd:v3.5.16");
        assert_eq!(m.spec.tls_secret.as_deref(), Some("main-abcde-tls"));
        assert_eq!(peer_url(&c, "10.0.0.1"), "https://10.0.0.1:2380");
    }

    #[test]
    fn secrets_round_trip() {
        let c = cluster(SPEC);
        let ca = runc_etcd_host::pki::new_ca("main").unwrap();
        let policy = runc_etcd_host::pki::Policy::default();
        let key = runc_etcd_host::pki::new_key().unwrap();
        let name = "m1".parse().unwrap();
        let csr = runc_etcd_host::pki::request(&name, &key).unwrap();
        let certs =
            runc_etcd_host::pki::issue_requested(&ca, &name, "10.0.0.1".parse().unwrap(), &policy, &csr).unwrap();
        let s = member_tls_secret(&c, "m1", &certs);
        assert!(
            s.data.as_ref().unwrap().keys().all(|k| k.ends_with(".crt")),
            "no private key in a member's Secret"
        );
        let back = runc_etcd_api::contract::read_member_certs(&s).unwrap();
        assert_eq!(back, certs);
        assert_eq!(
            runc_etcd_api::contract::read_keyring(&ca_secret(&c, &ca))
                .unwrap()
                .signing
                .key,
            ca.key
        );
    }
}
