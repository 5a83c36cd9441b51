//! etcd images: resolve a reference (a registry, or a local OCI image layout for air-gapped
//! hosts), fetch manifest, config and layers with their digests checked, and unpack the layers
//! once per manifest digest into `images/<hex>/rootfs`, which bundles then use read-only.
//!
//! Unpacking goes to a temporary folder renamed into place at the end, so a folder named after a
//! digest is always complete: a crash mid-pull leaves only a `.tmp-*` folder, removed next time.
//!
//! Pulls, unpacks and garbage collection take one host-wide lock (`images.lock` in the lock
//! folder, shared by the agents of every cluster on the host and the host CLI). `ensure` hands
//! the lock to its caller, who holds it until the member record naming the image is written:
//! collection, which reads the records under the same lock, can never remove an image a member
//! is about to use.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, IoContext, Result};
use crate::layout::{Layout, container};
use crate::member::ImageRecord;
use crate::unpack::unpack_layers;

/// Where an image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// `registry.example:5000/etcd:v3.5.16` or `…@sha256:…`.
    Registry(Reference),
    /// `oci-layout:/path/to/layout:tag`: an OCI image layout on this host's disk.
    Layout { dir: PathBuf, tag: String },
}

impl ImageSource {
    pub fn parse(s: &str) -> Result<Self> {
        let fix = "use REGISTRY/REPOSITORY:TAG (e.g. registry.k8s.io/etcd:3.5.16-0) or oci-layout:/PATH:TAG";
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::invalid(
                "--image",
                format!("{s:?} is not an image reference"),
                fix,
            ));
        }
        if let Some(rest) = s.strip_prefix("oci-layout:") {
            let (dir, tag) = rest.rsplit_once(':').unwrap_or((rest, "latest"));
            if !dir.starts_with('/') || tag.is_empty() || tag.contains('/') {
                return Err(Error::invalid(
                    "--image",
                    format!("{s:?} needs an absolute layout path"),
                    fix,
                ));
            }
            return Ok(ImageSource::Layout {
                dir: dir.into(),
                tag: tag.into(),
            });
        }
        let r: Reference = s
            .parse()
            .map_err(|e| Error::invalid("--image", format!("{s:?}: {e}"), fix))?;
        Ok(ImageSource::Registry(r))
    }
}

/// The registry-facing settings of an engine.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Registries (`host:port`) reached over plain HTTP. Every other one needs HTTPS.
    pub insecure_registries: Vec<String>,
}

/// An image unpacked on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalImage {
    pub record: ImageRecord,
    pub rootfs: PathBuf,
}

pub fn digest_hex(digest: &str) -> Result<&str> {
    let hex = digest.strip_prefix("sha256:").unwrap_or("");
    if hex.len() != 64 || !hex.bytes().all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)) {
        return Err(Error::Image {
            reference: digest.into(),
            message: "not a sha256 digest".into(),
        });
    }
    Ok(hex)
}

pub fn rootfs_of(images_dir: &Path, digest: &str) -> Result<PathBuf> {
    Ok(images_dir.join(digest_hex(digest)?).join("rootfs"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn check_digest(reference: &str, what: &str, want: &str, bytes: &[u8]) -> Result<()> {
    let got = format!("sha256:{}", sha256_hex(bytes));
    if got != want {
        return Err(Error::Image {
            reference: reference.into(),
            message: format!("{what} digest mismatch: expected {want}, got {got}"),
        });
    }
    Ok(())
}

/// The host-wide images lock, held while it lives (`flock`, waited for off the async runtime).
/// A second one in the same process waits too: drop it before collecting.
#[must_use = "hold it until the member record naming the image is written"]
pub struct ImagesLock {
    _file: std::fs::File,
}

pub(crate) async fn lock_images(layout: &Layout) -> Result<ImagesLock> {
    // Root's alone: what is unpacked there is for runc, not for the host's users.
    crate::private_dir(&layout.images_dir())?;
    std::fs::create_dir_all(&layout.lock_dir).ctx("creating the lock dir", &layout.lock_dir)?;
    let path = layout.lock_dir.join("images.lock");
    let file = std::fs::File::create(&path).ctx("creating the images lock", &path)?;
    tokio::task::spawn_blocking(move || {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a file descriptor we own; released when `file` is closed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error()).ctx("taking the images lock", path);
        }
        Ok(ImagesLock { _file: file })
    })
    .await
    .expect("the lock task does not panic")
}

/// The reference that names exactly the image a member record was made from: its digest, so a
/// tag moved since then cannot change what a member runs (an OCI layout has tags only).
pub fn pinned(image: &ImageRecord) -> String {
    match ImageSource::parse(&image.reference) {
        Ok(ImageSource::Registry(r)) => r.clone_with_digest(image.digest.clone()).whole(),
        _ => image.reference.clone(),
    }
}

/// Pulls (if needed) and unpacks `reference`, returning where its rootfs is, and the images lock:
/// the caller holds it until the member record naming the image is written. A reference pinned
/// by digest whose image is unpacked already is not asked of its registry again.
pub async fn ensure(layout: &Layout, reference: &str, opts: &PullOptions) -> Result<(LocalImage, ImagesLock)> {
    let source = ImageSource::parse(reference)?;
    let lock = lock_images(layout).await?;
    let images_dir = &layout.images_dir();
    if let ImageSource::Registry(r) = &source
        && let Some(digest) = r.digest()
        && rootfs_of(images_dir, digest)?.is_dir()
    {
        let image = LocalImage {
            record: ImageRecord {
                reference: reference.into(),
                digest: digest.into(),
            },
            rootfs: rootfs_of(images_dir, digest)?,
        };
        return Ok((image, lock));
    }
    let image = pull(images_dir, reference, &source, opts).await?;
    Ok((image, lock))
}

/// Fetches and unpacks an image unless its folder exists (the caller holds the images lock).
async fn pull(images_dir: &Path, reference: &str, source: &ImageSource, opts: &PullOptions) -> Result<LocalImage> {
    let fetcher = Fetcher::new(source, reference, opts);
    let (manifest, digest) = fetcher.manifest().await?;
    let rootfs = rootfs_of(images_dir, &digest)?;
    let record = ImageRecord {
        reference: reference.into(),
        digest: digest.clone(),
    };
    if rootfs.is_dir() {
        return Ok(LocalImage { record, rootfs });
    }
    tracing::info!("pulling {reference} ({digest})");
    let final_dir = rootfs.parent().expect("rootfs has a parent").to_path_buf();
    let tmp = images_dir.join(format!(".tmp-{}-{}", digest_hex(&digest)?, std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).ctx("creating image folder", &tmp)?;
    let result = async {
        let mut layers = Vec::new();
        for (i, layer) in manifest.layers.iter().enumerate() {
            let path = tmp.join(format!("layer-{i}"));
            fetcher.blob(layer, &path).await?;
            layers.push((path, layer.media_type.clone()));
        }
        let config = fetcher.blob_bytes(&manifest.config).await?;
        std::fs::write(tmp.join("image-config.json"), &config).ctx("writing image config", &tmp)?;
        let manifest_json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        std::fs::write(tmp.join("manifest.json"), manifest_json).ctx("writing manifest", &tmp)?;
        let root = tmp.join("rootfs");
        let refname = reference.to_string();
        tokio::task::spawn_blocking(move || unpack_layers(&refname, &layers, &root))
            .await
            .expect("unpack task does not panic")?;
        if !tmp.join("rootfs").join(&container::ETCD[1..]).is_file() {
            return Err(Error::Image {
                reference: reference.into(),
                message: format!("it has no {}: not an etcd image", container::ETCD),
            });
        }
        for layer in 0..manifest.layers.len() {
            let _ = std::fs::remove_file(tmp.join(format!("layer-{layer}")));
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    // Another pull of the same digest may have won the race; its folder is as good as ours.
    if std::fs::rename(&tmp, &final_dir).is_err() && final_dir.join("rootfs").is_dir() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    if !rootfs.is_dir() {
        return Err(Error::Image {
            reference: reference.into(),
            message: format!("could not move the unpacked image to {}", final_dir.display()),
        });
    }
    Ok(LocalImage { record, rootfs })
}

/// Removes unpacked images not in `keep_digests`, and leftovers of interrupted pulls. The caller
/// holds the images lock (`lock_images`) from before it read the records that make
/// `keep_digests`: no pull is in progress, and no image is waiting for its record.
pub(crate) fn gc(images_dir: &Path, keep_digests: &BTreeSet<String>) -> Result<Vec<String>> {
    let keep: BTreeSet<&str> = keep_digests.iter().filter_map(|d| digest_hex(d).ok()).collect();
    let mut removed = Vec::new();
    let Ok(entries) = std::fs::read_dir(images_dir) else {
        return Ok(removed);
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let stale_tmp = name.starts_with(".tmp-");
        let unused = name.len() == 64 && !keep.contains(name.as_str());
        if stale_tmp || unused {
            std::fs::remove_dir_all(entry.path()).ctx("removing an unused image", entry.path())?;
            removed.push(name);
        }
    }
    Ok(removed)
}

enum Fetcher<'a> {
    Registry {
        client: Client,
        reference: &'a Reference,
        name: &'a str,
    },
    Layout {
        dir: &'a Path,
        tag: &'a str,
        name: &'a str,
    },
}

impl<'a> Fetcher<'a> {
    fn new(source: &'a ImageSource, name: &'a str, opts: &PullOptions) -> Self {
        match source {
            ImageSource::Registry(reference) => {
                let config = ClientConfig {
                    protocol: ClientProtocol::HttpsExcept(opts.insecure_registries.clone()),
                    connect_timeout: Some(std::time::Duration::from_secs(10)),
                    read_timeout: Some(std::time::Duration::from_secs(60)),
                    ..Default::default()
                };
                Fetcher::Registry {
                    client: Client::new(config),
                    reference,
                    name,
                }
            }
            ImageSource::Layout { dir, tag } => Fetcher::Layout { dir, tag, name },
        }
    }

    fn name(&self) -> &str {
        match self {
            Fetcher::Registry { name, .. } | Fetcher::Layout { name, .. } => name,
        }
    }

    fn err(&self, message: impl std::fmt::Display) -> Error {
        Error::Image {
            reference: self.name().into(),
            message: message.to_string(),
        }
    }

    /// The image manifest (for linux/amd64 when the reference names an index) and its digest.
    async fn manifest(&self) -> Result<(OciImageManifest, String)> {
        match self {
            Fetcher::Registry { client, reference, .. } => client
                .pull_image_manifest(reference, &RegistryAuth::Anonymous)
                .await
                .map_err(|e| self.err(e)),
            Fetcher::Layout { dir, tag, .. } => {
                let index_path = dir.join("index.json");
                let index: serde_json::Value = read_json(&index_path).map_err(|e| self.err(e))?;
                let desc = index["manifests"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == **tag)
                    .ok_or_else(|| self.err(format!("no tag {tag:?} in {}", index_path.display())))?;
                let mut desc: OciDescriptor = serde_json::from_value(desc.clone()).map_err(|e| self.err(e))?;
                let mut bytes = self.blob_bytes(&desc).await?;
                if desc.media_type.contains("index") || desc.media_type.contains("manifest.list") {
                    let index: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| self.err(e))?;
                    let amd64 = index["manifests"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|m| m["platform"]["os"] == "linux" && m["platform"]["architecture"] == "amd64")
                        .ok_or_else(|| self.err("no linux/amd64 manifest in the index"))?;
                    desc = serde_json::from_value(amd64.clone()).map_err(|e| self.err(e))?;
                    bytes = self.blob_bytes(&desc).await?;
                }
                let manifest = serde_json::from_slice(&bytes).map_err(|e| self.err(e))?;
                Ok((manifest, desc.digest))
            }
        }
    }

    /// A blob into memory, digest checked (manifests, configs).
    async fn blob_bytes(&self, desc: &OciDescriptor) -> Result<Vec<u8>> {
        let bytes = match self {
            Fetcher::Registry { client, reference, .. } => {
                let mut out = Vec::new();
                client
                    .pull_blob(reference, desc, &mut out)
                    .await
                    .map_err(|e| self.err(e))?;
                out
            }
            Fetcher::Layout { dir, .. } => {
                let path = dir.join("blobs/sha256").join(digest_hex(&desc.digest)?);
                std::fs::read(&path).ctx("reading a blob of the image layout", path)?
            }
        };
        check_digest(self.name(), "blob", &desc.digest, &bytes)?;
        Ok(bytes)
    }

    /// A (layer) blob into a file, digest checked while it streams.
    async fn blob(&self, desc: &OciDescriptor, path: &Path) -> Result<()> {
        match self {
            Fetcher::Registry { client, reference, .. } => {
                let file = tokio::fs::File::create(path).await.ctx("creating a layer file", path)?;
                let mut out = tokio::io::BufWriter::new(file);
                client
                    .pull_blob(reference, desc, &mut out)
                    .await
                    .map_err(|e| self.err(e))?;
                out.flush().await.ctx("writing a layer file", path)?;
            }
            Fetcher::Layout { dir, .. } => {
                let src = dir.join("blobs/sha256").join(digest_hex(&desc.digest)?);
                tokio::fs::copy(&src, path).await.ctx("copying a layer", &src)?;
            }
        }
        // oci-client checks registry blobs too; checking here as well covers both sources.
        let path2 = path.to_path_buf();
        let got = tokio::task::spawn_blocking(move || super::sha256_file(&path2))
            .await
            .expect("hash task does not panic")
            .map(|hex| format!("sha256:{hex}"))?;
        if got != desc.digest {
            return Err(self.err(format!("layer digest mismatch: expected {}, got {got}", desc.digest)));
        }
        Ok(())
    }
}

fn read_json(path: &Path) -> std::result::Result<serde_json::Value, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_layout(root: &Path) -> Layout {
        Layout {
            state_dir: root.join("state"),
            unit_dir: root.join("units"),
            runc_root: root.join("runc"),
            lock_dir: root.join("locks"),
        }
    }

    fn image_dir(images: &Path, name: &str) {
        std::fs::create_dir_all(images.join(name).join("rootfs")).unwrap();
    }

    /// Issue 12, item 7: while one holds the images lock (as a placement does from its pull until
    /// its record is written), collection waits; then it spares what a member names.
    #[test]
    fn gc_waits_for_the_lock_and_spares_named_images() {
        let dir = tempfile::tempdir().unwrap();
        let layout = test_layout(dir.path());
        let images = layout.images_dir();
        let (named, unused) = ("a".repeat(64), "b".repeat(64));
        image_dir(&images, &named);
        image_dir(&images, &unused);
        image_dir(&images, ".tmp-dddd-1");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let held = rt.block_on(lock_images(&layout)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let layout2 = layout.clone();
        let keep = BTreeSet::from([format!("sha256:{named}")]);
        let collector = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _lock = rt.block_on(lock_images(&layout2)).unwrap();
            tx.send(gc(&layout2.images_dir(), &keep).unwrap()).unwrap();
        });
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(rx.try_recv().is_err(), "collection waits while the lock is held");
        assert!(images.join(&unused).is_dir());
        drop(held);
        let mut removed = rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        collector.join().unwrap();
        removed.sort();
        assert_eq!(removed, vec![".tmp-dddd-1".to_string(), unused]);
        assert!(images.join(&named).is_dir());
    }

    /// A pinned reference whose image is here is not asked of its registry (here, none listens).
    #[test]
    fn a_pinned_image_on_the_host_is_not_resolved_again() {
        let dir = tempfile::tempdir().unwrap();
        let layout = test_layout(dir.path());
        let hex = "a".repeat(64);
        image_dir(&layout.images_dir(), &hex);
        let reference = format!("127.0.0.1:1/etcd@sha256:{hex}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (img, _lock) = rt
            .block_on(ensure(&layout, &reference, &PullOptions::default()))
            .unwrap();
        assert_eq!(img.record.digest, format!("sha256:{hex}"));
        assert_eq!(img.rootfs, layout.images_dir().join(&hex).join("rootfs"));
    }

    #[test]
    fn a_record_pins_its_image_by_digest() {
        let digest = format!("sha256:{}", "f".repeat(64));
        let image = ImageRecord {
            reference: "10.0.0.1:5000/etcd:3.5.16".into(),
            digest: digest.clone(),
        };
        assert_eq!(pinned(&image), format!("10.0.0.1:5000/etcd@{digest}"));
        let layout = ImageRecord {
            reference: "oci-layout:/srv/images:3.5.16".into(),
            digest,
        };
        assert_eq!(pinned(&layout), "oci-layout:/srv/images:3.5.16");
    }

    #[test]
    fn parses_references() {
        assert!(matches!(
            ImageSource::parse("10.0.0.1:5000/etcd:3.5.16").unwrap(),
            ImageSource::Registry(_)
        ));
        assert_eq!(
            ImageSource::parse("oci-layout:/srv/images:3.5.16").unwrap(),
            ImageSource::Layout {
                dir: "/srv/images".into(),
                tag: "3.5.16".into()
            }
        );
        for bad in ["", "etcd 3.5", "oci-layout:relative:tag", "Registry/Etcd::x"] {
            assert!(
                ImageSource::parse(bad).unwrap_err().to_string().contains("--image"),
                "{bad}"
            );
        }
    }

    #[test]
    fn digests_must_be_sha256() {
        assert!(digest_hex("sha256:../../etc").is_err());
        assert_eq!(
            digest_hex(&format!("sha256:{}", "a".repeat(64))).unwrap(),
            "a".repeat(64)
        );
    }
}
