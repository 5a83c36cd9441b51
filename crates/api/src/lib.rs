//! The custom resources (group `runc-etcd.io`, version `v1alpha1`) and the rest of the contract
//! between the controller and the host agents. `runc-etcd crd` prints the resources; `crd/`
//! holds the same YAML, and CI fails when it differs from these types.
//!
//! - [`contract`]: labels, finalizers, annotations, derived names, the TLS Secrets, heartbeats;
//! - [`objects`]: idempotent writes (create or keep, delete if present, finalizer patches);
//! - [`scheduling`]: which nodes a cluster's pods may run on;
//! - the states written into status, as enums ([`OperationKind`], [`ClusterPhase`], …).

mod backup;
mod cluster;
pub mod contract;
pub mod error;
mod member;
pub mod objects;
pub mod scheduling;
mod states;

pub use backup::*;
pub use cluster::*;
pub use member::*;
pub use states::*;

use kube::CustomResourceExt;

/// Every CRD of the project.
pub fn crds() -> Vec<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> {
    vec![EtcdCluster::crd(), EtcdMember::crd(), EtcdBackup::crd()]
}

/// Every CRD, as one multi-document YAML stream.
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|crd| serde_saphyr::to_string(crd).expect("a CRD serializes"))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    fn cluster(yaml: &str) -> EtcdCluster {
        serde_saphyr::from_str(yaml).unwrap()
    }

    const VALID: &str =
        "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata: {name: main}\nspec: {version: 3.5.16}\n";

    #[test]
    fn recovery_timeouts_parse_with_a_floor() {
        assert_eq!(parse_duration("90s"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Some(std::time::Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Some(std::time::Duration::from_secs(7200)));
        assert_eq!(parse_duration("5"), None);
        let r = |t: &str| Recovery {
            member_unhealthy_timeout: t.into(),
            ..Default::default()
        };
        assert_eq!(
            r("1s").member_timeout(),
            std::time::Duration::from_secs(10),
            "never below 10s"
        );
        assert_eq!(r("3m").member_timeout(), std::time::Duration::from_secs(180));
    }

    #[test]
    fn committed_crds_match_the_code() {
        // CI fails when crd/ is stale: `runc-etcd crd > crd/runc-etcd.io.yaml` (or UPDATE_GOLDEN=1).
        // The Helm chart installs the same file.
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for file in ["crd/runc-etcd.io.yaml", "charts/runc-etcd/crds/runc-etcd.io.yaml"] {
            let path = root.join(file);
            if std::env::var_os("UPDATE_GOLDEN").is_some() {
                std::fs::write(&path, crds_yaml()).unwrap();
                continue;
            }
            let want = std::fs::read_to_string(&path).unwrap();
            assert_eq!(crds_yaml(), want, "{file} differs (UPDATE_GOLDEN=1 rewrites it)");
        }
    }

    #[test]
    fn defaults_give_a_secure_three_member_cluster() {
        let c = cluster(VALID);
        assert_eq!(c.spec.size, 3);
        assert!(c.spec.tls.enabled);
        assert_eq!(
            (c.spec.ports.client, c.spec.ports.peer, c.spec.ports.metrics),
            (2379, 2380, 2381)
        );
        assert_eq!(c.spec.recovery.quorum_loss, QuorumLossPolicy::Manual);
    }

    /// Ranges and patterns the API server enforces (not CEL): present in the schema.
    #[test]
    fn schema_has_ranges_and_patterns() {
        let crd = serde_json::to_value(EtcdCluster::crd()).unwrap();
        let spec = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"];
        assert_eq!(spec["size"]["minimum"].as_f64(), Some(1.0));
        assert_eq!(spec["size"]["maximum"].as_f64(), Some(9.0));
        assert_eq!(spec["version"]["pattern"], "^3\\.[0-9]+\\.[0-9]+$");
        assert_eq!(spec["ports"]["properties"]["client"]["maximum"].as_f64(), Some(65535.0));
    }

    /// Every property of every CRD has a description, so `kubectl explain` reads well.
    #[test]
    fn every_field_is_described() {
        fn walk(path: &str, schema: &serde_json::Value, missing: &mut Vec<String>) {
            if let Some(props) = schema["properties"].as_object() {
                for (name, prop) in props {
                    let p = format!("{path}.{name}");
                    let top =
                        path.matches('.').count() == 0 && ["apiVersion", "kind", "metadata"].contains(&name.as_str());
                    if prop["description"].as_str().is_none_or(str::is_empty) && !top {
                        missing.push(p.clone());
                    }
                    walk(&p, prop, missing);
                }
            }
            if schema["items"].is_object() {
                walk(&format!("{path}[]"), &schema["items"], missing);
            }
        }
        for crd in crds() {
            let v = serde_json::to_value(&crd).unwrap();
            let mut missing = vec![];
            walk(
                &crd.spec.names.kind,
                &v["spec"]["versions"][0]["schema"]["openAPIV3Schema"],
                &mut missing,
            );
            assert!(missing.is_empty(), "fields without a description: {missing:#?}");
        }
    }
}
