//! Validation of the project's custom resources against their CRD schema, as the API server does
//! at `kubectl apply`: types, ranges, patterns, enums and required fields from the OpenAPI schema,
//! and the CEL rules (`x-kubernetes-validations`, with `oldSelf` on updates) through kube-cel.

use serde_json::Value;

use super::resources::Resource;
use super::store::{ApiError, ApiResult};

/// The openAPIV3Schema of each custom resource, built once: every write is checked against it.
fn schema_of(r: &Resource) -> Option<&'static Value> {
    static SCHEMAS: std::sync::OnceLock<Vec<(String, Value)>> = std::sync::OnceLock::new();
    let schemas = SCHEMAS.get_or_init(|| {
        runc_etcd_api::crds()
            .into_iter()
            .map(|crd| {
                let v = serde_json::to_value(&crd).expect("a CRD serializes");
                (
                    crd.spec.names.kind,
                    v["spec"]["versions"][0]["schema"]["openAPIV3Schema"].clone(),
                )
            })
            .collect()
    });
    schemas.iter().find(|(kind, _)| *kind == r.kind).map(|(_, s)| s)
}

pub fn check(r: &Resource, obj: &Value, old: Option<&Value>) -> ApiResult<()> {
    let Some(schema) = schema_of(r) else {
        return Ok(());
    };
    let mut errors = Vec::new();
    // metadata is the API server's own business, not the CRD schema's.
    openapi(&schema["properties"]["spec"], &obj["spec"], "spec", &mut errors);
    if let Err(e) = kube::core::cel::Validator::new().validate(schema, obj, old) {
        errors.extend(e.iter().map(|e| e.to_string()));
    }
    if errors.is_empty() {
        return Ok(());
    }
    Err(ApiError::new(
        422,
        "Invalid",
        format!(
            "{} \"{}\" is invalid: {}",
            r.kind,
            obj["metadata"]["name"].as_str().unwrap_or(""),
            errors.join("; ")
        ),
    ))
}

fn openapi(schema: &Value, v: &Value, path: &str, errors: &mut Vec<String>) {
    if v.is_null() {
        return;
    }
    let ty = schema["type"].as_str().unwrap_or("");
    let type_ok = match ty {
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        _ => true,
    };
    if !type_ok {
        errors.push(format!("{path}: Invalid value: {v}: must be of type {ty}"));
        return;
    }
    if let (Some(min), Some(n)) = (schema["minimum"].as_f64(), v.as_f64())
        && n < min
    {
        errors.push(format!(
            "{path}: Invalid value: {v}: should be greater than or equal to {min}"
        ));
    }
    if let (Some(max), Some(n)) = (schema["maximum"].as_f64(), v.as_f64())
        && n > max
    {
        errors.push(format!(
            "{path}: Invalid value: {v}: should be less than or equal to {max}"
        ));
    }
    if let (Some(pattern), Some(s)) = (schema["pattern"].as_str(), v.as_str())
        && !regex::Regex::new(pattern).is_ok_and(|re| re.is_match(s))
    {
        errors.push(format!("{path}: Invalid value: \"{s}\": should match '{pattern}'"));
    }
    if let Some(allowed) = schema["enum"].as_array()
        && !allowed.contains(v)
    {
        errors.push(format!("{path}: Unsupported value: {v}: supported values: {allowed:?}"));
    }
    if let Some(props) = schema["properties"].as_object() {
        for req in schema["required"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r.as_str())
        {
            if v.get(req).is_none_or(Value::is_null) {
                errors.push(format!("{path}.{req}: Required value"));
            }
        }
        for (k, sub) in props {
            openapi(sub, &v[k], &format!("{path}.{k}"), errors);
        }
    }
    if let (Some(items), Some(arr)) = (schema.get("items"), v.as_array()) {
        for (i, item) in arr.iter().enumerate() {
            openapi(items, item, &format!("{path}[{i}]"), errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::resources::by_key;
    use super::check;
    use serde_json::Value;

    fn yaml(s: &str) -> Value {
        serde_saphyr::from_str(s).unwrap()
    }

    const VALID: &str =
        "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata: {name: main}\nspec: {version: 3.5.16}\n";

    /// The CRDs' CEL rules, as this server (and a real one) evaluates them at `kubectl apply`.
    #[test]
    fn cel_rules_refuse_bad_specs_with_their_fix() {
        let clusters = by_key("runc-etcd.io/etcdclusters").unwrap();
        check(clusters, &yaml(VALID), None).unwrap();
        let cases = [
            (
                "spec: {version: 3.5.16, ports: {client: 2380, peer: 2380}}",
                "ports must all differ",
            ),
            ("spec: {version: 3.5.16, image: a/b:c, repository: a/b}", "either image"),
            (
                "spec: {version: 3.5.16, etcd: {heartbeatIntervalMs: 100, electionTimeoutMs: 200}}",
                "at least 5 times",
            ),
            (
                "spec: {version: 3.5.16, backup: {s3: {endpoint: 'http://s3', bucket: bkt, credentialsSecret: s}, hostPath: {path: /b}}}",
                "exactly one backup destination",
            ),
            (
                "spec: {version: 3.5.16, backup: {retention: 3}}",
                "exactly one backup destination",
            ),
            // Issue 12, item 2: a destination inside (or holding) a folder the agent works in.
            (
                "spec: {version: 3.5.16, backup: {hostPath: {path: /var/lib/runc-etcd/prod.main}}}",
                "overlaps a folder the agent works in",
            ),
            (
                "spec: {version: 3.5.16, backup: {hostPath: {path: /var/lib}}}",
                "overlaps a folder the agent works in",
            ),
            (
                "spec: {version: 3.5.16, backup: {hostPath: {path: /run/systemd/b}}}",
                "overlaps a folder the agent works in",
            ),
            (
                "spec: {version: 3.5.16, backup: {hostPath: {path: /var/lib/runc-etcd/}}}",
                "spec.backup.hostPath.path",
            ),
            (
                "spec: {version: 3.5.16, backup: {hostPath: {path: /var/backups/../lib}}}",
                "spec.backup.hostPath.path",
            ),
        ];
        for (spec, want) in cases {
            let c = yaml(&VALID.replace("spec: {version: 3.5.16}\n", &format!("{spec}\n")));
            let err = check(clusters, &c, None).expect_err(spec);
            assert!(format!("{err:?}").contains(want), "{spec}: {err:?}");
        }
    }

    /// Issue 13, item 6: what a live cluster cannot take is refused on update, with the way.
    #[test]
    fn tls_and_ports_cannot_change_on_a_live_cluster() {
        let clusters = by_key("runc-etcd.io/etcdclusters").unwrap();
        let spec = |s: &str| {
            yaml(&VALID.replace(
                "spec: {version: 3.5.16}\n",
                &format!("spec: {{version: 3.5.16, {s}}}\n"),
            ))
        };
        let old = spec("tls: {enabled: true}, ports: {client: 2379, peer: 2380, agent: 2382}");
        for (new, want) in [
            (
                "tls: {enabled: false}, ports: {client: 2379, peer: 2380, agent: 2382}",
                "tls.enabled cannot change on a live cluster",
            ),
            (
                "tls: {enabled: true}, ports: {client: 12379, peer: 2380, agent: 2382}",
                "ports.client and ports.peer cannot change",
            ),
            (
                "tls: {enabled: true}, ports: {client: 2379, peer: 12380, agent: 2382}",
                "ports.client and ports.peer cannot change",
            ),
        ] {
            let err = check(clusters, &spec(new), Some(&old)).expect_err(new);
            assert!(
                format!("{err:?}").contains(want) && format!("{err:?}").contains("restore into a new EtcdCluster"),
                "{new}: {err:?}"
            );
        }
        let fine = "tls: {enabled: true, certificateValidity: 8760h}, ports: {client: 2379, peer: 2380, agent: 2392}";
        check(clusters, &spec(fine), Some(&old)).expect("validity and the agent port may change");
        check(clusters, &spec("tls: {enabled: false}"), None).expect("a new cluster may be plain");
    }

    #[test]
    fn backup_folders_of_their_own_are_accepted() {
        let clusters = by_key("runc-etcd.io/etcdclusters").unwrap();
        for path in ["/var/backups/etcd", "/var/lib/runc-etcd/backups", "/srv/etcd.backups"] {
            let spec = format!("spec: {{version: 3.5.16, backup: {{hostPath: {{path: {path}}}}}}}\n");
            let c = yaml(&VALID.replace("spec: {version: 3.5.16}\n", &spec));
            check(clusters, &c, None).unwrap_or_else(|e| panic!("{path}: {e:?}"));
        }
    }

    /// The CRD's rule lists the folders the agent mounts: the same list the agent checks.
    #[test]
    fn the_backup_folder_rule_names_every_agent_folder() {
        let crds = serde_json::to_string(&runc_etcd_api::crds()).unwrap();
        for (_, path) in runc_etcd_api::contract::AGENT_HOST_PATHS {
            assert!(
                crds.contains(&format!("'{path}'")),
                "{path} is missing from the CEL rule"
            );
        }
        assert!(crds.contains(&format!("'{}'", runc_etcd_api::contract::DEFAULT_BACKUP_DIR)));
    }

    #[test]
    fn member_node_cannot_change() {
        let members = by_key("runc-etcd.io/etcdmembers").unwrap();
        let m = yaml(
            "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdMember\nmetadata: {name: main-0}\nspec: {cluster: main, memberName: main-0, nodeName: n1, ip: 10.0.0.1, clientPort: 2379, peerPort: 2380, initialCluster: ['main-0=https://10.0.0.1:2380'], initialClusterState: new, image: 'etcd@sha256:00'}\n",
        );
        check(members, &m, None).unwrap();
        let mut moved = m.clone();
        moved["spec"]["nodeName"] = "n2".into();
        let err = check(members, &moved, Some(&m)).expect_err("node change");
        assert!(format!("{err:?}").contains("nodeName cannot change"), "{err:?}");
    }
}
