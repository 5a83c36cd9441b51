//! etcd's own API (etcd-client): member list, add as learner, promote, remove, status, health,
//! snapshot, with the retries etcd asks for right after a membership change.

use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{
    AlarmAction, AlarmOptions, AlarmType, Certificate, Client, CompactionOptions, ConnectOptions, GetOptions, Identity,
    MemberAddOptions, TlsOptions,
};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, IoContext, Result};
use crate::pki::ClientTls;

/// A member as `member list` shows it. `name` is empty until a newly added member has started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberInfo {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

impl MemberInfo {
    pub fn started(&self) -> bool {
        !self.name.is_empty()
    }
}

/// One endpoint's view of itself (`endpoint status`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub version: String,
    pub db_size: i64,
    /// The part of the database file in use (the rest is free pages a defragmentation returns).
    pub db_size_in_use: i64,
    pub leader: u64,
    pub raft_index: u64,
    /// The key-value store's revision.
    pub revision: i64,
    pub is_learner: bool,
    pub errors: Vec<String>,
}

fn etcd_err(what: &str, e: etcd_client::Error) -> Error {
    Error::transient(what, e)
}

/// How long one question to one member may take as a whole. The client's own connect and
/// request timeouts do not cover everything: etcd binds its client port before it is ready and
/// accepts connections there only once it has joined, so a TLS handshake with a member that
/// cannot reach its peers waits forever (seen: an agent's health wait never returned).
const ASK_TIMEOUT: Duration = Duration::from_secs(10);

async fn bounded<T>(what: &str, question: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(ASK_TIMEOUT, question).await.unwrap_or_else(|_| {
        Err(Error::transient(
            what,
            format!("no answer within {}s", ASK_TIMEOUT.as_secs()),
        ))
    })
}

/// How the engine reaches etcd: plain HTTP, or mutual TLS with a client identity.
#[derive(Debug, Clone, Default)]
pub struct Access {
    tls: Option<ClientTls>,
}

impl Access {
    pub fn plain() -> Self {
        Access { tls: None }
    }

    pub fn tls(tls: ClientTls) -> Self {
        Access { tls: Some(tls) }
    }

    pub async fn connect(&self, endpoints: &[String]) -> Result<Client> {
        let what = format!("connecting to {}", endpoints.join(","));
        bounded(&what, self.connect_unbounded(endpoints)).await
    }

    async fn connect_unbounded(&self, endpoints: &[String]) -> Result<Client> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10));
        if let Some(t) = &self.tls {
            opts = opts.with_tls(
                TlsOptions::new()
                    .ca_certificate(Certificate::from_pem(&t.ca))
                    .identity(Identity::from_pem(&t.cert, &t.key)),
            );
        }
        Client::connect(endpoints, Some(opts))
            .await
            .map_err(|e| etcd_err(&format!("connecting to {}", endpoints.join(",")), e))
    }

    pub async fn status(&self, endpoint: &str) -> Result<EndpointStatus> {
        bounded(&format!("status of {endpoint}"), self.status_unbounded(endpoint)).await
    }

    async fn status_unbounded(&self, endpoint: &str) -> Result<EndpointStatus> {
        let mut client = self.connect(&[endpoint.to_string()]).await?;
        let s = client
            .status()
            .await
            .map_err(|e| etcd_err(&format!("status of {endpoint}"), e))?;
        Ok(EndpointStatus {
            endpoint: endpoint.into(),
            member_id: s.header().map(|h| h.member_id()).unwrap_or(0),
            cluster_id: s.header().map(|h| h.cluster_id()).unwrap_or(0),
            version: s.version().into(),
            db_size: s.db_size(),
            db_size_in_use: s.raft_used_db_size(),
            leader: s.leader(),
            raft_index: s.raft_index(),
            revision: s.header().map(|h| h.revision()).unwrap_or(0),
            is_learner: s.is_learner(),
            errors: s.errors().to_vec(),
        })
    }

    /// Healthy as `etcdctl endpoint health` means it: the member answers and, for a voter, a
    /// linearizable read goes through consensus. (Learners cannot serve those reads.)
    pub async fn health(&self, endpoint: &str) -> Result<EndpointStatus> {
        bounded(&format!("health of {endpoint}"), self.health_unbounded(endpoint)).await
    }

    async fn health_unbounded(&self, endpoint: &str) -> Result<EndpointStatus> {
        let status = self.status_unbounded(endpoint).await?;
        // An alarm (e.g. NOSPACE: the database is full) is reported by its own check; the member
        // still serves reads and keeps its vote.
        if status.errors.iter().any(|e| !e.contains("alarm:")) {
            return Err(Error::transient(
                format!("health of {endpoint}"),
                status.errors.join("; "),
            ));
        }
        if status.leader == 0 {
            return Err(Error::transient(format!("health of {endpoint}"), "no leader"));
        }
        if !status.is_learner {
            let mut client = self.connect_unbounded(&[endpoint.to_string()]).await?;
            client
                .get("health", Some(GetOptions::new().with_count_only()))
                .await
                .map_err(|e| etcd_err(&format!("quorum read through {endpoint}"), e))?;
        }
        Ok(status)
    }

    /// Defragments one member's backend (it blocks that member meanwhile).
    pub async fn defragment(&self, endpoint: &str) -> Result<()> {
        let mut client = self.connect(&[endpoint.to_string()]).await?;
        client
            .defragment()
            .await
            .map_err(|e| etcd_err(&format!("defragmenting {endpoint}"), e))?;
        Ok(())
    }

    /// Streams a snapshot of `endpoint`'s backend into `path` (written to `path.part`, renamed at
    /// the end). Returns its size and sha256.
    pub async fn snapshot(&self, endpoint: &str, path: &Path) -> Result<(u64, String)> {
        let mut client = self.connect(&[endpoint.to_string()]).await?;
        let part = path.with_extension("part");
        let mut file = crate::private_file(&part).await?;
        let mut stream = client
            .snapshot()
            .await
            .map_err(|e| etcd_err(&format!("snapshot of {endpoint}"), e))?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        while let Some(msg) = stream
            .message()
            .await
            .map_err(|e| etcd_err(&format!("snapshot of {endpoint}"), e))?
        {
            hasher.update(msg.blob());
            size += msg.blob().len() as u64;
            file.write_all(msg.blob()).await.ctx("writing a snapshot", &part)?;
        }
        file.sync_all().await.ctx("syncing a snapshot", &part)?;
        if size == 0 {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(Error::transient(
                format!("snapshot of {endpoint}"),
                "etcd sent an empty snapshot",
            ));
        }
        tokio::fs::rename(&part, path).await.ctx("renaming a snapshot", path)?;
        Ok((size, hex::encode(hasher.finalize())))
    }
}

/// Retries `op` until it succeeds, fails with an error etcd will not get over by waiting, or
/// `timeout` passes. etcd refuses some calls for a few seconds after a membership change
/// ("unhealthy cluster" from the strict reconfig check; "not in sync" for a fresh learner).
pub async fn retry<T, F, Fut>(what: &str, timeout: Duration, mut op: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
{
    let start = Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_retryable(&e) && start.elapsed() < timeout => {
                tracing::debug!("{what}: {e}; retrying in {delay:?}");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) if is_retryable(&e) => {
                return Err(Error::Timeout {
                    what: what.into(),
                    secs: timeout.as_secs(),
                    last: e.to_string(),
                });
            }
            Err(e) => return Err(etcd_err(what, e)),
        }
    }
}

fn is_retryable(e: &etcd_client::Error) -> bool {
    let s = e.to_string();
    [
        "unhealthy cluster",
        "in sync with leader",
        "leader changed",
        "no leader",
        "request timed out",
        "transport error",
        "Unavailable",
        "deadline",
        "not supported for learner",
        "connection",
    ]
    .iter()
    .any(|m| s.contains(m))
}

/// The membership as the member that answered sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Membership {
    /// The cluster ID and the answering member's ID (the response header).
    pub cluster_id: u64,
    pub member_id: u64,
    pub members: Vec<MemberInfo>,
}

pub async fn membership(client: &Client) -> Result<Membership> {
    let resp = retry("member list", Duration::from_secs(10), || {
        let mut c = client.clone();
        async move { c.member_list().await }
    })
    .await?;
    Ok(Membership {
        cluster_id: resp.header().map_or(0, |h| h.cluster_id()),
        member_id: resp.header().map_or(0, |h| h.member_id()),
        members: resp
            .members()
            .iter()
            .map(|m| MemberInfo {
                id: m.id(),
                name: m.name().to_string(),
                peer_urls: m.peer_urls().to_vec(),
                client_urls: m.client_urls().to_vec(),
                is_learner: m.is_learner(),
            })
            .collect(),
    })
}

pub async fn members(client: &Client) -> Result<Vec<MemberInfo>> {
    Ok(membership(client).await?.members)
}

/// Registers a new member as a non-voting learner and returns its ID. Retried only on etcd's
/// definite refusals ("unhealthy cluster" for a few seconds after another change, "too many
/// learners" while another member joins): nothing was added then. Any other failure may have
/// added the learner, so callers look for it by peer URL before trying again.
pub async fn add_learner(client: &Client, peer_url: &str, timeout: Duration) -> Result<u64> {
    let what = format!("member add {peer_url} as learner");
    let start = Instant::now();
    loop {
        match client
            .clone()
            .member_add([peer_url], Some(MemberAddOptions::new().with_is_learner()))
            .await
        {
            Ok(resp) => {
                return resp
                    .member()
                    .map(|m| m.id())
                    .ok_or_else(|| Error::transient(&what, "etcd returned no member"));
            }
            Err(e) if is_refusal(&e) && start.elapsed() < timeout => {
                tracing::debug!("{what}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(etcd_err(&what, e)),
        }
    }
}

fn is_refusal(e: &etcd_client::Error) -> bool {
    let s = e.to_string();
    s.contains("unhealthy cluster") || s.contains("too many learner")
}

/// Promotes a learner to a voting member once it has caught up with the leader.
pub async fn promote(client: &Client, id: u64, timeout: Duration) -> Result<()> {
    retry(&format!("promote member {id:x}"), timeout, || {
        let mut c = client.clone();
        async move { c.member_promote(id).await }
    })
    .await
    .map(drop)
}

/// Member IDs with an active NOSPACE alarm (the database reached its quota; writes are refused).
pub async fn nospace_alarms(client: &Client) -> Result<Vec<u64>> {
    let resp = client
        .clone()
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| etcd_err("alarm list", e))?;
    Ok(resp
        .alarms()
        .iter()
        .filter(|a| a.alarm() == AlarmType::Nospace)
        .map(|a| a.member_id())
        .collect())
}

/// Clears member `id`'s NOSPACE alarm.
pub async fn disarm_nospace(client: &Client, id: u64) -> Result<()> {
    let mut opts = AlarmOptions::new();
    opts.with_member(id);
    client
        .clone()
        .alarm(AlarmAction::Deactivate, AlarmType::Nospace, Some(opts))
        .await
        .map_err(|e| etcd_err("alarm disarm", e))?;
    Ok(())
}

/// Compacts the keyspace history up to the current revision (physically, before returning).
pub async fn compact_all(client: &Client) -> Result<i64> {
    let mut c = client.clone();
    let rev = c
        .get("\0", Some(GetOptions::new().with_count_only()))
        .await
        .map_err(|e| etcd_err("reading the revision", e))?
        .header()
        .map(|h| h.revision())
        .unwrap_or(0);
    match c.compact(rev, Some(CompactionOptions::new().with_physical())).await {
        Ok(_) => Ok(rev),
        // Already compacted that far: nothing to do.
        Err(e) if e.to_string().contains("required revision has been compacted") => Ok(rev),
        Err(e) => Err(etcd_err("compaction", e)),
    }
}

pub async fn remove(client: &Client, id: u64, timeout: Duration) -> Result<()> {
    retry(&format!("remove member {id:x}"), timeout, || {
        let mut c = client.clone();
        async move { c.member_remove(id).await }
    })
    .await
    .map(drop)
}
