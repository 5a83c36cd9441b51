//! Who is asking: bearer tokens as kube-apiserver's token authenticators read them. The server
//! issues one token per ServiceAccount through the TokenRequest API (as a kubelet gets the token
//! it mounts into a pod), and knows the administrator's token of a secured server.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::header;
use axum::response::Response;
use serde_json::{Value, json};

use super::http::{Shared, error};
use super::rbac::User;
use super::resources;
use super::store::{ApiError, ApiResult, Store};

/// What a listener lets in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// A request without a token is the administrator's, as on kube-apiserver's old insecure
    /// port: for the tests and kubectl on this machine. A request with a token is that token's
    /// user, authorized by RBAC.
    AdminWithoutToken,
    /// Every request carries a token the server knows (401 otherwise) and is authorized by RBAC:
    /// how the operator and the agents reach the server.
    TokenRequired,
}

/// Whose a token is.
#[derive(Debug, Clone)]
pub enum Holder {
    Admin,
    ServiceAccount { namespace: String, name: String },
}

#[derive(Default)]
pub struct Tokens(BTreeMap<String, Holder>);

fn random_token() -> ApiResult<String> {
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .map_err(|e| ApiError::new(500, "InternalError", format!("reading /dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

impl Tokens {
    pub fn admin(&mut self, token: &str) {
        self.0.insert(token.to_string(), Holder::Admin);
    }

    fn of_service_account(&self, namespace: &str, name: &str) -> Option<String> {
        self.0.iter().find_map(|(t, h)| match h {
            Holder::ServiceAccount { namespace: n, name: a } if n == namespace && a == name => Some(t.clone()),
            _ => None,
        })
    }
}

/// The TokenRequest API (`POST …/serviceaccounts/NAME/token`): the ServiceAccount's token, the
/// same one each time, or 404 for a ServiceAccount that does not exist.
pub fn token_request(store: &mut Store, namespace: &str, name: &str, request: &Value) -> ApiResult<Value> {
    let accounts = resources::by_key("core/serviceaccounts").expect("ServiceAccounts are served");
    store.get(accounts, namespace, name)?;
    let token = match store.tokens.of_service_account(namespace, name) {
        Some(t) => t,
        None => {
            let t = random_token()?;
            store.tokens.0.insert(
                t.clone(),
                Holder::ServiceAccount {
                    namespace: namespace.into(),
                    name: name.into(),
                },
            );
            t
        }
    };
    // The harness's tokens do not expire; the answer says when the one asked for would.
    let seconds = request["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let expires = chrono::Utc::now() + chrono::Duration::seconds(seconds);
    Ok(json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "metadata": {"name": name, "namespace": namespace},
        "spec": request["spec"],
        "status": {"token": token, "expirationTimestamp": expires.format("%Y-%m-%dT%H:%M:%SZ").to_string()},
    }))
}

/// The user of a token; a ServiceAccount's token stops working when the account is deleted.
fn user_of(store: &Store, token: &str) -> Option<User> {
    match store.tokens.0.get(token)? {
        Holder::Admin => Some(User::admin()),
        Holder::ServiceAccount { namespace, name } => {
            let accounts = resources::by_key("core/serviceaccounts").expect("ServiceAccounts are served");
            store.get(accounts, namespace, name).ok()?;
            Some(User::service_account(namespace, name))
        }
    }
}

/// Puts the request's user into its extensions, or answers 401 as a real API server does.
pub async fn authenticate(
    State((store, access)): State<(Shared, Access)>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // Read here, so that nothing borrows the request across the await below (its body is not Sync).
    let (as_user, as_groups) = {
        let header = |name: &str| -> Vec<String> {
            request
                .headers()
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok().map(str::to_string))
                .collect()
        };
        (header("Impersonate-User"), header("Impersonate-Group"))
    };
    let found = {
        let s = store.lock().unwrap();
        let user = match token {
            Some(t) => user_of(&s, &t),
            None if access == Access::AdminWithoutToken => Some(User::admin()),
            None => None,
        };
        match (user, as_user.first()) {
            (None, _) => Err(ApiError::new(401, "Unauthorized", "Unauthorized")),
            (Some(user), None) => Ok(user),
            (Some(user), Some(name)) => super::rbac::impersonate(&s, &user, name, &as_groups),
        }
    };
    let user = match found {
        Ok(user) => user,
        Err(e) => return error(e),
    };
    request.extensions_mut().insert(user);
    next.run(request).await
}
