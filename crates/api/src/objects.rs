//! Writing objects so that running the same step twice is harmless: create unless present,
//! delete unless gone, and finalizer and status changes that cannot overwrite a newer copy.

use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// A merge patch that sets `obj`'s finalizers to its current ones with `add` added or `remove`
/// taken out. It carries the object's resourceVersion: written against a stale copy, it is a
/// 409, never a lost finalizer.
pub fn finalizers_patch<K: kube::ResourceExt>(
    obj: &K,
    add: Option<&str>,
    remove: Option<&str>,
) -> kube::api::Patch<serde_json::Value> {
    let mut finalizers: Vec<String> = obj
        .finalizers()
        .iter()
        .filter(|f| Some(f.as_str()) != remove)
        .cloned()
        .collect();
    if let Some(f) = add.filter(|f| !finalizers.iter().any(|x| x == f)) {
        finalizers.push(f.to_string());
    }
    kube::api::Patch::Merge(serde_json::json!({
        "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()}
    }))
}

/// Merges `status` into `obj`'s status only if `obj` is unchanged since it was read (its
/// resourceVersion): Ok(false) when it changed, and nothing was written. A deposed controller,
/// or a pass that read a stale copy, cannot overwrite a newer decision this way.
pub async fn write_status_if_unchanged<K>(api: &Api<K>, obj: &K, status: &serde_json::Value) -> kube::Result<bool>
where
    K: kube::ResourceExt + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let patch = serde_json::json!({"metadata": {"resourceVersion": obj.resource_version()}, "status": status});
    match api
        .patch_status(&obj.name_any(), &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Creates `obj`; one that exists already (a retried or raced step) is kept as it is.
pub async fn create_or_keep<K>(api: &Api<K>, obj: &K) -> kube::Result<()>
where
    K: Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e),
    }
}

/// Deletes `name`; one already gone is fine.
/// The most an Event's note may hold (events.k8s.io/v1 validation): a longer one is refused
/// and the Event lost.
pub const EVENT_NOTE_LIMIT: usize = 1024;

/// `note`, cut to `EVENT_NOTE_LIMIT` bytes at a character boundary (ending in "…") if longer.
pub fn event_note(note: String) -> String {
    if note.len() <= EVENT_NOTE_LIMIT {
        return note;
    }
    let mut end = EVENT_NOTE_LIMIT - '…'.len_utf8();
    while !note.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &note[..end])
}

pub async fn delete_if_present<K>(api: &Api<K>, name: &str) -> kube::Result<()>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::EtcdCluster;
    use crate::contract::CLUSTER_FINALIZER;

    #[test]
    fn event_notes_fit_what_the_api_server_takes_and_long_node_names_fit_a_label() {
        assert_eq!(event_note("short".into()), "short");
        let long = "é".repeat(700); // 1400 bytes
        let cut = event_note(long.clone());
        assert!(cut.len() <= EVENT_NOTE_LIMIT && cut.ends_with('…') && long.starts_with(cut.trim_end_matches('…')));
        use crate::contract::node_label;
        assert_eq!(node_label("lab1-h1"), "lab1-h1");
        let node = format!("{}.compute.internal", "ip-10-0-0-1-".repeat(10));
        let label = node_label(&node);
        assert_eq!(label.len(), 63);
        assert!(label.starts_with(&node[..54]));
        assert_ne!(label, node_label(&format!("{node}x")), "two long names keep two labels");
    }

    #[test]
    fn finalizer_patches_keep_the_others_and_name_the_version() {
        let mut c: EtcdCluster = serde_saphyr::from_str(
            "apiVersion: runc-etcd.io/v1alpha1\nkind: EtcdCluster\nmetadata: {name: main}\nspec: {version: 3.5.16}\n",
        )
        .unwrap();
        c.metadata.finalizers = Some(vec!["other".into()]);
        c.metadata.resource_version = Some("42".into());
        let kube::api::Patch::Merge(add) = finalizers_patch(&c, Some(CLUSTER_FINALIZER), None) else {
            panic!("a merge patch")
        };
        assert_eq!(
            add["metadata"]["finalizers"],
            serde_json::json!(["other", CLUSTER_FINALIZER])
        );
        assert_eq!(add["metadata"]["resourceVersion"], "42");
        c.metadata.finalizers = Some(vec!["other".into(), CLUSTER_FINALIZER.into()]);
        let kube::api::Patch::Merge(remove) = finalizers_patch(&c, None, Some(CLUSTER_FINALIZER)) else {
            panic!("a merge patch")
        };
        assert_eq!(remove["metadata"]["finalizers"], serde_json::json!(["other"]));
    }
}
