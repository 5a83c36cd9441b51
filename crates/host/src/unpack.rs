//! Applies OCI image layers to a rootfs folder, in order, whiteouts included
//! (`.wh.<name>` deletes a lower entry, `.wh..wh..opq` empties a lower folder).
//!
//! Each layer is read twice: first its whiteouts are applied, then its files are extracted. A
//! whiteout only hides what lower layers put there, so applying them first keeps entries of the
//! same layer whatever order the tar lists them in.
//!
//! An image carries no privilege onto the host: setuid and setgid bits are dropped, device nodes
//! and FIFOs are refused (etcd needs none; runc gives the container its own /dev), and nothing is
//! created through a symlink an image planted. Owners are kept: an image may run etcd as a user
//! of its own, whose data folders it owns.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::layout::container;

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

fn open_layer(reference: &str, path: &Path, media_type: &str) -> Result<tar::Archive<Box<dyn Read>>> {
    let file = BufReader::new(File::open(path).ctx("opening a layer", path)?);
    let reader: Box<dyn Read> = if media_type.ends_with("gzip") {
        Box::new(flate2::read::GzDecoder::new(file))
    } else if media_type.ends_with(".tar") || media_type.ends_with("diff.tar") {
        Box::new(file)
    } else {
        return Err(Error::Image {
            reference: reference.into(),
            message: format!("layer media type {media_type} is not supported (use tar or tar+gzip layers)"),
        });
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    archive.set_preserve_mtime(true);
    archive.set_preserve_ownerships(true);
    // No setuid or setgid file leaves the image (a setuid-root binary on the host otherwise).
    archive.set_mask(0o6000);
    archive.set_unpack_xattrs(false);
    archive.set_overwrite(true);
    Ok(archive)
}

/// A layer path as a relative path with normal components only, or None for `.`/`/`.
fn clean(reference: &str, p: &Path) -> Result<Option<PathBuf>> {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir | Component::RootDir => {}
            _ => {
                return Err(Error::Image {
                    reference: reference.into(),
                    message: format!("layer entry {} leaves the rootfs", p.display()),
                });
            }
        }
    }
    Ok((!out.as_os_str().is_empty()).then_some(out))
}

fn remove_any(path: &Path) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Whether `rel` (inside `root`) is reached without following a symlink: whiteouts must never
/// delete outside the rootfs through a link a layer planted.
fn no_symlink_parents(root: &Path, rel: &Path) -> bool {
    let mut p = root.to_path_buf();
    let parents: Vec<_> = rel.parent().map(|p| p.components().collect()).unwrap_or_default();
    for c in parents {
        p.push(c);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return false,
            Err(_) => return true, // the rest does not exist yet: nothing to follow
        }
    }
    true
}

fn apply_whiteouts(reference: &str, layer: &Path, media_type: &str, root: &Path) -> Result<()> {
    let mut archive = open_layer(reference, layer, media_type)?;
    for entry in archive.entries().ctx("reading a layer", layer)? {
        let entry = entry.ctx("reading a layer entry", layer)?;
        let path = entry.path().ctx("reading a layer entry path", layer)?.into_owned();
        let Some(rel) = clean(reference, &path)? else { continue };
        let Some(name) = rel.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if !name.starts_with(WHITEOUT) || !no_symlink_parents(root, &rel) {
            continue;
        }
        let dir = root.join(rel.parent().unwrap_or(Path::new("")));
        if name == OPAQUE {
            if let Ok(children) = std::fs::read_dir(&dir) {
                for child in children.flatten() {
                    remove_any(&child.path()).ctx("applying an opaque whiteout", child.path())?;
                }
            }
        } else {
            let target = dir.join(&name[WHITEOUT.len()..]);
            remove_any(&target).ctx("applying a whiteout", &target)?;
        }
    }
    Ok(())
}

fn extract(reference: &str, layer: &Path, media_type: &str, root: &Path) -> Result<()> {
    let mut archive = open_layer(reference, layer, media_type)?;
    for entry in archive.entries().ctx("reading a layer", layer)? {
        let mut entry = entry.ctx("reading a layer entry", layer)?;
        let path = entry.path().ctx("reading a layer entry path", layer)?.into_owned();
        let Some(rel) = clean(reference, &path)? else { continue };
        let name = rel.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.starts_with(WHITEOUT) {
            continue;
        }
        let kind = entry.header().entry_type();
        if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
            return Err(Error::Image {
                reference: reference.into(),
                message: format!("layer entry {} is a device node or a FIFO: refused", path.display()),
            });
        }
        // A file replacing a folder (or the reverse) must remove what the lower layer had.
        let target = root.join(&rel);
        let is_dir = kind.is_dir();
        if let Ok(m) = std::fs::symlink_metadata(&target)
            && !(m.is_dir() && is_dir)
            && no_symlink_parents(root, &rel)
        {
            remove_any(&target).ctx("replacing a lower layer's entry", &target)?;
        }
        // unpack_in refuses entries that would land outside `root`, through links included.
        let inside = entry.unpack_in(root).ctx("unpacking a layer entry", &target)?;
        if !inside {
            return Err(Error::Image {
                reference: reference.into(),
                message: format!("layer entry {} leaves the rootfs", path.display()),
            });
        }
    }
    Ok(())
}

/// Unpacks `layers` (path, media type), lowest first, into `root`, then creates the mount points
/// bundles need so runc never writes into the shared rootfs.
pub fn unpack_layers(reference: &str, layers: &[(PathBuf, String)], root: &Path) -> Result<()> {
    std::fs::create_dir_all(root).ctx("creating a rootfs", root)?;
    for (layer, media_type) in layers {
        apply_whiteouts(reference, layer, media_type, root)?;
        extract(reference, layer, media_type, root)?;
    }
    for dir in container::MOUNT_POINTS {
        let p = root.join(dir);
        if !no_symlink_parents(root, Path::new(dir)) {
            return Err(Error::Image {
                reference: reference.into(),
                message: format!("/{dir} in the image goes through a symlink; runc-etcd needs it to be a folder"),
            });
        }
        std::fs::create_dir_all(&p).ctx("creating a mount point", &p)?;
    }
    for file in container::MOUNT_FILES {
        let p = root.join(file);
        if !no_symlink_parents(root, Path::new(file)) {
            return Err(Error::Image {
                reference: reference.into(),
                message: format!("/{file} in the image goes through a symlink; runc-etcd needs a plain file there"),
            });
        }
        // A symlink there would be followed by the creation and by the bind mount: replaced by
        // a plain file, inside the rootfs.
        if std::fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&p).ctx("removing an image's symlink at a mount point", &p)?;
        }
        if !p.exists() {
            std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&p)
                .ctx("creating a mount point", &p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer from (path, Some(content)) files and (path, None) folders.
    fn layer(dir: &Path, name: &str, entries: &[(&str, Option<&str>)]) -> (PathBuf, String) {
        let path = dir.join(name);
        let gz = flate2::write::GzEncoder::new(File::create(&path).unwrap(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (p, content) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match content {
                Some(c) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(c.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, p, c.as_bytes()).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, p, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap().finish().unwrap();
        (path, "application/vnd.oci.image.layer.v1.tar+gzip".into())
    }

    #[test]
    fn whiteouts_remove_lower_entries_only() {
        let t = tempfile::tempdir().unwrap();
        let l1 = layer(
            t.path(),
            "l1",
            &[
                ("etc/", None),
                ("etc/a", Some("1")),
                ("etc/b", Some("1")),
                ("opt/", None),
                ("opt/old", Some("x")),
            ],
        );
        let l2 = layer(
            t.path(),
            "l2",
            &[
                ("etc/.wh.a", Some("")),
                ("opt/new", Some("y")),
                ("opt/.wh..wh..opq", Some("")),
                ("etc/b", Some("2")),
            ],
        );
        let root = t.path().join("rootfs");
        unpack_layers("test", &[l1, l2], &root).unwrap();
        assert!(!root.join("etc/a").exists());
        assert_eq!(std::fs::read_to_string(root.join("etc/b")).unwrap(), "2");
        assert!(
            !root.join("opt/old").exists(),
            "opaque whiteout empties the lower folder"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("opt/new")).unwrap(),
            "y",
            "same-layer entries stay"
        );
        assert!(root.join("var/lib/etcd").is_dir() && root.join("etc/etcd/etcd.conf.yml").is_file());
        assert!(!root.join("etc/.wh.a").exists());
    }

    /// Issue 12, item 6.
    #[test]
    fn an_image_brings_no_setuid_file_no_device_and_no_way_out() {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::tempdir().unwrap();
        let raw = |name: &str, entries: &[(&str, tar::EntryType, u32, Option<&str>)]| {
            let path = t.path().join(name);
            let mut b = tar::Builder::new(File::create(&path).unwrap());
            for (p, kind, mode, link) in entries {
                let mut h = tar::Header::new_gnu();
                h.set_uid(0);
                h.set_gid(0);
                h.set_mtime(0);
                h.set_entry_type(*kind);
                h.set_mode(*mode);
                h.set_size(0);
                if let Some(l) = link {
                    h.set_link_name(l).unwrap();
                }
                b.append_data(&mut h, p, &[][..]).unwrap();
            }
            b.into_inner().unwrap();
            (path, "application/vnd.oci.image.layer.v1.tar".to_string())
        };
        use tar::EntryType::*;
        // setuid root and setgid: unpacked without those bits.
        let root = t.path().join("r1");
        let l = raw(
            "l1",
            &[("usr/", Directory, 0o755, None), ("usr/su", Regular, 0o6755, None)],
        );
        unpack_layers("img", &[l], &root).unwrap();
        let mode = std::fs::metadata(root.join("usr/su")).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
        // A device node, or a FIFO: refused.
        for kind in [Char, Block, Fifo] {
            let l = raw("l2", &[("dev-or-fifo", kind, 0o600, None)]);
            let e = unpack_layers("img", &[l], &t.path().join("r2"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("device node or a FIFO"), "{kind:?}: {e}");
        }
        // The config file a bundle mounts, planted as a link out of the rootfs: the outside file
        // is left alone, and a plain file takes the link's place.
        let outside = t.path().join("host-file");
        std::fs::write(&outside, "host").unwrap();
        let root = t.path().join("r3");
        let l = raw(
            "l3",
            &[
                ("etc/", Directory, 0o755, None),
                ("etc/etcd/", Directory, 0o755, None),
                (
                    "etc/etcd/etcd.conf.yml",
                    Symlink,
                    0o777,
                    Some(outside.to_str().unwrap()),
                ),
            ],
        );
        unpack_layers("img", &[l], &root).unwrap();
        let conf = root.join("etc/etcd/etcd.conf.yml");
        assert!(!std::fs::symlink_metadata(&conf).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "host");
    }

    #[test]
    fn unknown_layer_types_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let (p, _) = layer(t.path(), "l", &[("a", Some("1"))]);
        let e = unpack_layers(
            "img",
            &[(p, "application/vnd.oci.image.layer.v1.tar+zstd".into())],
            &t.path().join("r"),
        );
        assert!(e.unwrap_err().to_string().contains("not supported"));
    }
}
