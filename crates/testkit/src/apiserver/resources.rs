//! The resources the test API server serves: the built-in kinds the operator uses, and the
//! project's own custom resources (validated with their CRD schema).

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// Unique among the served resources (`group/plural`).
    pub key: &'static str,
    pub group: &'static str,
    pub version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
    pub status_subresource: bool,
}

impl Resource {
    pub fn key(&self) -> &'static str {
        self.key
    }
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.to_string()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }
}

const fn res(
    key: &'static str,
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status_subresource: bool,
) -> Resource {
    Resource {
        key,
        group,
        version,
        plural,
        kind,
        namespaced,
        status_subresource,
    }
}

pub static RESOURCES: &[Resource] = &[
    res("core/namespaces", "", "v1", "namespaces", "Namespace", false, true),
    res("core/nodes", "", "v1", "nodes", "Node", false, true),
    res("core/pods", "", "v1", "pods", "Pod", true, true),
    res("core/services", "", "v1", "services", "Service", true, true),
    res("core/secrets", "", "v1", "secrets", "Secret", true, false),
    res(
        "core/serviceaccounts",
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        false,
    ),
    res("core/configmaps", "", "v1", "configmaps", "ConfigMap", true, false),
    res("core/events", "", "v1", "events", "Event", true, false),
    res(
        "events.k8s.io/events",
        "events.k8s.io",
        "v1",
        "events",
        "Event",
        true,
        false,
    ),
    res("apps/daemonsets", "apps", "v1", "daemonsets", "DaemonSet", true, true),
    res(
        "discovery.k8s.io/endpointslices",
        "discovery.k8s.io",
        "v1",
        "endpointslices",
        "EndpointSlice",
        true,
        false,
    ),
    res(
        "coordination.k8s.io/leases",
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        false,
    ),
    res(
        "rbac.authorization.k8s.io/roles",
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        false,
    ),
    res(
        "rbac.authorization.k8s.io/rolebindings",
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        false,
    ),
    res(
        "rbac.authorization.k8s.io/clusterroles",
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        false,
    ),
    res(
        "rbac.authorization.k8s.io/clusterrolebindings",
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        false,
    ),
    res(
        "core/resourcequotas",
        "",
        "v1",
        "resourcequotas",
        "ResourceQuota",
        true,
        true,
    ),
    res(
        "scheduling.k8s.io/priorityclasses",
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "PriorityClass",
        false,
        false,
    ),
    // Answered, never stored (`rbac::review`).
    res(
        "authorization.k8s.io/selfsubjectaccessreviews",
        "authorization.k8s.io",
        "v1",
        "selfsubjectaccessreviews",
        "SelfSubjectAccessReview",
        false,
        false,
    ),
    res(
        "authorization.k8s.io/subjectaccessreviews",
        "authorization.k8s.io",
        "v1",
        "subjectaccessreviews",
        "SubjectAccessReview",
        false,
        false,
    ),
    // Stored so that a harness can install the CRDs as on a real cluster; the server itself
    // serves and validates the project's resources from the code's CRDs.
    res(
        "apiextensions.k8s.io/customresourcedefinitions",
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        true,
    ),
    res(
        "runc-etcd.io/etcdclusters",
        "runc-etcd.io",
        "v1alpha1",
        "etcdclusters",
        "EtcdCluster",
        true,
        true,
    ),
    res(
        "runc-etcd.io/etcdmembers",
        "runc-etcd.io",
        "v1alpha1",
        "etcdmembers",
        "EtcdMember",
        true,
        true,
    ),
    res(
        "runc-etcd.io/etcdbackups",
        "runc-etcd.io",
        "v1alpha1",
        "etcdbackups",
        "EtcdBackup",
        true,
        true,
    ),
];

pub fn find(group: &str, version: &str, plural: &str) -> Option<&'static Resource> {
    RESOURCES
        .iter()
        .find(|r| r.group == group && r.version == version && r.plural == plural)
}

pub fn by_key(key: &str) -> Option<&'static Resource> {
    RESOURCES.iter().find(|r| r.key() == key)
}
