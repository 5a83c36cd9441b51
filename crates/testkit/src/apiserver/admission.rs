//! Admission of new pods, as kube-apiserver's plugins do it: Pod Security by the namespace's
//! `pod-security.kubernetes.io/enforce` label (baseline and restricted refuse privileged
//! containers, the host's namespaces and host paths), Priority (a pod's PriorityClass must
//! exist), and ResourceQuota configured as GKE configures it: the critical PriorityClasses are
//! limited resources, so outside kube-system a pod of one needs a ResourceQuota in its namespace
//! whose scope covers the class, and room in it. Pods already running are not touched:
//! admission judges only new ones.

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
        if CRITICAL.contains(&class) && ns != "kube-system" {
            quota(store, ns, class).map_err(forbidden)?;
        }
    }
    Ok(())
}

/// The PriorityClasses GKE's ResourceQuota admission configuration limits.
const CRITICAL: [&str; 2] = ["system-node-critical", "system-cluster-critical"];

/// Whether a ResourceQuota in `ns` covers one more pod of `class`; why not, in the plugin's words.
fn quota(store: &Store, ns: &str, class: &str) -> Result<(), String> {
    let quotas = resources::by_key("core/resourcequotas").expect("served");
    let covers = |q: &Value| {
        q["spec"]["scopeSelector"]["matchExpressions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| {
                e["scopeName"] == "PriorityClass"
                    && (e["operator"] == "Exists"
                        || (e["operator"] == "In"
                            && e["values"].as_array().is_some_and(|v| v.iter().any(|v| v == class))))
            })
    };
    let Some(q) = store.list(quotas, Some(ns)).into_iter().find(covers) else {
        return Err(format!(
            "insufficient quota to match these scopes: [{{PriorityClass In [{}]}}]",
            CRITICAL.join(" ")
        ));
    };
    let Some(hard) = q["spec"]["hard"]["pods"].as_str().and_then(|p| p.parse::<usize>().ok()) else {
        return Ok(());
    };
    let pods = resources::by_key("core/pods").expect("served");
    let used = store
        .list(pods, Some(ns))
        .iter()
        .filter(|p| p["spec"]["priorityClassName"] == class && p["metadata"].get("deletionTimestamp").is_none())
        .count();
    if used >= hard {
        let name = q["metadata"]["name"].as_str().unwrap_or_default();
        return Err(format!(
            "exceeded quota: {name}, requested: pods=1, used: pods={used}, limited: pods={hard}"
        ));
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
    fn a_critical_pod_outside_kube_system_needs_a_covering_quota_with_room() {
        let mut s = Store::new();
        let namespaces = resources::by_key("core/namespaces").unwrap();
        s.create(namespaces, "", json!({"metadata": {"name": "ops"}})).unwrap();
        let pod = |name: &str| {
            json!({"metadata": {"name": name}, "spec": {"priorityClassName": "system-node-critical",
                "nodeName": "n1", "containers": [{"name": "c"}]}})
        };
        assert_eq!(
            super::pod(&s, "ops", &pod("a")).unwrap_err().message,
            "pods \"a\" is forbidden: insufficient quota to match these scopes: [{PriorityClass In [system-node-critical system-cluster-critical]}]"
        );
        assert!(super::pod(&s, "kube-system", &pod("a")).is_ok());
        let quotas = resources::by_key("core/resourcequotas").unwrap();
        let quota = json!({"metadata": {"name": "critical"}, "spec": {"hard": {"pods": "1"},
            "scopeSelector": {"matchExpressions": [{"scopeName": "PriorityClass", "operator": "In",
                "values": ["system-node-critical"]}]}}});
        s.create(quotas, "ops", quota).unwrap();
        assert!(super::pod(&s, "ops", &pod("a")).is_ok());
        s.create(resources::by_key("core/pods").unwrap(), "ops", pod("a"))
            .unwrap();
        assert_eq!(
            super::pod(&s, "ops", &pod("b")).unwrap_err().message,
            "pods \"b\" is forbidden: exceeded quota: critical, requested: pods=1, used: pods=1, limited: pods=1"
        );
    }

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
