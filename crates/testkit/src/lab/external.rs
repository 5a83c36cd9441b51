//! The control-plane tier against an API server outside the lab: a real cluster named by
//! `RUNC_ETCD_TEST_KUBECONFIG`, or its stand-in `runc-etcd-lab apiserver` (HTTPS, a bearer
//! token, a CA file beside its kubeconfig, as a kubeadm cluster hands out).
//!
//! The lab's hosts and operators live on the lab's LAN and reach nothing else, so the harness
//! relays a port on the LAN's gateway to the API server and gives them a kubeconfig for that
//! port: the same credentials, inlined (files on this machine do not exist in the hosts), and
//! the server's own name for TLS verification (`tls-server-name`).

use std::net::SocketAddr;
use std::path::Path;

use base64::Engine;
use kube::config::{Kubeconfig, NamedAuthInfo, NamedCluster, NamedContext};
use secrecy::SecretString;

use crate::Error;

/// Reading `path`: a kubeconfig error names the file and the fix.
fn invalid(path: &Path, problem: impl std::fmt::Display) -> Error {
    Error::invalid(
        super::control::REAL_CLUSTER_ENV,
        format!("{}: {problem}", path.display()),
        "name a kubeconfig whose current context has a server and a user with a token or client certificate",
    )
}

fn file_b64(path: &Path, file: &str) -> crate::Result<String> {
    let bytes = std::fs::read(file).map_err(|e| invalid(path, format!("{file}: {e}")))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// The current context of `path` alone, with every file it names inlined, in namespace `ns`.
pub fn self_contained(path: &Path, ns: &str) -> crate::Result<Kubeconfig> {
    let kc = Kubeconfig::read_from(path).map_err(|e| invalid(path, e))?;
    let current = kc
        .current_context
        .clone()
        .ok_or_else(|| invalid(path, "no current-context"))?;
    let mut context = kc
        .contexts
        .iter()
        .find(|c| c.name == current)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| invalid(path, format!("no context {current}")))?;
    let find_cluster = |name: &str| {
        kc.clusters
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.cluster.clone())
    };
    let mut cluster = find_cluster(&context.cluster).ok_or_else(|| invalid(path, "its context names no cluster"))?;
    if let Some(file) = cluster.certificate_authority.take() {
        cluster.certificate_authority_data = Some(file_b64(path, &file)?);
    }
    let user_name = context.user.clone().unwrap_or_default();
    let mut user = kc
        .auth_infos
        .iter()
        .find(|u| u.name == user_name)
        .and_then(|u| u.auth_info.clone())
        .unwrap_or_default();
    if user.exec.is_some() || user.auth_provider.is_some() {
        return Err(invalid(
            path,
            "its user runs a credential plugin, which the lab hosts do not have",
        ));
    }
    if let Some(file) = user.client_certificate.take() {
        user.client_certificate_data = Some(file_b64(path, &file)?);
    }
    if let Some(file) = user.client_key.take() {
        user.client_key_data = Some(SecretString::from(file_b64(path, &file)?));
    }
    if let Some(file) = user.token_file.take() {
        let token = std::fs::read_to_string(&file).map_err(|e| invalid(path, format!("{file}: {e}")))?;
        user.token = Some(SecretString::from(token.trim().to_string()));
    }
    context.namespace = Some(ns.to_string());
    context.user = Some("lab".into());
    context.cluster = "lab".into();
    Ok(Kubeconfig {
        clusters: vec![NamedCluster {
            name: "lab".into(),
            cluster: Some(cluster),
            ..Default::default()
        }],
        auth_infos: vec![NamedAuthInfo {
            name: "lab".into(),
            auth_info: Some(user),
            ..Default::default()
        }],
        contexts: vec![NamedContext {
            name: "lab".into(),
            context: Some(context),
            ..Default::default()
        }],
        current_context: Some("lab".into()),
        ..Default::default()
    })
}

pub fn server_of(kc: &Kubeconfig) -> Option<String> {
    kc.clusters.first()?.cluster.as_ref()?.server.clone()
}

/// The same kubeconfig, for the lab's LAN: its server is `relay`, verified by the real
/// server's name.
pub fn through_relay(kc: &Kubeconfig, relay: SocketAddr) -> crate::Result<Kubeconfig> {
    let mut kc = kc.clone();
    let cluster = kc.clusters[0]
        .cluster
        .as_mut()
        .expect("self_contained keeps the cluster");
    let server = cluster.server.clone().unwrap_or_default();
    let uri: axum::http::Uri = server
        .parse()
        .map_err(|e| Error::transient("the kubeconfig's server", e))?;
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
    if cluster.tls_server_name.is_none() {
        cluster.tls_server_name = Some(host);
    }
    cluster.server = Some(format!("{}://{relay}", uri.scheme_str().unwrap_or("https")));
    Ok(kc)
}

/// Where the server named by `server` (a URL) listens, as this machine resolves it.
async fn target(server: &str) -> crate::Result<SocketAddr> {
    let uri: axum::http::Uri = server
        .parse()
        .map_err(|e| Error::transient("the kubeconfig's server", e))?;
    let default_port = if uri.scheme_str() == Some("http") { 80 } else { 443 };
    let host = uri.host().unwrap_or_default().trim_matches(['[', ']']).to_string();
    let port = uri.port_u16().unwrap_or(default_port);
    tokio::net::lookup_host((host.as_str(), port))
        .await
        .map_err(|e| Error::transient("resolving the API server", e))?
        .next()
        .ok_or_else(|| Error::transient("resolving the API server", format!("{host} has no address")))
}

/// Relays connections to `listener` (in the lab, bound on the LAN's gateway) to the API server
/// at `server` (a URL). Returns the relay's address and the task serving it.
pub async fn relay(
    listener: std::net::TcpListener,
    server: &str,
) -> crate::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let target = target(server).await?;
    let io = |e: std::io::Error| Error::transient("the API relay", e);
    listener.set_nonblocking(true).map_err(io)?;
    let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
    let addr = listener.local_addr().map_err(io)?;
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    Ok((addr, task))
}

/// The stand-in for a real cluster (`runc-etcd-lab apiserver`): the test API server over HTTPS
/// on `listen`, with a CA of its own and a bearer token. Writes `ca.crt` and `kubeconfig`
/// (which names `ca.crt` by path) into `dir`, and returns the server and that kubeconfig's path.
pub fn standalone(listen: SocketAddr, dir: &Path) -> crate::Result<(crate::apiserver::ApiServer, std::path::PathBuf)> {
    use runc_etcd_host::pki;
    let io = |what: &'static str| move |e: std::io::Error| Error::transient(what, e);
    let ca = pki::new_ca("lab API server")?;
    let (cert_pem, key_pem) = pki::issue_server(&ca, "lab API server", listen.ip())?;
    let mut token = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut token))
        .map_err(io("a token"))?;
    let token = hex::encode(token);
    let listener = std::net::TcpListener::bind(listen).map_err(io("binding the API server"))?;
    let secured = crate::apiserver::Secured {
        cert_pem,
        key_pem,
        token: token.clone(),
    };
    let server = crate::apiserver::ApiServer::serve_secured(vec![listener], secured).map_err(io("serving"))?;
    std::fs::create_dir_all(dir).map_err(io("the kubeconfig folder"))?;
    let ca_path = dir.join("ca.crt");
    std::fs::write(&ca_path, &ca.cert).map_err(io("ca.crt"))?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: standalone\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: standalone\n  context:\n    cluster: standalone\n    user: admin\ncurrent-context: standalone\n",
        server.url(),
        ca_path.display()
    );
    let path = dir.join("kubeconfig");
    runc_etcd_host::write_atomic(&path, kubeconfig.as_bytes(), 0o600)?;
    Ok((server, path))
}
