"""The Helm chart rendered with Helm's own engine (PyPI helm-python-sdk), with its defaults and
with each values file under charts/runc-etcd/ci/: the objects and names, the CRDs equal to crd/,
and RBAC that grants exactly what the operator and the agent use (nothing beyond this list).

Run: PYTHONPATH=<dir with helm_python> python3 -m unittest discover -s tests/chart
"""

import glob
import os
import unittest

import helm_python
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "charts", "runc-etcd")

# (apiGroup, resource) -> verbs. Each is used by the code (see the comments in the templates).
OPERATOR = {
    ("runc-etcd.io", "etcdclusters"): {"get", "list", "watch", "patch"},
    ("runc-etcd.io", "etcdclusters/status"): {"patch"},
    ("runc-etcd.io", "etcdclusters/finalizers"): {"update"},
    ("runc-etcd.io", "etcdbackups/status"): {"patch"},
    ("runc-etcd.io", "etcdmembers"): {"get", "list", "watch", "create", "patch", "delete"},
    ("runc-etcd.io", "etcdbackups"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "services"): {"get", "create", "patch", "delete"},
    ("discovery.k8s.io", "endpointslices"): {"get", "create", "patch", "delete"},
    ("", "secrets"): {"get", "list", "create", "patch", "delete"},
    ("", "nodes"): {"get", "list", "watch"},
    ("events.k8s.io", "events"): {"create", "patch"},
    ("coordination.k8s.io", "leases"): {"list"},
    ("rbac.authorization.k8s.io", "roles"): {"get", "create", "patch", "delete"},
    ("rbac.authorization.k8s.io", "rolebindings"): {"get", "create", "patch", "delete"},
}
# In the release namespace: leader election, the agent DaemonSets (which live there), and the
# namespace itself (its Pod Security label).
ELECTION = {
    ("coordination.k8s.io", "leases"): {"get", "create", "update"},
    ("apps", "daemonsets"): {"get", "list", "watch", "create", "patch", "delete"},
    ("", "namespaces"): {"get"},
}
# Cluster-wide: only this project's resources, so that a namespace being deleted cannot take the
# agents' access to its members before they are retired.
AGENT_CLUSTER = {
    ("runc-etcd.io", "etcdclusters"): {"get"},
    ("runc-etcd.io", "etcdmembers"): {"get", "list", "watch"},
    ("runc-etcd.io", "etcdbackups"): {"get", "list", "watch", "patch"},
    ("runc-etcd.io", "etcdmembers/status"): {"patch"},
    ("runc-etcd.io", "etcdbackups/status"): {"patch"},
}
# In each cluster namespace (Secrets: the operator's Role per cluster names them).
AGENT = {
    ("coordination.k8s.io", "leases"): {"get", "create", "patch", "delete"},
    ("events.k8s.io", "events"): {"create", "patch"},
}


def render(values):
    docs = []
    out = helm_python.Chart.load(CHART).render(values, name="rel", namespace="runc-etcd")
    for text in out.values():
        docs += [d for d in yaml.safe_load_all(text) if d]
    return docs


def grants(role):
    got = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                got.setdefault((group, res), set()).update(rule["verbs"])
    return got


def values_files():
    yield "defaults", {}
    for path in sorted(glob.glob(os.path.join(CHART, "ci", "*.yaml"))):
        with open(path) as f:
            yield os.path.basename(path), yaml.safe_load(f) or {}


class ChartTest(unittest.TestCase):
    def test_lints(self):
        self.assertEqual(helm_python.lint(CHART)["errors"], [])

    def test_crds_are_the_committed_ones(self):
        with open(os.path.join(ROOT, "crd", "runc-etcd.io.yaml")) as a, open(
            os.path.join(CHART, "crds", "runc-etcd.io.yaml")
        ) as b:
            self.assertEqual(a.read(), b.read())

    def test_every_values_file_renders_the_expected_objects_and_rbac(self):
        for name, values in values_files():
            with self.subTest(values=name):
                docs = render(values)
                kinds = {(d["kind"], d["metadata"]["name"], d["metadata"].get("namespace")) for d in docs}
                namespaces = values.get("clusterNamespaces") or ["runc-etcd"]
                agent_sa = values.get("agent", {}).get("serviceAccountName", "runc-etcd-agent")
                expected = {
                    ("ServiceAccount", "runc-etcd-operator", "runc-etcd"),
                    ("ClusterRole", "rel-operator", None),
                    ("ClusterRoleBinding", "rel-operator", None),
                    ("ServiceAccount", agent_sa, "runc-etcd"),
                    ("ClusterRole", "rel-agent", None),
                    ("ClusterRoleBinding", "rel-agent", None),
                    ("Role", "runc-etcd-operator-election", "runc-etcd"),
                    ("RoleBinding", "runc-etcd-operator-election", "runc-etcd"),
                    ("Deployment", "runc-etcd-operator", "runc-etcd"),
                    ("Service", "runc-etcd-operator-metrics", "runc-etcd"),
                }
                for ns in namespaces:
                    expected |= {
                        ("Role", "runc-etcd-agent", ns),
                        ("RoleBinding", "runc-etcd-agent", ns),
                    }
                priority = values.get("agent", {}).get("priorityClassName", "system-node-critical")
                if priority in ("system-node-critical", "system-cluster-critical"):
                    expected.add(("ResourceQuota", "runc-etcd-agent-critical-pods", "runc-etcd"))
                    quota = next(d for d in docs if d["kind"] == "ResourceQuota")
                    scope = quota["spec"]["scopeSelector"]["matchExpressions"]
                    self.assertEqual(scope, [{"scopeName": "PriorityClass", "operator": "In", "values": [priority]}])
                self.assertEqual(kinds, expected)
                # No Role or ClusterRole grants anything beyond the lists above.
                for d in docs:
                    if d["kind"] == "ClusterRole" and d["metadata"]["name"] == "rel-agent":
                        self.assertEqual(grants(d), AGENT_CLUSTER)
                    elif d["kind"] == "ClusterRole":
                        self.assertEqual(grants(d), OPERATOR)
                    elif d["kind"] == "Role" and d["metadata"]["name"] == "runc-etcd-agent":
                        self.assertEqual(grants(d), AGENT)
                    elif d["kind"] == "Role":
                        self.assertEqual(grants(d), ELECTION)
                deploy = next(d for d in docs if d["kind"] == "Deployment")
                self.assertEqual(deploy["spec"]["replicas"], values.get("replicaCount", 2))
                pod = deploy["spec"]["template"]["spec"]
                self.assertTrue(pod["securityContext"]["runAsNonRoot"])
                c = pod["containers"][0]
                self.assertFalse(c["securityContext"]["allowPrivilegeEscalation"])
                self.assertEqual(c["args"][0], "operator")
                image = values.get("image", {})
                want = f'{image.get("repository", "ghcr.io/runc-etcd/runc-etcd")}:{image.get("tag") or "0.1.0"}'
                self.assertEqual(c["image"], want)
                agent_image = values.get("agent", {}).get("image") or want
                self.assertIn(f"--agent-image={agent_image}", c["args"])
                self.assertIn(f"--agent-service-account={agent_sa}", c["args"])
                self.assertIn(f"--agent-priority-class={priority}", c["args"])
                self.assertEqual(c["livenessProbe"]["httpGet"]["path"], "/healthz")
                # Every binding's subject is a service account of the release namespace.
                for d in docs:
                    if d["kind"] in ("RoleBinding", "ClusterRoleBinding"):
                        for subject in d["subjects"]:
                            self.assertEqual(subject["namespace"], "runc-etcd", d["metadata"]["name"])

    def test_no_priority_quota_in_kube_system_or_when_turned_off(self):
        for values, namespace in [({}, "kube-system"), ({"agent": {"criticalPriorityQuota": {"enabled": False}}}, "ops")]:
            out = helm_python.Chart.load(CHART).render(values, name="rel", namespace=namespace)
            docs = [d for text in out.values() for d in yaml.safe_load_all(text) if d]
            self.assertFalse([d for d in docs if d["kind"] == "ResourceQuota"], (values, namespace))


if __name__ == "__main__":
    unittest.main()
