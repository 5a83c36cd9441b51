//! Where a cluster's pods may run: the same rule for the controller (which nodes may host a
//! member) and for anything that places the agent DaemonSet's pods (the lab's stand-in kubelet).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Taint, Toleration};

fn tolerates(tolerations: &[Toleration], taint: &Taint) -> bool {
    tolerations.iter().any(|t| {
        let effect_ok = t.effect.as_deref().is_none_or(|e| e.is_empty() || e == taint.effect);
        let key_ok = match (t.key.as_deref(), t.operator.as_deref()) {
            (None | Some(""), Some("Exists")) => true,
            (Some(k), Some("Exists")) => k == taint.key,
            (Some(k), _) => k == taint.key && t.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or(""),
            (None, _) => false,
        };
        effect_ok && key_ok
    })
}

/// Whether a pod with this node selector and these tolerations may run on `node` (taints that
/// keep pods off: NoSchedule and NoExecute).
pub fn placeable(selector: &BTreeMap<String, String>, tolerations: &[Toleration], node: &Node) -> bool {
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
        && taints
            .iter()
            .filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute")
            .all(|t| tolerates(tolerations, t))
}
