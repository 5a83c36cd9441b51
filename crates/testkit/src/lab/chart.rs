//! The chart's own ServiceAccounts and RBAC in the lab, rendered by Helm's engine (PyPI
//! helm-python-sdk, which setup.sh installs, as tests/chart uses it): the operator and the agents
//! run with exactly the permissions a `helm install` gives them, so a permission the chart lacks
//! fails the tests.

use std::path::PathBuf;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams, Patch, PatchParams};
use serde_json::{Value, json};

use crate::Error;

/// Renders the chart with `values`; prints the documents as one JSON list.
const RENDER: &str = r#"
import json, sys
import helm_python, yaml
out = helm_python.Chart.load(sys.argv[1]).render(json.loads(sys.argv[2]), name=sys.argv[3], namespace=sys.argv[4])
print(json.dumps([d for text in out.values() for d in yaml.safe_load_all(text) if d]))
"#;

/// The kinds the lab installs from the chart: the operator runs as a process of the lab and the
/// agents as the operator's DaemonSets, and the CRDs come from the code (equal to the chart's, a
/// unit test checks).
const INSTALLED: &[(&str, &str, bool)] = &[
    ("ServiceAccount", "serviceaccounts", true),
    ("ResourceQuota", "resourcequotas", true),
    ("Role", "roles", true),
    ("RoleBinding", "rolebindings", true),
    ("ClusterRole", "clusterroles", false),
    ("ClusterRoleBinding", "clusterrolebindings", false),
];

/// The cluster-scoped kinds `remove` takes back.
const CLUSTER_SCOPED: &[&str] = &["ClusterRole", "ClusterRoleBinding"];

fn chart_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../charts/runc-etcd")
}

/// The release name of lab `id`: its ClusterRoles are named after it, so labs sharing a real
/// cluster do not meet.
pub fn release(id: u8) -> String {
    format!("runc-etcd-lab{id}")
}

fn render(release: &str, namespace: &str, values: &Value) -> crate::Result<Vec<Value>> {
    let pylib = super::images::cache_dir().join("pylib");
    let out = std::process::Command::new("python3")
        .args(["-c", RENDER])
        .arg(chart_dir())
        .arg(values.to_string())
        .args([release, namespace])
        .env("PYTHONPATH", &pylib)
        .output()
        .map_err(|e| Error::transient("running python3 to render the chart", e))?;
    if !out.status.success() {
        return Err(Error::transient(
            "rendering the chart",
            format!(
                "{} (Helm's engine is installed by scripts/setup.sh into {})",
                String::from_utf8_lossy(&out.stderr).trim(),
                pylib.display()
            ),
        ));
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::transient("reading the rendered chart", e))
}

fn api(client: &kube::Client, kind: &str, namespace: Option<&str>) -> Option<Api<DynamicObject>> {
    let (_, plural, namespaced) = INSTALLED.iter().find(|(k, ..)| *k == kind)?;
    let group = if kind == "ServiceAccount" || kind == "ResourceQuota" {
        ""
    } else {
        "rbac.authorization.k8s.io"
    };
    let ar = ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, "v1", kind), plural);
    Some(match (namespaced, namespace) {
        (true, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
        _ => Api::all_with(client.clone(), &ar),
    })
}

/// Installs (or upgrades to) the chart's ServiceAccounts and RBAC for a release in `namespace`
/// whose clusters live in `cluster_namespaces`, each object labelled with the lab.
pub async fn install(
    client: &kube::Client,
    lab: u8,
    namespace: &str,
    cluster_namespaces: &[String],
) -> crate::Result<()> {
    let values = json!({"clusterNamespaces": cluster_namespaces});
    let docs = tokio::task::spawn_blocking({
        let (release, namespace) = (release(lab), namespace.to_string());
        move || render(&release, &namespace, &values)
    })
    .await
    .expect("rendering does not panic")?;
    for mut doc in docs {
        let kind = doc["kind"].as_str().unwrap_or_default().to_string();
        let ns = doc["metadata"]["namespace"].as_str().map(str::to_string);
        let Some(api) = api(client, &kind, ns.as_deref()) else {
            continue;
        };
        doc["metadata"]["labels"]["runc-etcd.io/lab"] = json!(lab.to_string());
        let name = doc["metadata"]["name"].as_str().unwrap_or_default().to_string();
        api.patch(&name, &PatchParams::apply("runc-etcd-lab").force(), &Patch::Apply(&doc))
            .await?;
    }
    Ok(())
}

/// Deletes lab `id`'s cluster-scoped RBAC (its namespaced objects go with its namespaces).
pub async fn remove(client: &kube::Client, lab: u8) -> crate::Result<()> {
    let mine = ListParams::default().labels(&format!("runc-etcd.io/lab={lab}"));
    for kind in CLUSTER_SCOPED {
        let api = api(client, kind, None).expect("an installed kind");
        for o in api.list(&mine).await?.items {
            runc_etcd_api::objects::delete_if_present(&api, o.metadata.name.as_deref().unwrap_or_default()).await?;
        }
    }
    Ok(())
}
