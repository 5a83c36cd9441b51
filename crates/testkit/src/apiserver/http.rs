//! HTTP routes of the test API server, as Kubernetes clients call them:
//! `/api/v1[/namespaces/NS]/PLURAL[/NAME[/status]]` and the same under `/apis/GROUP/VERSION`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Extension, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::apply::{self, Operation, Writer};
use super::deletion::Propagation;
use super::events::Shape;
use super::rbac::{self, User};
use super::resources::{self, Resource};
use super::store::{ApiError, ApiResult, Store};
use super::validate;

pub type Shared = Arc<Mutex<Store>>;

struct Route {
    resource: &'static Resource,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

impl Route {
    fn status(&self) -> bool {
        self.subresource.as_deref() == Some("status")
    }
}

fn parse(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some(ns.to_string()), rest),
        _ => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [p] => (*p, None, None),
        [p, n] => (*p, Some(n.to_string()), None),
        [p, n, s] => (*p, Some(n.to_string()), Some(s.to_string())),
        _ => return None,
    };
    let resource = resources::find(group, version, plural)?;
    let served = match subresource.as_deref() {
        None => true,
        Some("status") => resource.status_subresource,
        Some("token") => resource.key == "core/serviceaccounts",
        Some(_) => false,
    };
    served.then_some(Route {
        resource,
        namespace,
        name,
        subresource,
    })
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (code, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

/// The verb RBAC checks for a request (Kubernetes' `RequestInfo`).
fn verb(method: &Method, named: bool, q: &HashMap<String, String>) -> String {
    match (method.as_str(), named) {
        ("GET", false) if watching(q) => "watch".into(),
        ("GET", false) => "list".into(),
        ("GET", true) => "get".into(),
        ("POST", _) => "create".into(),
        ("PUT", _) => "update".into(),
        ("DELETE", false) => "deletecollection".into(),
        (m, _) => m.to_lowercase(),
    }
}

fn watching(q: &HashMap<String, String>) -> bool {
    q.get("watch").is_some_and(|w| w == "true" || w == "1")
}

/// The object a list or watch is pinned to by a `metadata.name=` field selector.
fn pinned_name(q: &HashMap<String, String>) -> Option<&str> {
    q.get("fieldSelector")?
        .split(',')
        .find_map(|t| t.strip_prefix("metadata.name=").map(|n| n.trim_start_matches('=')))
}

pub fn error(e: ApiError) -> Response {
    json_response(
        StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        &e.status(),
    )
}

pub async fn handle(
    State(store): State<Shared>,
    Extension(user): Extension<User>,
    method: Method,
    uri: Uri,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let route = parse(uri.path());
    if route.is_none() {
        // A path that names no resource is a non-resource request: authorized before anything,
        // by the HTTP method's name.
        let req = rbac::Request::NonResource {
            verb: &method.as_str().to_lowercase(),
            path: uri.path(),
        };
        if let Err(e) = rbac::authorize(&store.lock().unwrap(), &user, &req) {
            return error(e);
        }
    }
    if method == Method::GET
        && let Some(doc) = super::discovery::document(uri.path())
    {
        return json_response(StatusCode::OK, &doc);
    }
    let Some(route) = route else {
        return error(ApiError::new(
            404,
            "NotFound",
            format!("the server could not find {}", uri.path()),
        ));
    };
    // Core Events are stored as events.k8s.io Events (`events`); `r` is where objects are kept.
    let (r, shape) = match route.resource.key {
        "core/events" => (
            resources::by_key("events.k8s.io/events").expect("Events are served"),
            Shape::Core,
        ),
        _ => (route.resource, Shape::Stored),
    };
    let asked = route.resource;
    let ns = route.namespace.clone().unwrap_or_default();
    if r.namespaced != route.namespace.is_some() && !(route.name.is_none() && method == Method::GET) {
        return error(ApiError::new(
            404,
            "NotFound",
            format!("{} is namespaced: {}", r.plural, r.namespaced),
        ));
    }
    let verb = verb(&method, route.name.is_some(), &q);
    let manager = apply::manager_of(
        q.get("fieldManager").map(String::as_str),
        headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()),
    );
    let updater = Writer {
        manager: &manager,
        operation: Operation::Update,
        status: route.status(),
    };
    let req = rbac::Request::Resource {
        verb: &verb,
        group: asked.group,
        resource: asked.plural,
        subresource: route.subresource.as_deref(),
        // A request for a Namespace by name is in that namespace (Kubernetes' RequestInfo): a
        // Role there may grant reading it.
        namespace: match asked.key {
            "core/namespaces" => route.name.as_deref(),
            _ => route.namespace.as_deref(),
        },
        name: route.name.as_deref().or_else(|| pinned_name(&q)),
    };
    {
        let mut s = store.lock().unwrap();
        if let Err(e) = rbac::authorize(&s, &user, &req) {
            return error(e);
        }
        let counted = super::Counted {
            user: user.name.clone(),
            verb: verb.clone(),
            resource: format!(
                "{}/{}{}",
                asked.group,
                asked.plural,
                route
                    .subresource
                    .as_deref()
                    .map(|s| format!("/{s}"))
                    .unwrap_or_default()
            ),
        };
        *s.requests.entry(counted).or_default() += 1;
    }
    let result = match (&method, route.name.as_deref()) {
        (&Method::POST, None) if asked.group == "authorization.k8s.io" => {
            parse_body(&body).and_then(|review| rbac::review(&store.lock().unwrap(), &user, asked.kind, review))
        }
        (&Method::POST, Some(name)) if route.subresource.as_deref() == Some("token") => {
            parse_body(&body).and_then(|req| super::auth::token_request(&mut store.lock().unwrap(), &ns, name, &req))
        }
        (_, _) if route.subresource.as_deref() == Some("token") => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} {}", uri.path()),
        )),
        (&Method::GET, None) if watching(&q) => {
            return watch(store, (r, asked, shape), route.namespace, q, wants_table(&headers));
        }
        (&Method::GET, None) => {
            list(&store, (r, asked, shape), route.namespace.as_deref(), &q).map(|l| as_table(&headers, asked, l))
        }
        (&Method::GET, Some(name)) => store.lock().unwrap().get(r, &ns, name).map(|o| {
            let rv = o["metadata"]["resourceVersion"].clone();
            as_table(
                &headers,
                asked,
                json!({"items": [shape.out(o)], "metadata": {"resourceVersion": rv}}),
            )
        }),
        (&Method::POST, None) => parse_body(&body).and_then(|obj| {
            let mut obj = shape.into_stored(obj);
            validate::check(r, &obj, None)?;
            apply::update(r, None, &mut obj, &updater);
            let mut s = store.lock().unwrap();
            rbac::check_grant(&s, &user, r.kind, route.namespace.as_deref(), &obj)?;
            rbac::owner_references(&s, &user, (r, &ns, &super::store::name_of(&obj)), &obj, None)?;
            if r.key() == "core/pods" {
                super::admission::pod(&s, &ns, &obj)?;
            }
            s.create(r, &ns, obj).map(|o| shape.out(o))
        }),
        (&Method::PUT, Some(name)) => parse_body(&body).and_then(|obj| {
            let mut obj = shape.into_stored(obj);
            obj["metadata"]["name"] = json!(name);
            // Custom resources allow no unconditional update (most built-in kinds do).
            if validate::schema_of(r).is_some() && obj["metadata"]["resourceVersion"].is_null() {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!("{}.{} \"{name}\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update", r.plural, r.group),
                ));
            }
            let mut s = store.lock().unwrap();
            let old = s.get(r, &ns, name)?;
            validate::check(r, &obj, Some(&old))?;
            apply::update(r, Some(&old), &mut obj, &updater);
            rbac::check_grant(&s, &user, r.kind, route.namespace.as_deref(), &obj)?;
            if !route.status() {
                rbac::owner_references(&s, &user, (r, &ns, name), &obj, Some(&old))?;
            }
            s.replace(r, &ns, obj, route.status()).map(|o| shape.out(o))
        }),
        (&Method::PATCH, Some(name)) => {
            let target = Target {
                r,
                shape,
                ns: &ns,
                name,
                status: route.status(),
            };
            let force = q.get("force").is_some_and(|f| f == "true");
            patch(&store, &user, &target, (&headers, &q, force), &body).map(|o| shape.out(o))
        }
        (&Method::DELETE, Some(name)) => {
            // DeleteOptions, in the body (client-go, kube-rs) or the query (kubectl --cascade).
            let body: Value = serde_json::from_slice(&body).unwrap_or_default();
            let policy = q
                .get("propagationPolicy")
                .map(String::as_str)
                .or(body["propagationPolicy"].as_str());
            let grace = q
                .get("gracePeriodSeconds")
                .and_then(|g| g.parse().ok())
                .or(body["gracePeriodSeconds"].as_i64());
            Propagation::parse(policy).and_then(|policy| store.lock().unwrap().delete(r, &ns, name, policy, grace))
        }
        _ => Err(ApiError::new(
            405,
            "MethodNotAllowed",
            format!("{method} {}", uri.path()),
        )),
    };
    match result {
        Ok(v) => json_response(
            if method == Method::POST {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            },
            &v,
        ),
        Err(e) => error(e),
    }
}

fn parse_body(body: &[u8]) -> ApiResult<Value> {
    if body.starts_with(b"k8s\0") {
        return super::protobuf::to_json(body).ok_or_else(|| {
            ApiError::new(
                415,
                "UnsupportedMediaType",
                "the body is protobuf of a kind this server reads only as JSON",
            )
        });
    }
    serde_json::from_slice(body)
        .or_else(|_| serde_saphyr::from_slice(body))
        .map_err(|e| ApiError::new(400, "BadRequest", format!("body is not a JSON or YAML object: {e}")))
}

/// The object a patch is for, and the version it is written in.
struct Target<'a> {
    r: &'static Resource,
    shape: Shape,
    ns: &'a str,
    name: &'a str,
    status: bool,
}

/// A patch's request: its headers, query and whether it forces an apply.
type PatchRequest<'a> = (&'a HeaderMap, &'a HashMap<String, String>, bool);

fn patch(store: &Shared, user: &User, t: &Target, (headers, q, force): PatchRequest, body: &[u8]) -> ApiResult<Value> {
    let Target {
        r,
        shape,
        ns,
        name,
        status,
    } = *t;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let applying = ctype.starts_with("application/apply-patch");
    let field_manager = q.get("fieldManager").map(String::as_str);
    apply::check_options(applying, field_manager, force)?;
    let manager = apply::manager_of(
        field_manager,
        headers.get(header::USER_AGENT).and_then(|v| v.to_str().ok()),
    );
    let writer = Writer {
        manager: &manager,
        operation: if applying { Operation::Apply } else { Operation::Update },
        status,
    };
    let patch = parse_body(body)?;
    // A patch that names no resourceVersion is not a compare-and-swap.
    let compare_and_swap = patch["metadata"]["resourceVersion"].is_string();
    let mut s = store.lock().unwrap();
    let old = match s.get(r, ns, name) {
        Ok(o) => o,
        // Server-side apply creates what does not exist yet, if its user may create too.
        Err(e) if e.code == 404 && applying && !status => {
            let create = rbac::Request::Resource {
                verb: "create",
                group: r.group,
                resource: r.plural,
                subresource: None,
                namespace: (!ns.is_empty()).then_some(ns),
                name: Some(name),
            };
            rbac::authorize(&s, user, &create)?;
            let patch = shape.into_stored(patch);
            validate::check(r, &patch, None)?;
            rbac::check_grant(&s, user, r.kind, (!ns.is_empty()).then_some(ns), &patch)?;
            rbac::owner_references(&s, user, (r, ns, name), &patch, None)?;
            let obj = apply::apply(r, None, &patch, &writer, force)?;
            return s.create(r, ns, obj);
        }
        Err(e) => return Err(e),
    };
    // The patch is applied to the object as its version shows it.
    let mut new = shape.out(old.clone());
    if applying {
        new = apply::apply(r, Some(&new), &patch, &writer, force)?;
    } else if ctype.starts_with("application/json-patch") {
        let ops: json_patch::Patch =
            serde_json::from_value(patch).map_err(|e| ApiError::new(400, "BadRequest", e.to_string()))?;
        json_patch::patch(&mut new, &ops).map_err(|e| ApiError::new(422, "Invalid", e.to_string()))?;
    } else {
        // merge-patch and strategic-merge-patch are both applied as a JSON merge patch: a
        // strategic merge's lists are replaced, not merged by key.
        json_patch::merge(&mut new, &patch);
    }
    let mut new = shape.into_stored(new);
    if !applying {
        apply::update(r, Some(&old), &mut new, &writer);
    }
    if !compare_and_swap && let Some(m) = new["metadata"].as_object_mut() {
        m.remove("resourceVersion");
    }
    validate::check(r, &new, Some(&old))?;
    rbac::check_grant(&s, user, r.kind, (!ns.is_empty()).then_some(ns), &new)?;
    if !status {
        rbac::owner_references(&s, user, (r, ns, name), &new, Some(&old))?;
    }
    s.replace(r, ns, new, status)
}

fn matches(obj: &Value, q: &HashMap<String, String>) -> bool {
    let labels = &obj["metadata"]["labels"];
    let label_ok = q.get("labelSelector").is_none_or(|sel| {
        split_terms(sel).iter().all(|t| {
            let t = t.trim();
            if let Some((k, v)) = t.split_once("!=") {
                labels[k.trim()].as_str() != Some(v.trim())
            } else if let Some((k, v)) = t.split_once('=') {
                labels[k.trim()].as_str() == Some(v.trim_start_matches('=').trim())
            } else if let Some((k, set)) = t.split_once(" in ") {
                let set = set.trim().trim_matches(|c| c == '(' || c == ')');
                set.split(',').any(|v| labels[k.trim()].as_str() == Some(v.trim()))
            } else if let Some(k) = t.strip_prefix('!') {
                labels.get(k.trim()).is_none()
            } else {
                t.is_empty() || labels.get(t).is_some()
            }
        })
    });
    let field_ok = q.get("fieldSelector").is_none_or(|sel| {
        sel.split(',').all(|t| {
            let (path, want, eq) = match t.split_once("!=") {
                Some((p, v)) => (p, v, false),
                None => match t.split_once('=') {
                    Some((p, v)) => (p, v.trim_start_matches('='), true),
                    None => return true,
                },
            };
            let got = path.split('.').fold(obj, |v, k| &v[k]);
            let got = match got {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                other => other.to_string(),
            };
            (got == want) == eq
        })
    });
    label_ok && field_ok
}

/// Label selector terms, split on commas outside parentheses.
fn split_terms(sel: &str) -> Vec<String> {
    let (mut terms, mut cur, mut depth) = (Vec::new(), String::new(), 0);
    for c in sel.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    terms.push(cur);
    terms
}

/// Whether the client asks for Tables (kubectl get does).
fn wants_table(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("as=Table"))
}

/// A list (or one object, as a list of one) as a Table when the client asks for one; else the
/// list, or the object itself.
fn as_table(headers: &HeaderMap, r: &Resource, list: Value) -> Value {
    let items = list["items"].as_array().cloned().unwrap_or_default();
    if wants_table(headers) {
        let rv = list["metadata"]["resourceVersion"].as_str().unwrap_or("0");
        super::table::table(r, &items, rv)
    } else if list.get("kind").is_none() {
        items.into_iter().next().unwrap_or_default()
    } else {
        list
    }
}

/// Where a list or watch reads (`stored`), what was asked for, and in which version.
type Reading = (&'static Resource, &'static Resource, Shape);

fn list(store: &Shared, (r, asked, shape): Reading, ns: Option<&str>, q: &HashMap<String, String>) -> ApiResult<Value> {
    let s = store.lock().unwrap();
    let items: Vec<Value> = s
        .list(r, ns)
        .into_iter()
        .map(|o| shape.out(o))
        .filter(|o| matches(o, q))
        .collect();
    Ok(json!({
        "apiVersion": asked.api_version(),
        "kind": format!("{}List", asked.kind),
        "metadata": {"resourceVersion": s.resource_version().to_string()},
        "items": items,
    }))
}

/// A watch: events after `resourceVersion` (or every current object as ADDED when none is
/// given), then live ones, one JSON object per line, until `timeoutSeconds`. Each event's object
/// is a one-row Table when the client asks for Tables (`kubectl get -w`).
fn watch(
    store: Shared,
    (r, asked, shape): Reading,
    ns: Option<String>,
    q: HashMap<String, String>,
    tables: bool,
) -> Response {
    let (backlog, rx, last_rv) = {
        let s = store.lock().unwrap();
        let rx = s.events.subscribe();
        let from: Option<u64> = q.get("resourceVersion").and_then(|v| v.parse().ok()).filter(|v| *v > 0);
        let backlog: Vec<Value> = match from {
            Some(from) => s
                .log
                .iter()
                .filter(|e| e.rv > from && e.resource == r.key())
                .map(|e| json!({"type": e.kind, "object": shape.out(e.object.clone())}))
                .collect(),
            None => s
                .list(r, ns.as_deref())
                .into_iter()
                .map(|o| json!({"type": "ADDED", "object": shape.out(o)}))
                .collect(),
        };
        (backlog, rx, s.resource_version())
    };
    let keep = {
        let q = q.clone();
        let ns = ns.clone();
        move |obj: &Value| ns.as_deref().is_none_or(|n| obj["metadata"]["namespace"] == n) && matches(obj, &q)
    };
    let keep2 = keep.clone();
    let backlog = futures::stream::iter(backlog.into_iter().filter(move |e| keep(&e["object"])));
    let live = futures::stream::unfold(rx, move |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(e) if e.rv > last_rv && e.resource == r.key() => {
                    return Some((json!({"type": e.kind, "object": shape.out(e.object)}), rx));
                }
                Ok(_) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return None,
            }
        }
    })
    .filter(move |e| std::future::ready(keep2(&e["object"])));
    let timeout = Duration::from_secs(q.get("timeoutSeconds").and_then(|t| t.parse().ok()).unwrap_or(300));
    let stream = backlog
        .chain(live)
        .take_until(tokio::time::sleep(timeout))
        .map(move |mut e| {
            if tables {
                let rv = e["object"]["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .to_string();
                e["object"] = super::table::table(asked, std::slice::from_ref(&e["object"]), &rv);
            }
            Ok::<_, std::convert::Infallible>(Bytes::from(format!("{e}\n")))
        });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}
