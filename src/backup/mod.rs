//! Where snapshots are kept, shared by the agent (which stores and fetches them) and the operator
//! (which deletes S3 objects and finds the newest good backup): an S3-compatible bucket
//! (object_store) or a folder on a member's host. A snapshot of backup `b` of instance `i` is
//! `<prefix>/<i>/<b>/snapshot.db` in a bucket, `<folder>/<i>/<b>/snapshot.db` on a host.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, IoContext, Result};
use runc_etcd_api::{BackupDestination, EtcdBackup, HostPathDestination, S3Destination};

use runc_etcd_api::contract::{AGENT_HOST_PATHS, DEFAULT_BACKUP_DIR};

/// The access keys of an S3 destination (from the Secret `credentialsSecret`).
#[derive(Clone)]
pub struct S3Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// Never printed: the keys are secrets.
impl std::fmt::Debug for S3Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("S3Credentials(..)")
    }
}

/// Reads the keys `accessKeyId` and `secretAccessKey` of a Secret.
pub async fn read_credentials(client: &kube::Client, ns: &str, secret: &str) -> Result<S3Credentials> {
    let api: kube::Api<k8s_openapi::api::core::v1::Secret> = kube::Api::namespaced(client.clone(), ns);
    let s = api.get_opt(secret).await?.ok_or_else(|| {
        Error::invalid(
            "spec.backup.s3.credentialsSecret",
            format!("Secret {ns}/{secret} does not exist"),
            "create it with the keys accessKeyId and secretAccessKey",
        )
    })?;
    let data = s.data.unwrap_or_default();
    let key = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                Error::invalid(
                    "spec.backup.s3.credentialsSecret",
                    format!("Secret {ns}/{secret} has no {k}"),
                    "give it the keys accessKeyId and secretAccessKey",
                )
            })
    };
    Ok(S3Credentials {
        access_key_id: key("accessKeyId")?,
        secret_access_key: key("secretAccessKey")?,
    })
}

/// A host folder from a spec: absolute, without `..`, not `/` itself.
pub fn check_host_path(path: &str) -> Result<PathBuf> {
    let p = Path::new(path);
    let bad = !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        || p.components().count() < 2;
    if bad {
        return Err(Error::invalid(
            "spec.backup.hostPath.path",
            format!("{path:?} is not a usable folder"),
            "give an absolute path without '..', such as /var/backups/etcd",
        ));
    }
    // Components, not strings: "/var/lib/runc-etcd/" and "/var//lib" are the same folders.
    let p: PathBuf = p.components().collect();
    if p == Path::new(DEFAULT_BACKUP_DIR) {
        return Ok(p);
    }
    // Inside a folder the agent works in, a backup named `data` would be a member's own data
    // folder, and deleting that backup would delete it; a folder holding one would be mounted
    // over it.
    if let Some((_, reserved)) = AGENT_HOST_PATHS
        .iter()
        .find(|(_, r)| p.starts_with(r) || Path::new(r).starts_with(&p))
    {
        return Err(Error::invalid(
            "spec.backup.hostPath.path",
            format!(
                "{path:?} overlaps {reserved}, a folder the agent works in (member data lives under /var/lib/runc-etcd)"
            ),
            "choose a folder of its own, such as /var/backups/etcd",
        ));
    }
    Ok(p)
}

/// The destination a cluster's backups go to.
pub fn destination(spec: Option<&runc_etcd_api::BackupSpec>) -> BackupDestination {
    match spec {
        Some(b) if b.s3.is_some() || b.host_path.is_some() => BackupDestination {
            s3: b.s3.clone(),
            host_path: b.host_path.clone(),
        },
        _ => BackupDestination {
            s3: None,
            host_path: Some(HostPathDestination {
                path: DEFAULT_BACKUP_DIR.into(),
            }),
        },
    }
}

/// An opened S3 destination.
pub struct Bucket {
    store: Arc<dyn ObjectStore>,
    bucket: String,
    prefix: String,
}

impl Bucket {
    pub fn open(dest: &S3Destination, creds: &S3Credentials) -> Result<Bucket> {
        let store = AmazonS3Builder::new()
            .with_endpoint(&dest.endpoint)
            .with_bucket_name(&dest.bucket)
            .with_region(dest.region.as_deref().unwrap_or("us-east-1"))
            .with_access_key_id(&creds.access_key_id)
            .with_secret_access_key(&creds.secret_access_key)
            .with_allow_http(dest.endpoint.starts_with("http://"))
            .build()
            .map_err(|e| Error::invalid("spec.backup.s3", e.to_string(), "check endpoint, bucket and region"))?;
        Ok(Bucket {
            store: Arc::new(store),
            bucket: dest.bucket.clone(),
            prefix: dest.prefix.clone().unwrap_or_default().trim_matches('/').to_string(),
        })
    }

    /// The object key of a backup's snapshot.
    pub fn key(&self, instance: &str, backup: &str) -> String {
        let key = format!("{instance}/{backup}/snapshot.db");
        if self.prefix.is_empty() {
            key
        } else {
            format!("{}/{key}", self.prefix)
        }
    }

    pub fn location(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }

    /// The key of an `s3://bucket/key` location in this bucket.
    pub fn key_of<'a>(&self, location: &'a str) -> Result<&'a str> {
        location
            .strip_prefix("s3://")
            .and_then(|rest| rest.strip_prefix(self.bucket.as_str()))
            .and_then(|rest| rest.strip_prefix('/'))
            .ok_or_else(|| Error::refused(format!("{location} is not in bucket {}", self.bucket)))
    }

    /// Uploads a file (in parts when large).
    pub async fn upload(&self, file: &Path, key: &str) -> Result<()> {
        let mut from = tokio::fs::File::open(file).await.ctx("reading a snapshot", file)?;
        let mut to = object_store::buffered::BufWriter::new(self.store.clone(), ObjectPath::from(key));
        tokio::io::copy(&mut from, &mut to)
            .await
            .map_err(|e| Error::transient(format!("uploading {}", self.location(key)), e))?;
        to.shutdown()
            .await
            .map_err(|e| Error::transient(format!("uploading {}", self.location(key)), e))?;
        Ok(())
    }

    /// Downloads an object into `to`; returns its size and sha256.
    pub async fn download(&self, key: &str, to: &Path) -> Result<(u64, String)> {
        let what = || format!("downloading {}", self.location(key));
        let got = self
            .store
            .get(&ObjectPath::from(key))
            .await
            .map_err(|e| Error::transient(what(), e))?;
        let mut stream = got.into_stream();
        let mut file = runc_etcd_host::private_file(to).await?;
        let (mut hasher, mut size) = (Sha256::new(), 0u64);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::transient(what(), e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk).await.ctx("writing a snapshot", to)?;
        }
        file.sync_all().await.ctx("syncing a snapshot", to)?;
        Ok((size, hex::encode(hasher.finalize())))
    }

    /// Deletes an object (absent already is fine).
    pub async fn delete(&self, key: &str) -> Result<()> {
        match self.store.delete(&ObjectPath::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(Error::transient(format!("deleting {}", self.location(key)), e)),
        }
    }
}

/// The folder of backup `backup` of `instance` under a host destination.
pub fn host_dir(dest: &HostPathDestination, instance: &str, backup: &str) -> Result<PathBuf> {
    Ok(check_host_path(&dest.path)?.join(instance).join(backup))
}

/// The newest Succeeded backup of a cluster (by completion time), among `backups`.
pub fn newest_good<'a>(backups: &'a [EtcdBackup], cluster: &str) -> Option<&'a EtcdBackup> {
    backups
        .iter()
        .filter(|b| b.spec.cluster_name == cluster && b.succeeded() && b.metadata.deletion_timestamp.is_none())
        .max_by_key(|b| b.status.as_ref().and_then(|s| s.completion_time.clone()).map(|t| t.0))
}

/// Writes a backup's `status` only if the backup is unchanged since `b` was read (its
/// resourceVersion is the precondition): how the controller assigns, moves or gives up a backup
/// and how an agent claims it, so that exactly one of them wins. Returns whether it was written.
pub async fn write_status_if_unchanged(
    api: &kube::Api<EtcdBackup>,
    b: &EtcdBackup,
    status: &runc_etcd_api::EtcdBackupStatus,
) -> Result<bool> {
    let status = serde_json::to_value(status).expect("a status serializes");
    Ok(runc_etcd_api::objects::write_status_if_unchanged(api, b, &status).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_folders_must_be_absolute_and_plain() {
        assert!(check_host_path("/var/backups/etcd").is_ok());
        for bad in ["var/backups", "/", "/var/../etc", "../x"] {
            let e = check_host_path(bad).unwrap_err().to_string();
            assert!(e.contains("spec.backup.hostPath.path"), "{bad}: {e}");
        }
        assert_eq!(
            check_host_path("/var/backups//etcd/").unwrap(),
            Path::new("/var/backups/etcd")
        );
    }

    /// Issue 12, item 2: with `/var/lib/runc-etcd/<instance>` as a destination, a backup named
    /// `data` was the member's data folder, and deleting the backup deleted it.
    #[test]
    fn host_folders_overlapping_the_agents_are_refused() {
        for bad in [
            "/var/lib/runc-etcd",
            "/var/lib/runc-etcd/",
            "/var/lib/runc-etcd/prod.main",
            "/var/lib",
            "/var",
            "/run/systemd/x",
            "/etc/systemd",
            "/opt/runc-etcd/bin",
            "/run/lock",
        ] {
            let e = check_host_path(bad).unwrap_err().to_string();
            assert!(e.contains("overlaps") && e.contains("/var/backups/etcd"), "{bad}: {e}");
        }
        for good in [
            "/var/backups/etcd",
            "/var/lib/runc-etcd/backups",
            "/srv/etcd-backups",
            "/run/dbus-backups",
        ] {
            assert!(check_host_path(good).is_ok(), "{good}");
        }
    }

    #[test]
    fn without_a_destination_backups_stay_on_the_host() {
        let d = destination(None);
        assert_eq!(d.host_path.unwrap().path, DEFAULT_BACKUP_DIR);
        assert!(d.s3.is_none());
    }

    #[test]
    fn keys_and_locations() {
        let dest = S3Destination {
            endpoint: "http://10.0.0.1:9000".into(),
            bucket: "etcd".into(),
            prefix: Some("/prod/".into()),
            region: None,
            credentials_secret: "s3".into(),
        };
        let creds = S3Credentials {
            access_key_id: "a".into(),
            secret_access_key: "b".into(),
        };
        let b = Bucket::open(&dest, &creds).unwrap();
        let key = b.key("default.main", "main-1");
        assert_eq!(key, "prod/default.main/main-1/snapshot.db");
        assert_eq!(b.key_of(&b.location(&key)).unwrap(), key);
        assert!(b.key_of("s3://other/x").is_err());
        assert_eq!(format!("{creds:?}"), "S3Credentials(..)");
    }
}
