//! Validation as the API server does it at every write: the built-in rules the operator's
//! objects meet (`builtin`: names, labels, a pod template's volumes and mounts, EndpointSlice
//! addresses, Event notes), and the project's custom resources against their CRD schema: types,
//! ranges, patterns, enums and required fields from the OpenAPI schema, and the CEL rules
//! (`x-kubernetes-validations`, with `oldSelf` on updates) through kube-cel.

use serde_json::Value;

use super::resources::Resource;
use super::store::{ApiError, ApiResult};

/// The openAPIV3Schema of each custom resource, built once: every write is checked against it.
pub fn schema_of(r: &Resource) -> Option<&'static Value> {
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
    let mut errors = builtin(r, obj);
    if let Some(schema) = schema_of(r) {
        // metadata is the API server's own business, not the CRD schema's.
        openapi(&schema["properties"]["spec"], &obj["spec"], "spec", &mut errors);
        if let Err(e) = kube::core::cel::Validator::new().validate(schema, obj, old) {
            errors.extend(e.iter().map(|e| e.to_string()));
        }
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

const SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
const DNS_LABEL: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";
const LABEL_PART: &str = r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$";

fn matches(pattern: &str, s: &str) -> bool {
    regex::Regex::new(pattern).is_ok_and(|re| re.is_match(s))
}

/// Kubernetes' built-in validation of what the operator writes, in kube-apiserver's words.
fn builtin(r: &Resource, obj: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    // RBAC objects take any name a path segment can carry (`system:discovery`).
    if !name.is_empty() && !r.key.starts_with("rbac.") {
        let (pattern, max, what) = match r.kind {
            "Namespace" | "Service" => (DNS_LABEL, 63, "RFC 1123 label"),
            _ => (SUBDOMAIN, 253, "RFC 1123 subdomain"),
        };
        if name.len() > max {
            errors.push(format!(
                "metadata.name: Invalid value: \"{name}\": must be no more than {max} characters"
            ));
        } else if !matches(pattern, name) {
            errors.push(format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase {what} must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"
            ));
        }
    }
    for (key, value) in obj["metadata"]["labels"].as_object().into_iter().flatten() {
        let value = value.as_str().unwrap_or_default();
        let (prefix, part) = key.rsplit_once('/').unwrap_or(("", key));
        if part.len() > 63
            || !matches(LABEL_PART, part)
            || prefix.len() > 253
            || (!prefix.is_empty() && !matches(SUBDOMAIN, prefix))
        {
            errors.push(format!("metadata.labels: Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.', and be no more than 63 characters"));
        }
        if value.len() > 63 {
            errors.push(format!(
                "metadata.labels: Invalid value: \"{value}\": must be no more than 63 characters"
            ));
        } else if !value.is_empty() && !matches(LABEL_PART, value) {
            errors.push(format!("metadata.labels: Invalid value: \"{value}\": a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character"));
        }
    }
    match r.kind {
        "DaemonSet" => pod(&obj["spec"]["template"]["spec"], "spec.template.spec", &mut errors),
        "Pod" => pod(&obj["spec"], "spec", &mut errors),
        "EndpointSlice" => endpoint_slice(obj, &mut errors),
        "Event" => {
            let note = obj["note"].as_str().unwrap_or_default();
            if note.len() > 1024 {
                errors.push("note: Too long: may not be more than 1024 bytes".into());
            }
        }
        _ => {}
    }
    errors
}

/// A pod spec's volumes and mounts: volume names unique, each mount naming a volume, no two
/// mounts of a container at one path.
fn pod(spec: &Value, path: &str, errors: &mut Vec<String>) {
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["name"].as_str())
        .collect();
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].contains(v) {
            errors.push(format!("{path}.volumes[{i}].name: Duplicate value: \"{v}\""));
        }
    }
    for (c, container) in spec["containers"].as_array().into_iter().flatten().enumerate() {
        let mut paths: Vec<&str> = Vec::new();
        for (m, mount) in container["volumeMounts"].as_array().into_iter().flatten().enumerate() {
            let at = format!("{path}.containers[{c}].volumeMounts[{m}]");
            let name = mount["name"].as_str().unwrap_or_default();
            if !volumes.contains(&name) {
                errors.push(format!("{at}.name: Not found: \"{name}\""));
            }
            let mount_path = mount["mountPath"].as_str().unwrap_or_default();
            if paths.contains(&mount_path) {
                errors.push(format!(
                    "{at}.mountPath: Invalid value: \"{mount_path}\": must be unique"
                ));
            }
            paths.push(mount_path);
        }
    }
}

/// An EndpointSlice's addresses are of its `addressType`.
fn endpoint_slice(obj: &Value, errors: &mut Vec<String>) {
    let kind = obj["addressType"].as_str().unwrap_or_default();
    if !["IPv4", "IPv6", "FQDN"].contains(&kind) {
        errors.push(format!(
            "addressType: Unsupported value: \"{kind}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
        ));
        return;
    }
    for (e, endpoint) in obj["endpoints"].as_array().into_iter().flatten().enumerate() {
        for (a, address) in endpoint["addresses"].as_array().into_iter().flatten().enumerate() {
            let address = address.as_str().unwrap_or_default();
            let ok = match kind {
                "IPv4" => address.parse::<std::net::Ipv4Addr>().is_ok(),
                "IPv6" => address.parse::<std::net::Ipv6Addr>().is_ok(),
                _ => matches(SUBDOMAIN, address),
            };
            if !ok {
                errors.push(format!(
                    "endpoints[{e}].addresses[{a}]: Invalid value: \"{address}\": must be a valid {kind} address"
                ));
            }
        }
    }
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

    /// What a real API server refuses in the objects the operator writes, with its words.
    #[test]
    fn built_in_rules_refuse_what_a_real_server_refuses() {
        let refused = |key: &str, obj: &str, want: &str| {
            let e = check(by_key(key).unwrap(), &yaml(obj), None).unwrap_err();
            assert_eq!(e.code, 422);
            assert!(e.message.contains(want), "{} does not say {want}", e.message);
        };
        let long = "n".repeat(64);
        refused(
            "runc-etcd.io/etcdmembers",
            &format!("metadata: {{name: m1, labels: {{runc-etcd.io/node: {long}}}}}\nspec: {{}}"),
            "must be no more than 63 characters",
        );
        refused("core/services", "metadata: {name: Main.client}", "RFC 1123 label");
        refused(
            "apps/daemonsets",
            "metadata: {name: a}\nspec: {template: {spec: {volumes: [{name: state}, {name: backups}], containers: [{name: agent, volumeMounts: [{name: state, mountPath: /var/lib/runc-etcd}, {name: backups, mountPath: /var/lib/runc-etcd}]}]}}}",
            "volumeMounts[1].mountPath: Invalid value: \"/var/lib/runc-etcd\": must be unique",
        );
        refused(
            "discovery.k8s.io/endpointslices",
            "metadata: {name: a}\naddressType: IPv4\nendpoints: [{addresses: [\"fd00::1\"]}]",
            "must be a valid IPv4 address",
        );
        refused(
            "events.k8s.io/events",
            &format!("metadata: {{name: e}}\nnote: {}", "x".repeat(1025)),
            "may not be more than 1024 bytes",
        );
        check(
            by_key("discovery.k8s.io/endpointslices").unwrap(),
            &yaml("metadata: {name: a}\naddressType: IPv6\nendpoints: [{addresses: [\"fd00::1\"]}]"),
            None,
        )
        .unwrap();
    }

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
