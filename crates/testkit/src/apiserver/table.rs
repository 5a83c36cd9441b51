//! `kubectl get` asks for a Table (`Accept: …;as=Table;g=meta.k8s.io`). For the project's custom
//! resources the columns are the CRDs' printer columns, so `kubectl get etcdclusters` shows
//! size, ready, version, phase and age as on a real cluster. Other kinds get name and age.

use serde_json::{Value, json};

use super::resources::Resource;

/// (name, type, jsonPath) of the printer columns after Name.
fn columns(r: &Resource) -> Vec<(String, String, String)> {
    let Some(crd) = runc_etcd_api::crds().into_iter().find(|c| c.spec.names.kind == r.kind) else {
        return vec![("Age".into(), "date".into(), ".metadata.creationTimestamp".into())];
    };
    crd.spec.versions[0]
        .additional_printer_columns
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|c| (c.name, c.type_, c.json_path))
        .collect()
}

fn at<'a>(obj: &'a Value, path: &str) -> &'a Value {
    path.trim_start_matches('.').split('.').fold(obj, |v, k| &v[k])
}

/// "5s", "3m", "2h", "4d", as kubectl prints ages.
fn age(ts: &str) -> String {
    let Ok(t) = ts.parse::<k8s_openapi::jiff::Timestamp>() else {
        return "<unknown>".into();
    };
    let secs = (k8s_openapi::jiff::Timestamp::now() - t).get_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

fn cell(v: &Value, type_: &str) -> Value {
    match (v, type_) {
        (Value::Null, _) => json!("<none>"),
        (Value::String(s), "date") => json!(age(s)),
        (v, _) => v.clone(),
    }
}

/// The objects as a meta.k8s.io/v1 Table.
pub fn table(r: &Resource, items: &[Value], resource_version: &str) -> Value {
    let cols = columns(r);
    let mut defs = vec![json!({"name": "Name", "type": "string", "format": "name", "description": "", "priority": 0})];
    defs.extend(cols.iter().map(|(n, t, _)| {
        let t = if t == "date" { "string" } else { t.as_str() };
        json!({"name": n, "type": t, "format": "", "description": "", "priority": 0})
    }));
    let rows: Vec<Value> = items
        .iter()
        .map(|o| {
            let mut cells = vec![o["metadata"]["name"].clone()];
            cells.extend(cols.iter().map(|(_, t, p)| cell(at(o, p), t)));
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": o["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": resource_version},
           "columnDefinitions": defs, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcdclusters_print_their_columns() {
        let r = super::super::resources::find("runc-etcd.io", "v1alpha1", "etcdclusters").unwrap();
        let obj = json!({"metadata": {"name": "main", "creationTimestamp": "2020-01-01T00:00:00Z"},
                         "spec": {"size": 3}, "status": {"readyMembers": 2, "phase": "Scaling"}});
        let t = table(r, &[obj], "7");
        let names: Vec<&str> = t["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Name", "Size", "Ready", "Version", "Phase", "Age"]);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[1], 3);
        assert_eq!(cells[3], "<none>");
        assert_eq!(cells[4], "Scaling");
        assert!(cells[5].as_str().unwrap().ends_with('d'));
    }
}
