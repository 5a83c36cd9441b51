//! Events are one store served in two API versions, as on a real cluster: what the operator
//! writes as `events.k8s.io/v1` (kube's Recorder) is what `kubectl describe` and `kubectl get
//! events` read as core `v1`, and the reverse. Objects are stored in the events.k8s.io shape and
//! converted field by field (Kubernetes' own conversion: `note` is `message`, `regarding` is
//! `involvedObject`, the `deprecated*` fields are core's source, timestamps and count).

use serde_json::{Map, Value};

/// (events.k8s.io/v1 field, core/v1 field); the others have the same name in both.
const RENAMED: &[(&str, &str)] = &[
    ("note", "message"),
    ("regarding", "involvedObject"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

/// Which version a request speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// The stored shape (every resource but core Events).
    Stored,
    /// core/v1 Event.
    Core,
}

/// The object in core's shape, or back in the stored one: fields renamed, apiVersion set.
fn convert(obj: Value, to_core: bool) -> Value {
    let Value::Object(fields) = obj else {
        return obj;
    };
    let mut out = Map::new();
    for (k, v) in fields {
        let key = RENAMED
            .iter()
            .find_map(|(stored, core)| match to_core {
                true if *stored == k => Some(core.to_string()),
                false if *core == k => Some(stored.to_string()),
                _ => None,
            })
            .unwrap_or(k);
        out.insert(key, v);
    }
    let api_version = if to_core { "v1" } else { "events.k8s.io/v1" };
    out.insert("apiVersion".into(), api_version.into());
    Value::Object(out)
}

impl Shape {
    /// A stored object as the request's version shows it.
    pub fn out(self, obj: Value) -> Value {
        match self {
            Shape::Stored => obj,
            Shape::Core => convert(obj, true),
        }
    }

    /// An object the request sent, as stored.
    pub fn into_stored(self, obj: Value) -> Value {
        match self {
            Shape::Stored => obj,
            Shape::Core => convert(obj, false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_event_reads_the_same_in_both_versions() {
        let stored = json!({"apiVersion": "events.k8s.io/v1", "kind": "Event", "metadata": {"name": "e"},
            "note": "member m1 placed", "reason": "MemberAdded", "type": "Normal",
            "regarding": {"kind": "EtcdCluster", "name": "main"}, "reportingController": "runc-etcd",
            "deprecatedCount": 2});
        let core = Shape::Core.out(stored.clone());
        assert_eq!(core["apiVersion"], "v1");
        assert_eq!(core["message"], "member m1 placed");
        assert_eq!(core["involvedObject"]["name"], "main");
        assert_eq!(core["reportingComponent"], "runc-etcd");
        assert_eq!(core["count"], 2);
        assert_eq!(core["reason"], "MemberAdded");
        assert!(core.get("note").is_none());
        assert_eq!(Shape::Core.into_stored(core), stored);
    }
}
