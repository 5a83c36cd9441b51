//! Field ownership as kube-apiserver keeps it (structured-merge-diff, `managedFields`): every
//! write records which manager set which fields. A server-side apply conflicts with another
//! manager's field unless forced, takes ownership of what it applies, and removes what its manager
//! applied before and applies no more, unless another manager owns it. Any other write (create,
//! update, merge or JSON patch) makes its manager the owner of the fields it changed.
//!
//! Paths are written as fieldsV1 writes them: `f:name` for a field, `k:{"name":"etcd"}` for an
//! item of a list keyed by some of its fields, `v:"x"` for an item of a set. Lists are atomic
//! (one value) unless Kubernetes' types or the CRD schema say otherwise (`list_type`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use super::resources::Resource;
use super::store::{ApiError, ApiResult};

type Path = Vec<String>;
type Fields = BTreeSet<Path>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    fn name(self) -> &'static str {
        match self {
            Operation::Apply => "Apply",
            Operation::Update => "Update",
        }
    }
}

/// Who writes, how, and to which part of the object.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub operation: Operation,
    /// A write to the status subresource owns only status; any other write owns all but status.
    pub status: bool,
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: String,
    fields: Fields,
}

impl Entry {
    fn is(&self, w: &Writer) -> bool {
        self.manager == w.manager && self.operation == w.operation.name() && self.subresource == subresource(w)
    }

    /// As kube-apiserver names a manager in a conflict (`printManager`).
    fn printed(&self) -> String {
        let mut s = format!("{:?}", self.manager);
        if !self.subresource.is_empty() {
            s += &format!(" with subresource {:?}", self.subresource);
        }
        if self.operation == "Update" {
            s += &format!(" using {} at {}", self.api_version, self.time);
        }
        s
    }

    fn to_json(&self) -> Value {
        let mut e = json!({"manager": self.manager, "operation": self.operation,
            "apiVersion": self.api_version, "time": self.time, "fieldsType": "FieldsV1",
            "fieldsV1": fields_v1(&self.fields)});
        if !self.subresource.is_empty() {
            e["subresource"] = json!(self.subresource);
        }
        e
    }

    fn from_json(e: &Value) -> Entry {
        let s = |k: &str| e[k].as_str().unwrap_or_default().to_string();
        let mut fields = Fields::new();
        parse_fields_v1(&e["fieldsV1"], &mut Vec::new(), &mut fields);
        Entry {
            manager: s("manager"),
            operation: s("operation"),
            api_version: s("apiVersion"),
            time: s("time"),
            subresource: s("subresource"),
            fields,
        }
    }
}

fn subresource(w: &Writer) -> &'static str {
    if w.status { "status" } else { "" }
}

fn now() -> String {
    chrono::Utc::now().format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn entries(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(Entry::from_json)
        .collect()
}

fn set_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::to_json)
        .collect();
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let m = obj["metadata"].as_object_mut().expect("made above");
    if list.is_empty() {
        m.remove("managedFields");
    } else {
        m.insert("managedFields".into(), Value::Array(list));
    }
}

/// The manager of a write that names none (`fieldManager`): the client's User-Agent up to its
/// first `/`, as kube-apiserver takes it.
pub fn manager_of(field_manager: Option<&str>, user_agent: Option<&str>) -> String {
    match field_manager {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => user_agent
            .unwrap_or_default()
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string(),
    }
}

/// The options a patch is refused for, in kube-apiserver's words.
pub fn check_options(apply: bool, manager: Option<&str>, force: bool) -> ApiResult<()> {
    let invalid = |m: &str| ApiError::new(422, "Invalid", format!("PatchOptions.meta.k8s.io \"\" is invalid: {m}"));
    if apply && manager.is_none_or(str::is_empty) {
        return Err(invalid("fieldManager: Required value: is required for apply patch"));
    }
    if !apply && force {
        return Err(invalid("force: Forbidden: may not be specified for non-apply patch"));
    }
    Ok(())
}

/// How a list is merged and owned.
#[derive(Debug, Clone, PartialEq)]
enum ListType {
    Atomic,
    Set,
    Map(Vec<String>),
}

/// Kubernetes' list types (`+listType`, `+listMapKey`) for the lists of the built-in kinds served
/// here, and `x-kubernetes-list-type` for the custom resources; every other list is atomic.
/// `names`: the field names from the root to the list (list items left out).
fn list_type(r: &Resource, names: &[String]) -> ListType {
    let keys = |k: &[&str]| ListType::Map(k.iter().map(|s| s.to_string()).collect());
    let n: Vec<&str> = names.iter().map(String::as_str).collect();
    match n.as_slice() {
        ["metadata", "ownerReferences"] => keys(&["uid"]),
        ["metadata", "finalizers"] => ListType::Set,
        [.., "containers" | "initContainers" | "ephemeralContainers"] => keys(&["name"]),
        [.., "containers" | "initContainers", "ports"] => keys(&["containerPort", "protocol"]),
        [.., "env"] | [.., "volumes"] | [.., "imagePullSecrets"] => keys(&["name"]),
        [.., "volumeMounts"] => keys(&["mountPath"]),
        ["spec", "ports"] if r.kind == "Service" => keys(&["port", "protocol"]),
        ["status", "conditions"] if r.group.is_empty() || r.group == "apps" => keys(&["type"]),
        _ => match super::validate::schema_of(r) {
            Some(schema) => crd_list_type(schema, &n),
            None => ListType::Atomic,
        },
    }
}

fn crd_list_type(schema: &Value, names: &[&str]) -> ListType {
    let mut s = schema;
    for (i, name) in names.iter().enumerate() {
        s = &s["properties"][*name];
        // Through a list to its items' fields, unless the list is the end of the path.
        if s["type"] == "array" && i + 1 < names.len() {
            s = &s["items"];
        }
    }
    match s["x-kubernetes-list-type"].as_str() {
        Some("set") => ListType::Set,
        Some("map") => ListType::Map(
            s["x-kubernetes-list-map-keys"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|k| k.as_str().map(String::from))
                .collect(),
        ),
        _ => ListType::Atomic,
    }
}

/// The path element of a keyed list item: its key fields, sorted by name, as fieldsV1 has them.
fn key_element(item: &Value, keys: &[String]) -> String {
    let key: BTreeMap<&str, &Value> = keys
        .iter()
        .filter_map(|k| item.get(k).map(|v| (k.as_str(), v)))
        .collect();
    format!("k:{}", serde_json::to_string(&key).expect("JSON"))
}

fn value_element(item: &Value) -> String {
    format!("v:{item}")
}

/// The part of an object that a writer owns fields in: all but status, or only status.
fn owned_part(r: &Resource, obj: &Value, status: bool) -> Value {
    let mut part = Map::new();
    for (k, v) in obj.as_object().into_iter().flatten() {
        let keep = match k.as_str() {
            "apiVersion" | "kind" => false,
            "status" if r.status_subresource => status,
            "metadata" => !status,
            _ => !status || !r.status_subresource,
        };
        if !keep {
            continue;
        }
        if k == "metadata" {
            // Of metadata, fields are owned only in these (the rest is the server's).
            let m: Map<String, Value> = ["labels", "annotations", "ownerReferences", "finalizers"]
                .iter()
                .filter_map(|f| v.get(*f).filter(|v| !v.is_null()).map(|v| (f.to_string(), v.clone())))
                .collect();
            if !m.is_empty() {
                part.insert(k.clone(), Value::Object(m));
            }
        } else {
            part.insert(k.clone(), v.clone());
        }
    }
    Value::Object(part)
}

/// Every owned path of a value with what is there: leaves (scalars, empty maps, atomic lists),
/// the items of keyed lists and sets.
fn leaves(r: &Resource, v: &Value) -> BTreeMap<Path, Value> {
    let mut out = BTreeMap::new();
    walk(r, v, &mut Vec::new(), &mut Vec::new(), &mut out);
    out
}

fn walk(r: &Resource, v: &Value, names: &mut Vec<String>, path: &mut Path, out: &mut BTreeMap<Path, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                if child.is_null() {
                    continue;
                }
                names.push(k.clone());
                path.push(format!("f:{k}"));
                walk(r, child, names, path, out);
                path.pop();
                names.pop();
            }
        }
        Value::Array(items) if !path.is_empty() => match list_type(r, names) {
            ListType::Atomic => {
                out.insert(path.clone(), v.clone());
            }
            ListType::Set => {
                for item in items {
                    path.push(value_element(item));
                    out.insert(path.clone(), item.clone());
                    path.pop();
                }
            }
            ListType::Map(keys) => {
                for item in items {
                    path.push(key_element(item, &keys));
                    out.insert(path.clone(), json!({}));
                    walk(r, item, names, path, out);
                    path.pop();
                }
            }
        },
        _ if !path.is_empty() => {
            out.insert(path.clone(), v.clone());
        }
        _ => {}
    }
}

/// The paths whose value differs between two versions of an object (added, changed or removed).
fn changed(before: &BTreeMap<Path, Value>, after: &BTreeMap<Path, Value>) -> Fields {
    let mut out: Fields = after
        .iter()
        .filter(|(p, v)| before.get(*p) != Some(v))
        .map(|(p, _)| p.clone())
        .collect();
    out.extend(before.keys().filter(|p| !after.contains_key(*p)).cloned());
    out
}

/// `applied` merged into `live`: maps field by field, keyed lists item by item, sets as a union;
/// scalars and atomic lists are replaced.
fn merge(r: &Resource, live: &mut Value, applied: &Value, names: &mut Vec<String>) {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                names.push(k.clone());
                match l.get_mut(k) {
                    Some(lv) => merge(r, lv, v, names),
                    None => {
                        l.insert(k.clone(), v.clone());
                    }
                }
                names.pop();
            }
        }
        (Value::Array(l), Value::Array(a)) => match list_type(r, names) {
            ListType::Atomic => *l = a.clone(),
            ListType::Set => {
                for item in a {
                    if !l.contains(item) {
                        l.push(item.clone());
                    }
                }
            }
            ListType::Map(keys) => {
                for item in a {
                    let key = key_element(item, &keys);
                    match l.iter_mut().find(|i| key_element(i, &keys) == key) {
                        Some(li) => merge(r, li, item, names),
                        None => l.push(item.clone()),
                    }
                }
            }
        },
        (live, applied) => *live = applied.clone(),
    }
}

/// Removes what is at `path` (a field, a keyed item or a set item). A map left empty by it goes
/// too, as structured-merge-diff leaves none behind (`nodeSelector: {}` is no selector).
fn remove(r: &Resource, obj: &mut Value, path: &[String]) {
    remove_one(r, obj, path);
    if let [parent @ .., _] = path
        && parent.last().is_some_and(|p| p.starts_with("f:"))
        && lookup(r, obj, parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty))
    {
        remove_one(r, obj, parent);
    }
}

fn lookup<'v>(r: &Resource, obj: &'v mut Value, path: &[String]) -> Option<&'v mut Value> {
    let mut names = Vec::new();
    let mut v = obj;
    for el in path {
        v = step(r, v, el, &mut names)?;
    }
    Some(v)
}

fn remove_one(r: &Resource, obj: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let names: Vec<String> = parents
        .iter()
        .filter_map(|el| el.strip_prefix("f:"))
        .map(String::from)
        .collect();
    let Some(v) = lookup(r, obj, parents) else {
        return;
    };
    if let Some(f) = last.strip_prefix("f:") {
        if let Some(m) = v.as_object_mut() {
            m.remove(f);
        }
    } else if let Value::Array(items) = v {
        let keys = match list_type(r, &names) {
            ListType::Map(keys) => Some(keys),
            _ => None,
        };
        items.retain(|i| match &keys {
            Some(keys) => key_element(i, keys) != *last,
            None => value_element(i) != *last,
        });
    }
}

fn step<'v>(r: &Resource, v: &'v mut Value, el: &str, names: &mut Vec<String>) -> Option<&'v mut Value> {
    if let Some(f) = el.strip_prefix("f:") {
        names.push(f.to_string());
        return v.get_mut(f);
    }
    let ListType::Map(keys) = list_type(r, names) else {
        return None;
    };
    v.as_array_mut()?.iter_mut().find(|i| key_element(i, &keys) == el)
}

/// Whether a path is a key field of a keyed item, which stays while the item does.
fn is_key_field(path: &[String]) -> bool {
    let [.., item, field] = path else { return false };
    let (Some(key), Some(field)) = (item.strip_prefix("k:"), field.strip_prefix("f:")) else {
        return false;
    };
    serde_json::from_str::<Map<String, Value>>(key).is_ok_and(|k| k.contains_key(field))
}

/// A path as kube-apiserver prints it in a conflict: `.spec.containers[name="etcd"].image`.
fn printed(path: &Path) -> String {
    path.iter()
        .map(|el| {
            if let Some(f) = el.strip_prefix("f:") {
                format!(".{f}")
            } else if let Some(k) = el.strip_prefix("k:") {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            } else {
                format!("[={}]", el.trim_start_matches("v:"))
            }
        })
        .collect()
}

fn conflict_error(conflicts: &[(String, Path)]) -> ApiError {
    let message = match conflicts {
        [(manager, path)] => format!(
            "Apply failed with 1 conflict: conflict with {manager}: {}",
            printed(path)
        ),
        _ => {
            let mut by_manager: BTreeMap<&str, Vec<String>> = BTreeMap::new();
            for (m, p) in conflicts {
                by_manager.entry(m).or_default().push(format!("- {}", printed(p)));
            }
            let lines: Vec<String> = by_manager
                .into_iter()
                .flat_map(|(m, paths)| std::iter::once(format!("conflicts with {m}:")).chain(paths))
                .collect();
            format!("Apply failed with {} conflicts: {}", conflicts.len(), lines.join("\n"))
        }
    };
    let causes: Vec<Value> = conflicts
        .iter()
        .map(|(m, p)| json!({"type": "FieldManagerConflict", "message": format!("conflict with {m}"), "field": printed(p)}))
        .collect();
    ApiError::new(409, "Conflict", message).with_details(json!({"causes": causes}))
}

/// A server-side apply of `applied` by `w` onto `live` (None: it creates the object): the
/// object to store, with its managed fields.
pub fn apply(r: &Resource, live: Option<&Value>, applied: &Value, w: &Writer, force: bool) -> ApiResult<Value> {
    if !applied["metadata"]["managedFields"].is_null() {
        return Err(ApiError::new(400, "BadRequest", "metadata.managedFields must be nil"));
    }
    let Some(live) = live else {
        let mut obj = applied.clone();
        let fields = leaves(r, &owned_part(r, applied, w.status)).into_keys().collect();
        set_entries(&mut obj, &[entry(r, w, fields)]);
        return Ok(obj);
    };
    let mut others = entries(live);
    let previous = others.iter().position(|e| e.is(w)).map(|i| others.remove(i));
    let part = owned_part(r, applied, w.status);
    let applied_fields: Fields = leaves(r, &part).into_keys().collect();

    let mut merged = live.clone();
    merge(r, &mut merged, &part, &mut Vec::new());
    // A resourceVersion in the request makes it a compare-and-swap, as in any write.
    if let Some(rv) = applied["metadata"].get("resourceVersion") {
        merged["metadata"]["resourceVersion"] = rv.clone();
    }
    let diff = changed(
        &leaves(r, &owned_part(r, live, w.status)),
        &leaves(r, &owned_part(r, &merged, w.status)),
    );
    let conflicts: Vec<(String, Path)> = others
        .iter()
        .filter(|e| e.manager != w.manager)
        .flat_map(|e| e.fields.intersection(&diff).map(|p| (e.printed(), p.clone())))
        .collect();
    if !conflicts.is_empty() {
        if !force {
            return Err(conflict_error(&conflicts));
        }
        for e in &mut others {
            e.fields.retain(|p| !diff.contains(p));
        }
    }
    // What this manager applied before and applies no more goes, unless another owns it or
    // something under it.
    let owned_by_others = |p: &Path| others.iter().any(|e| e.fields.iter().any(|q| q.starts_with(p)));
    let dropped: Vec<Path> = previous
        .as_ref()
        .map(|e| e.fields.difference(&applied_fields).cloned().collect())
        .unwrap_or_default();
    // Outermost first (a set's order): what is under a removed path went with it.
    let mut removed: Vec<&Path> = Vec::new();
    for p in &dropped {
        let kept = owned_by_others(p) || applied_fields.iter().any(|q| q.starts_with(p));
        if kept || removed.iter().any(|r| p.starts_with(r)) || is_key_field(p) {
            continue;
        }
        remove(r, &mut merged, p);
        removed.push(p);
    }
    let unchanged = previous
        .as_ref()
        .is_some_and(|e| e.fields == applied_fields && diff.is_empty() && dropped.is_empty());
    let mine = match previous {
        Some(e) if unchanged => e,
        _ => entry(r, w, applied_fields),
    };
    others.push(mine);
    set_entries(&mut merged, &others);
    Ok(merged)
}

fn entry(r: &Resource, w: &Writer, fields: Fields) -> Entry {
    Entry {
        manager: w.manager.to_string(),
        operation: w.operation.name().to_string(),
        api_version: r.api_version(),
        time: now(),
        subresource: subresource(w).to_string(),
        fields,
    }
}

/// Any other write (`live` None: a create): `w` owns what it changed, which no other manager
/// owns any more. Managed fields the request itself sets are taken as given (`[]` clears them).
pub fn update(r: &Resource, live: Option<&Value>, new: &mut Value, w: &Writer) {
    let given = new["metadata"].get("managedFields").filter(|g| !g.is_null()).cloned();
    let before = live.map(|l| leaves(r, &owned_part(r, l, w.status))).unwrap_or_default();
    let after = leaves(r, &owned_part(r, new, w.status));
    let diff = changed(&before, &after);
    let mut all = match (&given, live) {
        (Some(g), Some(l)) if *g != l["metadata"]["managedFields"] => entries(new),
        (None, Some(l)) => entries(l),
        _ => entries(new),
    };
    if diff.is_empty() {
        set_entries(new, &all);
        return;
    }
    for e in &mut all {
        e.fields.retain(|p| !diff.contains(p));
    }
    let gained: Fields = diff.into_iter().filter(|p| after.contains_key(p)).collect();
    match all.iter_mut().find(|e| e.is(w)) {
        Some(e) => {
            e.fields.extend(gained);
            e.time = now();
        }
        None => all.push(entry(r, w, gained)),
    }
    set_entries(new, &all);
}

/// fieldsV1: paths as nested objects; `"."` marks a path that is owned itself and has owned
/// paths under it.
fn fields_v1(fields: &Fields) -> Value {
    let mut root = Map::new();
    for p in fields {
        let mut node = &mut root;
        for el in p {
            node = node
                .entry(el.clone())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("fieldsV1 nodes are objects");
        }
        node.insert(".".into(), json!({}));
    }
    // A leaf is `{}`, not `{".": {}}`.
    fn tidy(node: &mut Map<String, Value>) {
        if node.len() == 1 && node.contains_key(".") {
            node.clear();
        }
        for (_, child) in node.iter_mut() {
            if let Some(m) = child.as_object_mut() {
                tidy(m);
            }
        }
    }
    for (_, child) in root.iter_mut() {
        if let Some(m) = child.as_object_mut() {
            tidy(m);
        }
    }
    Value::Object(root)
}

fn parse_fields_v1(v: &Value, path: &mut Path, out: &mut Fields) {
    let Some(m) = v.as_object() else { return };
    if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
        out.insert(path.clone());
    }
    for (k, child) in m {
        if k != "." {
            path.push(k.clone());
            parse_fields_v1(child, path, out);
            path.pop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm() -> &'static Resource {
        super::super::resources::by_key("core/configmaps").unwrap()
    }
    fn ds() -> &'static Resource {
        super::super::resources::by_key("apps/daemonsets").unwrap()
    }
    fn applier(m: &str) -> Writer<'_> {
        Writer {
            manager: m,
            operation: Operation::Apply,
            status: false,
        }
    }

    #[test]
    fn fields_v1_round_trips_with_keyed_items() {
        let obj = json!({"metadata": {"labels": {"a": "1"}, "finalizers": ["x"]},
            "spec": {"template": {"spec": {"containers": [{"name": "etcd", "image": "i"}]}}}});
        let fields: Fields = leaves(ds(), &owned_part(ds(), &obj, false)).into_keys().collect();
        let v1 = fields_v1(&fields);
        assert_eq!(
            v1,
            json!({"f:metadata": {"f:labels": {"f:a": {}}, "f:finalizers": {"v:\"x\"": {}}},
                "f:spec": {"f:template": {"f:spec": {"f:containers": {"k:{\"name\":\"etcd\"}":
                    {".": {}, "f:name": {}, "f:image": {}}}}}}})
        );
        let mut back = Fields::new();
        parse_fields_v1(&v1, &mut Vec::new(), &mut back);
        assert_eq!(back, fields);
    }

    #[test]
    fn a_conflict_names_the_manager_and_the_field_as_kube_apiserver_does() {
        let live = apply(
            cm(),
            None,
            &json!({"metadata": {"name": "c"}, "data": {"a": "1"}}),
            &applier("one"),
            false,
        )
        .unwrap();
        let e = apply(
            cm(),
            Some(&live),
            &json!({"metadata": {"name": "c"}, "data": {"a": "2"}}),
            &applier("two"),
            false,
        )
        .unwrap_err();
        assert_eq!(e.code, 409);
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"one\": .data.a"
        );
        let e = apply(
            ds(),
            None,
            &json!({"spec": {"template": {"spec": {"containers": [{"name": "etcd", "image": "a"}]}}}}),
            &applier("one"),
            false,
        )
        .and_then(|live| {
            apply(
                ds(),
                Some(&live),
                &json!({"spec": {"template": {"spec": {"containers": [{"name": "etcd", "image": "b"}]}}}}),
                &applier("two"),
                false,
            )
        })
        .unwrap_err();
        assert_eq!(
            e.message,
            "Apply failed with 1 conflict: conflict with \"one\": .spec.template.spec.containers[name=\"etcd\"].image"
        );
    }

    #[test]
    fn a_map_emptied_by_a_removal_goes_with_it() {
        let with = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"nodeSelector": {"etcd": "yes"}, "hostPID": true}}}});
        let live = apply(ds(), None, &with, &applier("one"), false).unwrap();
        let without = json!({"metadata": {"name": "d"}, "spec": {"template": {"spec": {"hostPID": true}}}});
        let live = apply(ds(), Some(&live), &without, &applier("one"), false).unwrap();
        assert_eq!(live["spec"]["template"]["spec"], json!({"hostPID": true}));
    }

    #[test]
    fn only_an_apply_may_force_and_it_names_its_manager() {
        assert!(check_options(true, Some("m"), true).is_ok());
        assert!(check_options(false, None, false).is_ok());
        let e = check_options(false, Some("m"), true).unwrap_err();
        assert_eq!(
            e.message,
            "PatchOptions.meta.k8s.io \"\" is invalid: force: Forbidden: may not be specified for non-apply patch"
        );
        assert_eq!(check_options(true, Some(""), false).unwrap_err().code, 422);
    }

    #[test]
    fn keyed_items_of_two_managers_live_side_by_side() {
        let c = |name: &str| json!({"spec": {"template": {"spec": {"containers": [{"name": name, "image": "i"}]}}}});
        let live = apply(ds(), None, &c("etcd"), &applier("one"), false).unwrap();
        let live = apply(ds(), Some(&live), &c("sidecar"), &applier("two"), false).unwrap();
        let names = |o: &Value| -> Vec<String> {
            o["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["name"].as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(names(&live), ["etcd", "sidecar"]);
        // `one` stops applying its container: it goes, the other stays.
        let live = apply(
            ds(),
            Some(&live),
            &json!({"spec": {"template": {"spec": {"containers": []}}}}),
            &applier("one"),
            false,
        )
        .unwrap();
        assert_eq!(names(&live), ["sidecar"]);
    }
}
