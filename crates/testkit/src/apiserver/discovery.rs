//! Discovery, so kubectl can use the test API server: `/api`, `/apis`, each group version's
//! resource list, `/version`, and enough of `/openapi/v3` for kubectl to validate on the server. The legacy (unaggregated) documents: kubectl falls back to
//! them when the server does not answer with the aggregated kind.

use serde_json::{Value, json};

use super::resources::{RESOURCES, Resource};

fn short_names(r: &Resource) -> Vec<&'static str> {
    match r.key {
        "runc-etcd.io/etcdclusters" => vec!["etcd"],
        "core/nodes" => vec!["no"],
        "core/pods" => vec!["po"],
        "core/services" => vec!["svc"],
        "core/namespaces" => vec!["ns"],
        "core/configmaps" => vec!["cm"],
        "apps/daemonsets" => vec!["ds"],
        _ => vec![],
    }
}

fn resource_list(group: &str, version: &str) -> Option<Value> {
    let served: Vec<&Resource> = RESOURCES
        .iter()
        .filter(|r| r.group == group && r.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let verbs = ["create", "delete", "get", "list", "patch", "update", "watch"];
    let mut resources = Vec::new();
    for r in served {
        let mut entry = json!({
            "name": r.plural,
            "singularName": r.kind.to_lowercase(),
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": verbs,
            "shortNames": short_names(r),
        });
        if r.group == "runc-etcd.io" {
            entry["categories"] = json!(["runc-etcd"]);
        }
        resources.push(entry);
        if r.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", r.plural), "singularName": "", "namespaced": r.namespaced,
                "kind": r.kind, "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}))
}

fn group_versions() -> Vec<(&'static str, &'static str)> {
    let mut gvs: Vec<(&str, &str)> = RESOURCES.iter().map(|r| (r.group, r.version)).collect();
    gvs.sort();
    gvs.dedup();
    gvs
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// A minimal OpenAPI v3 document for one group version: per resource a PATCH operation that
/// accepts `fieldValidation`, which tells kubectl to leave validation to the server (the
/// schema and CEL checks here).
fn openapi_v3(group: &str, version: &str) -> Option<Value> {
    let mut paths = serde_json::Map::new();
    for r in RESOURCES.iter().filter(|r| r.group == group && r.version == version) {
        let scope = if r.namespaced { "namespaces/{namespace}/" } else { "" };
        let path = format!("/{}/{scope}{}/{{name}}", gv_path(group, version), r.plural);
        paths.insert(
            path,
            json!({"patch": {
                "x-kubernetes-group-version-kind": {"group": group, "version": version, "kind": r.kind},
                "parameters": [{"name": "fieldValidation", "in": "query", "schema": {"type": "string"}}],
                "responses": {"200": {"description": "OK"}},
            }}),
        );
    }
    (!paths.is_empty()).then(|| {
        json!({"openapi": "3.0.0", "info": {"title": "runc-etcd test API server", "version": "v1"},
               "paths": paths, "components": {"schemas": crd_schemas(group, version)}})
    })
}

/// The project's CRDs' schemas as a real API server publishes them, by definition name
/// (`io.runc-etcd.v1alpha1.EtcdCluster`), each tagged with its kind: what `kubectl explain`
/// reads.
fn crd_schemas(group: &str, version: &str) -> serde_json::Map<String, Value> {
    let reversed: Vec<&str> = group.split('.').rev().collect();
    runc_etcd_api::crds()
        .into_iter()
        .filter(|c| c.spec.group == group)
        .filter_map(|c| {
            let v = c.spec.versions.iter().find(|v| v.name == version)?;
            let mut schema = serde_json::to_value(v.schema.as_ref()?.open_api_v3_schema.as_ref()?).ok()?;
            let kind = c.spec.names.kind.clone();
            schema["x-kubernetes-group-version-kind"] = json!([{"group": group, "version": version, "kind": kind}]);
            Some((format!("{}.{version}.{kind}", reversed.join(".")), schema))
        })
        .collect()
}

/// OpenAPI v2, for clients that still read it: the same definitions.
fn openapi_v2() -> Value {
    let mut definitions = serde_json::Map::new();
    for (g, v) in group_versions() {
        definitions.extend(crd_schemas(g, v));
    }
    json!({"swagger": "2.0", "info": {"title": "runc-etcd test API server", "version": "v1"},
           "paths": {}, "definitions": definitions})
}

/// The discovery document at `path`, if it is one.
pub fn document(path: &str) -> Option<Value> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["version"] => Some(json!({
            "major": "1", "minor": "33", "gitVersion": "v1.33.0-runc-etcd-test",
            "platform": "linux/amd64", "goVersion": "none", "compiler": "none",
        })),
        ["api"] => Some(json!({
            "kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}],
        })),
        ["apis"] => {
            let groups: Vec<Value> = group_versions()
                .iter()
                .filter(|(g, _)| !g.is_empty())
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        ["openapi", "v3"] => {
            let paths: serde_json::Map<String, Value> = group_versions()
                .into_iter()
                .map(|(g, v)| {
                    let p = gv_path(g, v);
                    (p.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{p}")}))
                })
                .collect();
            Some(json!({ "paths": paths }))
        }
        ["openapi", "v2"] => Some(openapi_v2()),
        ["openapi", "v3", "api", v] => openapi_v3("", v),
        ["openapi", "v3", "apis", g, v] => openapi_v3(g, v),
        ["api", v] => resource_list("", v),
        ["apis", g, v] => resource_list(g, v),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdclusters_are_discoverable_with_their_short_name() {
        let list = document("/apis/runc-etcd.io/v1alpha1").unwrap();
        let etcd = list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == "etcdclusters")
            .unwrap();
        assert_eq!(etcd["shortNames"][0], "etcd");
        let groups = document("/apis").unwrap();
        assert!(
            groups["groups"]
                .as_array()
                .unwrap()
                .iter()
                .any(|g| g["name"] == "runc-etcd.io")
        );
        assert!(document("/apis/nope/v1").is_none());
    }
}
