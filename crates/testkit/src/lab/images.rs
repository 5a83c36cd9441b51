//! etcd images for the lab, built from Debian's etcd binaries: an OCI image layout with one tag
//! per etcd version (`3.4.23`, `3.5.16`, `3.5.30`), pushed to the lab's registry with skopeo.
//!
//! Each image has two layers, like real images: a base (libc, /etc files) and the etcd layer,
//! which also whites out a file of the base, so the engine's whiteout handling runs for real.
//! Builds are reproducible (fixed mtimes and owners), so digests are stable across runs.

use std::path::{Path, PathBuf};

use serde_json::json;
use sha2::{Digest, Sha256};

use super::host::{failed, io_err};
use super::sh::{LabResult, sh};

/// The file the base layer has and the etcd layer deletes.
pub const WHITED_OUT: &str = "etc/lab-base-only";

/// Where setup.sh puts Debian's etcd builds: `<cache>/etcd/<version>/{etcd,etcdctl,etcdutl}`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("RUNC_ETCD_LAB_CACHE").map_or_else(|| PathBuf::from("/var/cache/runc-etcd-lab"), PathBuf::from)
}

pub fn available_versions() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(cache_dir().join("etcd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.path().join("etcd").is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort_by_key(|s| s.split('.').map(|p| p.parse::<u32>().unwrap_or(0)).collect::<Vec<_>>());
    v
}

struct Layer {
    gz: Vec<u8>,
    diff_id: String,
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).expect("lab paths are short");
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(kind);
    h.set_cksum();
    h
}

/// A layer entry: path in the image, and Some((content, mode)) for a file or None for a folder.
type Entry = (String, Option<(Vec<u8>, u32)>);

fn layer(entries: &[Entry]) -> Layer {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in entries {
        match content {
            Some((bytes, mode)) => {
                let h = header(path, bytes.len() as u64, *mode, tar::EntryType::Regular);
                b.append(&h, bytes.as_slice()).expect("append to memory");
            }
            None => b
                .append(&header(path, 0, 0o755, tar::EntryType::Directory), &[][..])
                .expect("append"),
        }
    }
    let tar = b.into_inner().expect("tar to memory");
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&tar)));
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip to memory");
    Layer {
        gz: gz.finish().expect("gzip to memory"),
        diff_id,
    }
}

fn file(path: &str, bytes: Vec<u8>, mode: u32) -> Entry {
    (path.into(), Some((bytes, mode)))
}

fn dir(path: &str) -> Entry {
    (format!("{path}/"), None)
}

/// The shared libraries `ldd` lists for `binary` (none for a static one).
fn libs(binary: &Path) -> Vec<PathBuf> {
    let out = sh(&format!("ldd {} 2>/dev/null || true", binary.display())).unwrap_or_default();
    out.split_whitespace()
        .filter(|w| w.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn blob(layout: &Path, bytes: &[u8]) -> LabResult<serde_json::Value> {
    let hex = hex::encode(Sha256::digest(bytes));
    let path = layout.join("blobs/sha256").join(&hex);
    std::fs::write(&path, bytes).map_err(io_err("writing a blob"))?;
    Ok(json!({"digest": format!("sha256:{hex}"), "size": bytes.len()}))
}

/// Builds (or rebuilds) `layout` with one image per available etcd version; returns the tags.
pub fn build_layout(layout: &Path) -> LabResult<Vec<String>> {
    let versions = available_versions();
    if versions.is_empty() {
        return Err(failed(
            "build images",
            format!(
                "no etcd binaries under {}/etcd: run scripts/setup.sh first",
                cache_dir().display()
            ),
        ));
    }
    std::fs::create_dir_all(layout.join("blobs/sha256")).map_err(io_err("creating the layout"))?;
    let mut manifests = Vec::new();
    for version in &versions {
        let bin_dir = cache_dir().join("etcd").join(version);
        let mut base = vec![
            dir("etc"),
            dir("tmp"),
            dir("var"),
            dir("var/lib"),
            dir("usr"),
            dir("usr/local"),
            dir("usr/local/bin"),
        ];
        base.push(file(
            "etc/passwd",
            b"root:x:0:0:root:/root:/bin/false\n".to_vec(),
            0o644,
        ));
        base.push(file("etc/group", b"root:x:0:\n".to_vec(), 0o644));
        base.push(file("etc/nsswitch.conf", b"hosts: files dns\n".to_vec(), 0o644));
        base.push(file(
            "etc/hosts",
            b"127.0.0.1 localhost\n::1 localhost\n".to_vec(),
            0o644,
        ));
        base.push(file(WHITED_OUT, b"deleted by the etcd layer\n".to_vec(), 0o644));
        let mut seen_dirs = std::collections::BTreeSet::new();
        for lib in libs(&bin_dir.join("etcd")) {
            let rel = lib.to_string_lossy().trim_start_matches('/').to_string();
            let mut parent = String::new();
            for part in Path::new(&rel).parent().into_iter().flat_map(|p| p.iter()) {
                parent = if parent.is_empty() {
                    part.to_string_lossy().into()
                } else {
                    format!("{parent}/{}", part.to_string_lossy())
                };
                if seen_dirs.insert(parent.clone()) {
                    base.push(dir(&parent));
                }
            }
            let bytes = std::fs::read(&lib).map_err(io_err("reading a library"))?;
            base.push(file(&rel, bytes, 0o755));
        }
        let mut top = vec![(
            format!("etc/.wh.{}", WHITED_OUT.trim_start_matches("etc/")),
            Some((vec![], 0o644)),
        )];
        for tool in ["etcd", "etcdctl", "etcdutl"] {
            if let Ok(bytes) = std::fs::read(bin_dir.join(tool)) {
                top.push(file(&format!("usr/local/bin/{tool}"), bytes, 0o755));
            }
        }
        let layers = [layer(&base), layer(&top)];
        let config = json!({
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "Entrypoint": ["/usr/local/bin/etcd"],
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Labels": {"org.opencontainers.image.version": version, "org.opencontainers.image.source": "debian etcd-server/etcd-client"}
            },
            "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| l.diff_id.clone()).collect::<Vec<_>>()},
        });
        let config_desc = blob(layout, &serde_json::to_vec(&config).expect("json"))?;
        let mut layer_descs = Vec::new();
        for l in &layers {
            let mut d = blob(layout, &l.gz)?;
            d["mediaType"] = json!("application/vnd.oci.image.layer.v1.tar+gzip");
            layer_descs.push(d);
        }
        let mut config_desc = config_desc;
        config_desc["mediaType"] = json!("application/vnd.oci.image.config.v1+json");
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": layer_descs,
        });
        let mut desc = blob(layout, &serde_json::to_vec(&manifest).expect("json"))?;
        desc["mediaType"] = json!("application/vnd.oci.image.manifest.v1+json");
        desc["annotations"] = json!({"org.opencontainers.image.ref.name": version});
        manifests.push(desc);
    }
    let index =
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": manifests});
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec_pretty(&index).expect("json"),
    )
    .map_err(io_err("index.json"))?;
    std::fs::write(layout.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io_err("oci-layout"))?;
    Ok(versions)
}

/// Copies every tag of `layout` to `registry` (host:port, plain HTTP) with skopeo, run inside
/// the network namespace `ns` where the registry listens.
pub fn push(layout: &Path, tags: &[String], ns: &str, registry: &str) -> LabResult<()> {
    for tag in tags {
        sh(&format!(
            "ip netns exec {ns} skopeo copy --quiet --dest-tls-verify=false oci:{layout}:{tag} docker://{registry}/etcd:{tag}",
            layout = layout.display()
        ))?;
    }
    Ok(())
}
