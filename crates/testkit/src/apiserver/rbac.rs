//! Who may do what: RBAC as kube-apiserver's authorizer decides it (RBAC docs, "Referring to
//! resources" and "Referring to subjects"; `plugin/pkg/auth/authorizer/rbac` in Kubernetes), from
//! the Roles, ClusterRoles and bindings the store holds. The users are the ones `auth` knows: the
//! lab's administrator (group `system:masters`, never checked, as on a real cluster) and
//! ServiceAccounts by their tokens.

use serde_json::{Value, json};

use super::resources::{self, Resource};
use super::store::{ApiError, Store};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

pub const MASTERS: &str = "system:masters";
const AUTHENTICATED: &str = "system:authenticated";

impl User {
    /// The cluster's administrator: what `kubectl` is in the lab.
    pub fn admin() -> User {
        User {
            name: "lab-admin".into(),
            groups: vec![MASTERS.into(), AUTHENTICATED.into()],
        }
    }

    /// A ServiceAccount, with the groups Kubernetes gives it.
    pub fn service_account(namespace: &str, name: &str) -> User {
        User {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                AUTHENTICATED.into(),
            ],
        }
    }
}

/// What a request asks for, as the authorizer sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request<'a> {
    Resource {
        verb: &'a str,
        group: &'a str,
        resource: &'a str,
        subresource: Option<&'a str>,
        namespace: Option<&'a str>,
        /// For list and watch, the name a `metadata.name=` field selector pins (as Kubernetes
        /// does, so that a rule with resourceNames allows watching one object).
        name: Option<&'a str>,
    },
    NonResource {
        verb: &'a str,
        path: &'a str,
    },
}

/// Allowed, or the 403 a real API server sends, in its words.
pub fn authorize(store: &Store, user: &User, req: &Request) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) || rules_for(store, user, req).iter().any(|r| allows(r, req)) {
        return Ok(());
    }
    Err(forbidden(user, req))
}

/// A SelfSubjectAccessReview (for the requester) or SubjectAccessReview (for `spec.user` and
/// `spec.groups`), answered by the same rules (`kubectl auth can-i`).
pub fn review(store: &Store, requester: &User, kind: &str, mut review: Value) -> Result<Value, ApiError> {
    let spec = review["spec"].clone();
    fn text(v: &Value) -> Option<&str> {
        v.as_str().filter(|s| !s.is_empty())
    }
    let subject = match kind {
        "SelfSubjectAccessReview" => requester.clone(),
        _ => User {
            name: text(&spec["user"]).unwrap_or_default().to_string(),
            groups: strings(&spec["groups"]).into_iter().map(str::to_string).collect(),
        },
    };
    let (res, non) = (&spec["resourceAttributes"], &spec["nonResourceAttributes"]);
    let req = if res.is_object() {
        Request::Resource {
            verb: text(&res["verb"]).unwrap_or_default(),
            group: text(&res["group"]).unwrap_or_default(),
            resource: text(&res["resource"]).unwrap_or_default(),
            subresource: text(&res["subresource"]),
            namespace: text(&res["namespace"]),
            name: text(&res["name"]),
        }
    } else if non.is_object() {
        Request::NonResource {
            verb: text(&non["verb"]).unwrap_or_default(),
            path: text(&non["path"]).unwrap_or_default(),
        }
    } else {
        return Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "{kind}.authorization.k8s.io is invalid: spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified"
            ),
        ));
    };
    let allowed = authorize(store, &subject, &req).is_ok();
    review["status"] = json!({"allowed": allowed});
    Ok(review)
}

/// Who a request acts as when it carries `Impersonate-User` (and `Impersonate-Group`) headers:
/// allowed only with `impersonate` on that user, ServiceAccount or group, as Kubernetes checks it.
pub fn impersonate(store: &Store, user: &User, name: &str, groups: &[String]) -> Result<User, ApiError> {
    let (target, resource, namespace, object) = match name
        .strip_prefix("system:serviceaccount:")
        .and_then(|r| r.split_once(':'))
    {
        Some((ns, sa)) => (User::service_account(ns, sa), "serviceaccounts", Some(ns), sa),
        None => (
            User {
                name: name.to_string(),
                groups: vec![],
            },
            "users",
            None,
            name,
        ),
    };
    let check = |resource, namespace, name| {
        let req = Request::Resource {
            verb: "impersonate",
            group: "",
            resource,
            subresource: None,
            namespace,
            name: Some(name),
        };
        authorize(store, user, &req)
    };
    check(resource, namespace, object)?;
    for g in groups {
        check("groups", None, g)?;
    }
    let mut target = target;
    if !groups.is_empty() || resource == "users" {
        target.groups = groups.to_vec();
        target.groups.push(AUTHENTICATED.into());
    }
    Ok(target)
}

/// RBAC's escalation check on a write of a Role, ClusterRole or binding (`r`, into `ns`):
/// a user may grant only what it holds itself (or with `escalate` on roles, `bind` on the role
/// a binding names). Each rule is taken apart into single requests, and each must be allowed:
/// a `*` in the new rule is then matched only by a `*` the user holds, as Kubernetes does.
pub fn check_grant(store: &Store, user: &User, kind: &str, ns: Option<&str>, obj: &Value) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == MASTERS) {
        return Ok(());
    }
    let (rules, exemption, role) = match kind {
        "Role" | "ClusterRole" => {
            let plural = if kind == "Role" { "roles" } else { "clusterroles" };
            (
                obj["rules"].clone(),
                ("escalate", plural),
                obj["metadata"]["name"].as_str().unwrap_or_default(),
            )
        }
        "RoleBinding" | "ClusterRoleBinding" => {
            let role_kind = obj["roleRef"]["kind"].as_str().unwrap_or_default();
            let (plural, key, role_ns) = if role_kind == "Role" {
                ("roles", "rbac.authorization.k8s.io/roles", ns.unwrap_or_default())
            } else {
                ("clusterroles", "rbac.authorization.k8s.io/clusterroles", "")
            };
            let r = resources::by_key(key).expect("RBAC resources are served");
            let name = obj["roleRef"]["name"].as_str().unwrap_or_default();
            let rules = store
                .get(r, role_ns, name)
                .map(|role| role["rules"].clone())
                .unwrap_or(json!([]));
            (rules, ("bind", plural), name)
        }
        _ => return Ok(()),
    };
    let exempt = Request::Resource {
        verb: exemption.0,
        group: "rbac.authorization.k8s.io",
        resource: exemption.1,
        subresource: None,
        namespace: ns,
        name: Some(role),
    };
    if authorize(store, user, &exempt).is_ok() {
        return Ok(());
    }
    for rule in rules.as_array().into_iter().flatten() {
        for verb in strings(&rule["verbs"]) {
            for path in strings(&rule["nonResourceURLs"]) {
                authorize(store, user, &Request::NonResource { verb, path })
                    .map_err(|_| escalation(user, kind, rule))?;
            }
            let names = strings(&rule["resourceNames"]);
            let names: Vec<Option<&str>> = if names.is_empty() {
                vec![None]
            } else {
                names.into_iter().map(Some).collect()
            };
            for group in strings(&rule["apiGroups"]) {
                for combined in strings(&rule["resources"]) {
                    let (resource, subresource) = match combined.split_once('/') {
                        Some((r, s)) => (r, Some(s)),
                        None => (combined, None),
                    };
                    for name in &names {
                        let req = Request::Resource {
                            verb,
                            group,
                            resource,
                            subresource,
                            namespace: ns,
                            name: *name,
                        };
                        authorize(store, user, &req).map_err(|_| escalation(user, kind, rule))?;
                    }
                }
            }
        }
    }
    Ok(())
}

fn escalation(user: &User, kind: &str, rule: &Value) -> ApiError {
    ApiError::new(
        403,
        "Forbidden",
        format!(
            "{kind} is forbidden: user \"{}\" is attempting to grant RBAC permissions not currently held: {rule}",
            user.name
        ),
    )
}

/// The rules that apply to `user` for a request in the request's namespace: every ClusterRoleBinding,
/// and the RoleBindings of that namespace.
fn rules_for(store: &Store, user: &User, req: &Request) -> Vec<Value> {
    let by_key = |k| resources::by_key(k).expect("RBAC resources are served");
    let (roles, cluster_roles) = (
        by_key("rbac.authorization.k8s.io/roles"),
        by_key("rbac.authorization.k8s.io/clusterroles"),
    );
    let mut rules = Vec::new();
    let mut add = |role: Option<Value>| {
        if let Some(r) = role {
            rules.extend(r["rules"].as_array().cloned().unwrap_or_default());
        }
    };
    for b in store.list(by_key("rbac.authorization.k8s.io/clusterrolebindings"), None) {
        if b["roleRef"]["kind"] == "ClusterRole" && binds(&b, user, "") {
            add(store.get(cluster_roles, "", role_name(&b)).ok());
        }
    }
    let namespace = match req {
        Request::Resource { namespace, .. } => *namespace,
        Request::NonResource { .. } => None,
    };
    if let Some(ns) = namespace {
        for b in store.list(by_key("rbac.authorization.k8s.io/rolebindings"), Some(ns)) {
            if !binds(&b, user, ns) {
                continue;
            }
            match b["roleRef"]["kind"].as_str() {
                Some("Role") => add(store.get(roles, ns, role_name(&b)).ok()),
                Some("ClusterRole") => add(store.get(cluster_roles, "", role_name(&b)).ok().map(|mut r| {
                    // Through a RoleBinding, a ClusterRole grants nothing outside resources.
                    for rule in r["rules"].as_array_mut().into_iter().flatten() {
                        if let Some(o) = rule.as_object_mut() {
                            o.remove("nonResourceURLs");
                        }
                    }
                    r
                })),
                _ => {}
            }
        }
    }
    rules
}

fn role_name(binding: &Value) -> &str {
    binding["roleRef"]["name"].as_str().unwrap_or_default()
}

/// Whether a binding in `ns` ("" for a ClusterRoleBinding) names `user` among its subjects.
fn binds(binding: &Value, user: &User, ns: &str) -> bool {
    binding["subjects"].as_array().into_iter().flatten().any(|s| {
        let name = s["name"].as_str().unwrap_or_default();
        match s["kind"].as_str() {
            Some("User") => user.name == name,
            Some("Group") => user.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                let sa_ns = s["namespace"].as_str().filter(|n| !n.is_empty()).unwrap_or(ns);
                user.name == format!("system:serviceaccount:{sa_ns}:{name}")
            }
            _ => false,
        }
    })
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str).collect()
}

/// One rule against one request (`RuleAllows` in Kubernetes).
fn allows(rule: &Value, req: &Request) -> bool {
    let verbs = strings(&rule["verbs"]);
    match req {
        Request::Resource {
            verb,
            group,
            resource,
            subresource,
            name,
            ..
        } => {
            let combined = qualified(resource, *subresource);
            let names = strings(&rule["resourceNames"]);
            has(&verbs, verb)
                && has(&strings(&rule["apiGroups"]), group)
                && strings(&rule["resources"]).iter().any(|r| {
                    *r == "*" || *r == combined || subresource.is_some_and(|s| r.strip_prefix("*/") == Some(s))
                })
                && (names.is_empty() || name.is_some_and(|n| names.contains(&n)))
        }
        Request::NonResource { verb, path } => {
            has(&verbs, verb)
                && strings(&rule["nonResourceURLs"]).iter().any(|u| {
                    *u == "*" || u == path || u.strip_suffix('*').is_some_and(|prefix| path.starts_with(prefix))
                })
        }
    }
}

/// `resource` or `resource/subresource`, as rules and messages name a request's resource.
/// The OwnerReferencesPermissionEnforcement admission plugin (on in OpenShift, and wherever a
/// cluster's administrator turns it on): a write that changes an object's ownerReferences needs
/// `delete` on the object, and one that makes a reference block its owner's deletion
/// (`blockOwnerDeletion`, which `controller_owner_ref` sets) needs `update` on the owner's
/// `finalizers` subresource. Refused in the plugin's words, with RBAC's empty reason.
pub fn owner_references(
    store: &Store,
    user: &User,
    target: (&Resource, &str, &str),
    new: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let (r, ns, name) = target;
    let refs = |o: Option<&Value>| -> Vec<Value> {
        o.and_then(|o| o["metadata"]["ownerReferences"].as_array().cloned())
            .unwrap_or_default()
    };
    let (now, before) = (refs(Some(new)), refs(old));
    if now == before {
        return Ok(());
    }
    let namespace = (!ns.is_empty()).then_some(ns);
    let refused = |why: String| {
        let what = if r.group.is_empty() {
            r.plural.to_string()
        } else {
            format!("{}.{}", r.plural, r.group)
        };
        ApiError::new(403, "Forbidden", format!("{what} \"{name}\" is forbidden: {why}"))
    };
    let delete = Request::Resource {
        verb: "delete",
        group: r.group,
        resource: r.plural,
        subresource: None,
        namespace,
        name: Some(name),
    };
    if authorize(store, user, &delete).is_err() {
        return Err(refused(
            "cannot set an ownerRef on a resource you can't delete: , <nil>".into(),
        ));
    }
    let blocking = |r: &Value| r["blockOwnerDeletion"] == true;
    for owner in now.iter().filter(|o| blocking(o)) {
        let was_blocking = before.iter().any(|b| b["uid"] == owner["uid"] && blocking(b));
        if was_blocking {
            continue;
        }
        let api_version = owner["apiVersion"].as_str().unwrap_or_default();
        let kind = owner["kind"].as_str().unwrap_or_default();
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        let Some(owner_resource) = resources::RESOURCES.iter().find(|o| o.group == group && o.kind == kind) else {
            return Err(refused(format!(
                "cannot set blockOwnerDeletion in this case because cannot find RESTMapping for APIVersion {api_version} Kind {kind}: , <nil>"
            )));
        };
        let finalizers = Request::Resource {
            verb: "update",
            group,
            resource: owner_resource.plural,
            subresource: Some("finalizers"),
            namespace,
            name: owner["name"].as_str(),
        };
        if authorize(store, user, &finalizers).is_err() {
            return Err(refused(
                "cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: , <nil>".into(),
            ));
        }
    }
    Ok(())
}

fn qualified(resource: &str, subresource: Option<&str>) -> String {
    match subresource {
        Some(s) => format!("{resource}/{s}"),
        None => resource.to_string(),
    }
}

fn has(list: &[&str], want: &str) -> bool {
    list.iter().any(|v| *v == "*" || *v == want)
}

/// kube-apiserver's message: `secrets "x" is forbidden: User "…" cannot get resource "secrets"
/// in API group "" in the namespace "ns"`.
fn forbidden(user: &User, req: &Request) -> ApiError {
    let who = format!("User \"{}\"", user.name);
    let (message, details) = match req {
        Request::NonResource { verb, path } => (format!("forbidden: {who} cannot {verb} path \"{path}\""), json!({})),
        Request::Resource {
            verb,
            group,
            resource,
            subresource,
            namespace,
            name,
        } => {
            let shown = qualified(resource, *subresource);
            let scope = match namespace {
                Some(ns) => format!("in the namespace \"{ns}\""),
                None => "at the cluster scope".into(),
            };
            let qualified = if group.is_empty() {
                resource.to_string()
            } else {
                format!("{resource}.{group}")
            };
            let subject = match name {
                Some(n) if *verb != "list" && *verb != "watch" => format!("{qualified} \"{n}\""),
                _ => qualified,
            };
            (
                format!(
                    "{subject} is forbidden: {who} cannot {verb} resource \"{shown}\" in API group \"{group}\" {scope}"
                ),
                json!({"name": name.unwrap_or_default(), "group": group, "kind": resource}),
            )
        }
    };
    ApiError::new(403, "Forbidden", message).with_details(details)
}

/// The bootstrap policy every cluster has that the lab's clients rely on: discovery, the
/// version and asking what one may do, for every authenticated user (`system:discovery`,
/// `system:public-info-viewer`, `system:basic-user`).
pub fn bootstrap() -> Vec<(&'static str, Value)> {
    let role = |name: &str, urls: &[&str]| {
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "rules": [{"nonResourceURLs": urls, "verbs": ["get"]}]})
    };
    let binding = |name: &str, groups: &[&str]| {
        let subjects: Vec<Value> = groups
            .iter()
            .map(|g| json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": g}))
            .collect();
        json!({"metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
               "subjects": subjects})
    };
    vec![
        (
            "rbac.authorization.k8s.io/clusterroles",
            role(
                "system:discovery",
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            ),
        ),
        (
            "rbac.authorization.k8s.io/clusterrolebindings",
            binding("system:discovery", &[AUTHENTICATED]),
        ),
        (
            "rbac.authorization.k8s.io/clusterroles",
            role(
                "system:public-info-viewer",
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            ),
        ),
        (
            "rbac.authorization.k8s.io/clusterrolebindings",
            binding("system:public-info-viewer", &[AUTHENTICATED, "system:unauthenticated"]),
        ),
        (
            "rbac.authorization.k8s.io/clusterroles",
            json!({"metadata": {"name": "system:basic-user", "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
                   "rules": [{"apiGroups": ["authorization.k8s.io"],
                              "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"], "verbs": ["create"]}]}),
        ),
        (
            "rbac.authorization.k8s.io/clusterrolebindings",
            binding("system:basic-user", &[AUTHENTICATED]),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store_with(objects: &[(&'static str, String, Value)]) -> Store {
        let mut s = Store::new();
        for (key, ns, obj) in objects {
            let r = resources::by_key(key).unwrap();
            s.create(r, ns, obj.clone()).unwrap();
        }
        s
    }

    fn get<'a>(resource: &'a str, ns: Option<&'a str>, name: Option<&'a str>) -> Request<'a> {
        Request::Resource {
            verb: "get",
            group: "",
            resource,
            subresource: None,
            namespace: ns,
            name,
        }
    }

    fn agent() -> User {
        User::service_account("ops", "agent")
    }

    fn sa_subject() -> Value {
        json!([{"kind": "ServiceAccount", "name": "agent", "namespace": "ops"}])
    }

    fn role(ns: &str, name: &str, rules: Value) -> (&'static str, String, Value) {
        (
            "rbac.authorization.k8s.io/roles",
            ns.into(),
            json!({"metadata": {"name": name}, "rules": rules}),
        )
    }

    fn namespaces(names: &[&str]) -> Vec<(&'static str, String, Value)> {
        names
            .iter()
            .map(|n| ("core/namespaces", String::new(), json!({"metadata": {"name": n}})))
            .collect()
    }

    #[test]
    fn an_owner_reference_needs_delete_and_a_blocking_one_the_owners_finalizers() {
        let with_rules = |rules: Value| {
            let mut objs = namespaces(&["ops"]);
            objs.push(role("ops", "r", rules));
            objs.push((
                "rbac.authorization.k8s.io/rolebindings",
                "ops".into(),
                json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": sa_subject()}),
            ));
            store_with(&objs)
        };
        let secrets = resources::by_key("core/secrets").unwrap();
        let owned = |block: bool| {
            json!({"metadata": {"name": "s", "ownerReferences": [{"apiVersion": "runc-etcd.io/v1alpha1",
                "kind": "EtcdCluster", "name": "main", "uid": "u1", "controller": true, "blockOwnerDeletion": block}]}})
        };
        let check = |s: &Store, new: &Value, old: Option<&Value>| {
            owner_references(s, &agent(), (secrets, "ops", "s"), new, old).map_err(|e| e.message)
        };
        let create = json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create"]}]);
        let s = with_rules(create.clone());
        assert_eq!(
            check(&s, &json!({"metadata": {"name": "s"}}), None),
            Ok(()),
            "no owner, nothing to check"
        );
        assert_eq!(
            check(&s, &owned(false), None),
            Err("secrets \"s\" is forbidden: cannot set an ownerRef on a resource you can't delete: , <nil>".into())
        );
        let s = with_rules(json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["create", "delete"]}]));
        assert_eq!(check(&s, &owned(false), None), Ok(()));
        assert_eq!(
            check(&s, &owned(true), None),
            Err("secrets \"s\" is forbidden: cannot set blockOwnerDeletion if an ownerReference refers to a resource you can't set finalizers on: , <nil>".into())
        );
        // A reference that blocked already is not new: an update that keeps it is not checked.
        assert_eq!(check(&s, &owned(true), Some(&owned(true))), Ok(()));
        let s = with_rules(
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete"]},
            {"apiGroups": ["runc-etcd.io"], "resources": ["etcdclusters/finalizers"], "verbs": ["update"]}]),
        );
        assert_eq!(check(&s, &owned(true), Some(&owned(false))), Ok(()));
    }

    #[test]
    fn a_role_grants_its_verbs_on_its_resources_in_its_namespace_only() {
        let mut objs = namespaces(&["ops", "apps"]);
        objs.push(role(
            "apps",
            "r",
            json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]),
        ));
        objs.push((
            "rbac.authorization.k8s.io/rolebindings",
            "apps".into(),
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": sa_subject()}),
        ));
        let s = store_with(&objs);
        assert!(authorize(&s, &agent(), &get("secrets", Some("apps"), Some("x"))).is_ok());
        let e = authorize(&s, &agent(), &get("secrets", Some("ops"), Some("x"))).unwrap_err();
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "secrets \"x\" is forbidden: User \"system:serviceaccount:ops:agent\" cannot get resource \"secrets\" in API group \"\" in the namespace \"ops\""
        );
        let list = Request::Resource {
            verb: "list",
            group: "",
            resource: "secrets",
            subresource: None,
            namespace: Some("apps"),
            name: None,
        };
        assert!(authorize(&s, &agent(), &list).is_err(), "get does not give list");
        assert!(authorize(&s, &agent(), &get("configmaps", Some("apps"), Some("x"))).is_err());
        assert!(
            authorize(
                &s,
                &User::service_account("ops", "other"),
                &get("secrets", Some("apps"), Some("x"))
            )
            .is_err(),
            "another ServiceAccount of the same namespace is not bound"
        );
        assert!(authorize(&s, &User::admin(), &get("secrets", Some("ops"), Some("x"))).is_ok());
    }

    #[test]
    fn resource_names_restrict_get_and_a_name_pinned_watch_but_never_allow_create_or_list() {
        let mut objs = namespaces(&["ops"]);
        objs.push(role(
            "ops",
            "r",
            json!([{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mine"], "verbs": ["get", "list", "watch", "create"]}]),
        ));
        objs.push((
            "rbac.authorization.k8s.io/rolebindings",
            "ops".into(),
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": sa_subject()}),
        ));
        let s = store_with(&objs);
        let req = |verb, name| Request::Resource {
            verb,
            group: "",
            resource: "secrets",
            subresource: None,
            namespace: Some("ops"),
            name,
        };
        assert!(authorize(&s, &agent(), &req("get", Some("mine"))).is_ok());
        assert!(authorize(&s, &agent(), &req("get", Some("ca"))).is_err());
        assert!(authorize(&s, &agent(), &req("watch", Some("mine"))).is_ok());
        assert!(authorize(&s, &agent(), &req("list", None)).is_err());
        let e = authorize(&s, &agent(), &req("create", None)).unwrap_err();
        assert!(e.message.starts_with("secrets is forbidden: "), "{}", e.message);
    }

    #[test]
    fn subresources_are_their_own_resources_and_star_slash_matches_any_parent() {
        let mut objs = namespaces(&["ops"]);
        objs.push(role(
            "ops",
            "r",
            json!([{"apiGroups": ["runc-etcd.io"], "resources": ["etcdmembers/status"], "verbs": ["patch"]},
                   {"apiGroups": ["*"], "resources": ["*/scale"], "verbs": ["*"]}]),
        ));
        objs.push((
            "rbac.authorization.k8s.io/rolebindings",
            "ops".into(),
            json!({"metadata": {"name": "b"}, "roleRef": {"kind": "Role", "name": "r"}, "subjects": sa_subject()}),
        ));
        let s = store_with(&objs);
        let patch = |resource, subresource| Request::Resource {
            verb: "patch",
            group: "runc-etcd.io",
            resource,
            subresource,
            namespace: Some("ops"),
            name: Some("m"),
        };
        assert!(authorize(&s, &agent(), &patch("etcdmembers", Some("status"))).is_ok());
        let e = authorize(&s, &agent(), &patch("etcdmembers", None)).unwrap_err();
        assert!(
            e.message
                .contains("cannot patch resource \"etcdmembers\" in API group \"runc-etcd.io\""),
            "{}",
            e.message
        );
        assert!(authorize(&s, &agent(), &patch("etcdclusters", Some("status"))).is_err());
        assert!(authorize(&s, &agent(), &patch("etcdclusters", Some("scale"))).is_ok());
    }

    #[test]
    fn cluster_roles_apply_everywhere_through_cluster_bindings_and_in_one_namespace_through_role_bindings() {
        let mut objs = namespaces(&["ops", "apps", "other"]);
        objs.push((
            "rbac.authorization.k8s.io/clusterroles",
            String::new(),
            json!({"metadata": {"name": "nodes"}, "rules": [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list"]}]}),
        ));
        objs.push((
            "rbac.authorization.k8s.io/clusterroles",
            String::new(),
            json!({"metadata": {"name": "leases"}, "rules": [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get"]},
                                                           {"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]}),
        ));
        objs.push((
            "rbac.authorization.k8s.io/clusterrolebindings",
            String::new(),
            json!({"metadata": {"name": "nodes"}, "roleRef": {"kind": "ClusterRole", "name": "nodes"},
                   "subjects": [{"kind": "Group", "name": "system:serviceaccounts:ops"}]}),
        ));
        objs.push((
            "rbac.authorization.k8s.io/rolebindings",
            "apps".into(),
            json!({"metadata": {"name": "leases"}, "roleRef": {"kind": "ClusterRole", "name": "leases"}, "subjects": sa_subject()}),
        ));
        let s = store_with(&objs);
        assert!(
            authorize(&s, &agent(), &get("nodes", None, Some("n1"))).is_ok(),
            "through the group"
        );
        assert!(authorize(&s, &User::service_account("apps", "x"), &get("nodes", None, Some("n1"))).is_err());
        let lease = |ns| Request::Resource {
            verb: "get",
            group: "coordination.k8s.io",
            resource: "leases",
            subresource: None,
            namespace: Some(ns),
            name: Some("l"),
        };
        assert!(authorize(&s, &agent(), &lease("apps")).is_ok());
        let e = authorize(&s, &agent(), &lease("other")).unwrap_err();
        assert!(
            e.message.starts_with("leases.coordination.k8s.io \"l\" is forbidden"),
            "{}",
            e.message
        );
        let metrics = Request::NonResource {
            verb: "get",
            path: "/metrics",
        };
        assert!(
            authorize(&s, &agent(), &metrics).is_err(),
            "a RoleBinding grants no non-resource URL"
        );
        let e = authorize(&s, &agent(), &get("nodes", None, None).with_verb("delete")).unwrap_err();
        assert!(e.message.ends_with("at the cluster scope"), "{}", e.message);
    }

    #[test]
    fn non_resource_urls_match_exactly_or_by_a_trailing_star_and_discovery_is_open_to_every_user() {
        let s = store_with(&[]);
        let path = |path| Request::NonResource { verb: "get", path };
        for p in ["/api", "/apis/apps/v1", "/openapi/v3", "/version"] {
            assert!(authorize(&s, &agent(), &path(p)).is_ok(), "{p}");
        }
        let e = authorize(&s, &agent(), &path("/metrics")).unwrap_err();
        assert_eq!(
            e.message,
            "forbidden: User \"system:serviceaccount:ops:agent\" cannot get path \"/metrics\""
        );
        assert!(
            authorize(
                &s,
                &agent(),
                &Request::NonResource {
                    verb: "post",
                    path: "/api"
                }
            )
            .is_err()
        );
    }

    #[test]
    fn a_user_grants_only_what_it_holds() {
        let mut objs = namespaces(&["ops", "apps"]);
        objs.push((
            "rbac.authorization.k8s.io/clusterroles",
            String::new(),
            json!({"metadata": {"name": "operator"}, "rules": [
                {"apiGroups": [""], "resources": ["secrets"], "verbs": ["get", "create"]},
                {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create"]}]}),
        ));
        objs.push((
            "rbac.authorization.k8s.io/clusterrolebindings",
            String::new(),
            json!({"metadata": {"name": "operator"}, "roleRef": {"kind": "ClusterRole", "name": "operator"}, "subjects": sa_subject()}),
        ));
        let mut s = store_with(&objs);
        let role = |verbs: Value| {
            json!({"metadata": {"name": "agent"},
                   "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["m1-tls"], "verbs": verbs}]})
        };
        check_grant(&s, &agent(), "Role", Some("apps"), &role(json!(["get"]))).unwrap();
        let e = check_grant(&s, &agent(), "Role", Some("apps"), &role(json!(["get", "list"]))).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message
                .contains("attempting to grant RBAC permissions not currently held"),
            "{}",
            e.message
        );
        let wildcard =
            json!({"metadata": {"name": "all"}, "rules": [{"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}]});
        assert!(
            check_grant(&s, &agent(), "Role", Some("apps"), &wildcard).is_err(),
            "a * is held only as a *"
        );
        // A binding to a role whose rules the user holds; not to one it does not.
        let r = resources::by_key("rbac.authorization.k8s.io/roles").unwrap();
        s.create(r, "apps", role(json!(["get"]))).unwrap();
        s.create(r, "apps", json!({"metadata": {"name": "more"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["delete"]}]}))
            .unwrap();
        let binding = |role: &str| json!({"metadata": {"name": role}, "roleRef": {"kind": "Role", "name": role}, "subjects": sa_subject()});
        check_grant(&s, &agent(), "RoleBinding", Some("apps"), &binding("agent")).unwrap();
        assert!(check_grant(&s, &agent(), "RoleBinding", Some("apps"), &binding("more")).is_err());
        assert!(check_grant(&s, &User::admin(), "RoleBinding", Some("apps"), &binding("more")).is_ok());
    }

    impl<'a> Request<'a> {
        fn with_verb(self, v: &'a str) -> Self {
            match self {
                Request::Resource {
                    group,
                    resource,
                    subresource,
                    namespace,
                    name,
                    ..
                } => Request::Resource {
                    verb: v,
                    group,
                    resource,
                    subresource,
                    namespace,
                    name,
                },
                other => other,
            }
        }
    }
}
