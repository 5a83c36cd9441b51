//! Admission of new pods, as kube-apiserver's plugins do it: Pod Security by the namespace's
//! `pod-security.kubernetes.io/enforce` label (baseline and restricted refuse privileged
//! containers, the host's namespaces and host paths), and Priority (a pod's PriorityClass must
//! exist). Pods already running are not touched: admission judges only new ones.

use serde_json::Value;

use super::resources;
use super::store::{ApiError, ApiResult, Store};

const ENFORCE: &str = "pod-security.kubernetes.io/enforce";

/// A new pod in `ns`, refused in the plugins' words, or admitted.
pub fn pod(store: &Store, ns: &str, pod: &Value) -> ApiResult<()> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let forbidden = |why: String| ApiError::new(403, "Forbidden", format!("pods \"{name}\" is forbidden: {why}"));
    let namespaces = resources::by_key("core/namespaces").expect("namespaces are served");
    let labels = store
        .get(namespaces, "", ns)
        .map(|n| n["metadata"]["labels"].clone())
        .unwrap_or_default();
    if let Some(level) = labels[ENFORCE].as_str()
        && let Some(violations) = pod_security(level, &pod["spec"])
    {
        return Err(forbidden(format!(
            "violates PodSecurity \"{level}:latest\": {violations}"
        )));
    }
    if let Some(class) = pod["spec"]["priorityClassName"].as_str() {
        let classes = resources::by_key("scheduling.k8s.io/priorityclasses").expect("served");
        if store.get(classes, "", class).is_err() {
            return Err(forbidden(format!("no PriorityClass with name {class} was found")));
        }
    }
    Ok(())
}

/// What a pod spec does that Pod Security `level` forbids (baseline and restricted alike, for
/// what the agents do), said as the admission plugin says it.
fn pod_security(level: &str, spec: &Value) -> Option<String> {
    if level != "baseline" && level != "restricted" {
        return None;
    }
    let mut violations = Vec::new();
    let host: Vec<String> = ["hostNetwork", "hostPID", "hostIPC"]
        .iter()
        .filter(|f| spec[**f] == true)
        .map(|f| format!("{f}=true"))
        .collect();
    if !host.is_empty() {
        violations.push(format!("host namespaces ({})", host.join(", ")));
    }
    let paths: Vec<String> = spec["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v.get("hostPath").is_some())
        .map(|v| format!("{:?}", v["name"].as_str().unwrap_or_default()))
        .collect();
    if !paths.is_empty() {
        violations.push(format!("hostPath volumes (volumes {})", paths.join(", ")));
    }
    for c in spec["containers"].as_array().into_iter().flatten() {
        if c["securityContext"]["privileged"] == true {
            violations.push(format!(
                "privileged (container {:?} must not set securityContext.privileged=true)",
                c["name"].as_str().unwrap_or_default()
            ));
        }
    }
    (!violations.is_empty()).then(|| violations.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn baseline_refuses_what_the_agents_do_and_privileged_admits_it() {
        let spec = json!({"hostNetwork": true, "hostPID": true,
            "volumes": [{"name": "state", "hostPath": {"path": "/var/lib/runc-etcd"}}],
            "containers": [{"name": "agent", "securityContext": {"privileged": true}}]});
        assert_eq!(
            pod_security("baseline", &spec).unwrap(),
            "host namespaces (hostNetwork=true, hostPID=true), hostPath volumes (volumes \"state\"), privileged (container \"agent\" must not set securityContext.privileged=true)"
        );
        assert!(pod_security("restricted", &spec).is_some());
        assert_eq!(pod_security("privileged", &spec), None);
        assert_eq!(
            pod_security("baseline", &json!({"containers": [{"name": "app"}]})),
            None
        );
    }
}
