//! The archives a host keeps of its members' old files (`<state>/<cluster>/archive/<timestamp>-<why>`,
//! made by `Engine::archive_member`): listed with their sizes, and pruned to the newest few.
//!
//! The rule is by count, per member folder: the newest `keep` archives stay (at least one, so
//! the last member's data is never deleted by pruning) and the older ones go. An entry whose
//! name does not start with the engine's timestamp is not an archive the engine made: it is
//! never counted, and never deleted.

use std::path::{Path, PathBuf};

use chrono::NaiveDateTime;

use crate::error::{IoContext, Result};
use crate::layout::TIMESTAMP_FORMAT;

/// One archive folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Archive {
    /// The folder's name: `<timestamp>-<why>[-n]`.
    pub name: String,
    pub path: PathBuf,
    /// When it was made (UTC), from its name.
    pub taken: NaiveDateTime,
    /// The bytes of the files in it (symbolic links are not followed).
    pub bytes: u64,
}

/// When an archive folder named `name` was made, if the engine named it.
fn taken(name: &str) -> Option<NaiveDateTime> {
    // `2026-11-22T02-30-05Z-replaced`: the timestamp is the first 20 characters.
    let (ts, rest) = name.split_at_checked(20)?;
    if !rest.starts_with('-') {
        return None;
    }
    NaiveDateTime::parse_from_str(ts, TIMESTAMP_FORMAT).ok()
}

fn bytes_in(dir: &Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

/// The archives in `dir`, oldest first (none when the folder does not exist).
pub fn list(dir: &Path) -> Result<Vec<Archive>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).ctx("listing the archives", dir),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.ctx("listing the archives", dir)?;
        let name = e.file_name().to_string_lossy().into_owned();
        // A symbolic link is not a folder the engine made (file_type does not follow it).
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        if let Some(taken) = taken(&name).filter(|_| is_dir) {
            out.push(Archive {
                bytes: bytes_in(&e.path()),
                path: e.path(),
                name,
                taken,
            });
        }
    }
    sort(&mut out);
    Ok(out)
}

/// Oldest first; two made within the same second by their `-n` suffix (`timestamped`).
fn sort(archives: &mut [Archive]) {
    let suffix = |a: &Archive| {
        a.name
            .rsplit_once('-')
            .and_then(|(_, n)| n.parse::<u32>().ok())
            .unwrap_or(1)
    };
    archives.sort_by(|a, b| (a.taken, suffix(a), &a.name).cmp(&(b.taken, suffix(b), &b.name)));
}

/// Of `archives` (oldest first), those beyond the newest `keep` (at least one is always kept).
pub fn beyond(archives: &[Archive], keep: usize) -> &[Archive] {
    &archives[..archives.len().saturating_sub(keep.max(1))]
}

/// Deletes one archive. One deleted meanwhile by another process counts as deleted.
pub fn delete(a: &Archive) -> Result<()> {
    match std::fs::remove_dir_all(&a.path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).ctx("deleting an archive", &a.path),
    }
    tracing::info!("deleted archive {} ({} bytes)", a.path.display(), a.bytes);
    Ok(())
}

/// Deletes the archives in `dir` beyond the newest `keep`, oldest first; returns those deleted.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<Archive>> {
    let doomed = beyond(&list(dir)?, keep).to_vec();
    for a in &doomed {
        delete(a)?;
    }
    Ok(doomed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(dir: &Path, name: &str, bytes: usize) {
        std::fs::create_dir_all(dir.join(name).join("data")).unwrap();
        std::fs::write(dir.join(name).join("data/db"), vec![0u8; bytes]).unwrap();
    }

    fn names(archives: &[Archive]) -> Vec<&str> {
        archives.iter().map(|a| a.name.as_str()).collect()
    }

    #[test]
    fn only_engine_named_folders_are_archives_and_they_sort_by_time() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        make(d, "2026-11-22T02-30-05Z-replaced-2", 10);
        make(d, "2026-11-22T02-30-05Z-replaced", 20);
        make(d, "2025-01-01T00-00-00Z-removed", 5);
        make(d, "2026-11-22T02-30-05Z-replaced-10", 1);
        make(d, "notes", 1);
        make(d, "2026-13-40T00-00-00Z-bad-date", 1);
        std::fs::write(d.join("2024-01-01T00-00-00Z-a-file"), b"x").unwrap();
        std::os::unix::fs::symlink(d.join("notes"), d.join("2024-01-01T00-00-00Z-link")).unwrap();
        let all = list(d).unwrap();
        assert_eq!(
            names(&all),
            [
                "2025-01-01T00-00-00Z-removed",
                "2026-11-22T02-30-05Z-replaced",
                "2026-11-22T02-30-05Z-replaced-2",
                "2026-11-22T02-30-05Z-replaced-10",
            ]
        );
        assert_eq!(all[0].bytes, 5);
        assert_eq!(all[1].bytes, 20);
        assert!(list(&d.join("none")).unwrap().is_empty());
    }

    #[test]
    fn pruning_keeps_the_newest_and_never_the_last_one() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        for day in 1..=4 {
            make(d, &format!("2026-01-0{day}T00-00-00Z-replaced"), day);
        }
        make(d, "keep-me", 1);
        let all = list(d).unwrap();
        assert_eq!(names(beyond(&all, 4)), Vec::<&str>::new());
        assert_eq!(names(beyond(&all, 0)).len(), 3, "keep 0 still keeps the newest");
        let deleted = prune(d, 2).unwrap();
        assert_eq!(
            names(&deleted),
            ["2026-01-01T00-00-00Z-replaced", "2026-01-02T00-00-00Z-replaced"]
        );
        assert_eq!(
            names(&list(d).unwrap()),
            ["2026-01-03T00-00-00Z-replaced", "2026-01-04T00-00-00Z-replaced"]
        );
        assert!(d.join("keep-me").exists(), "what the engine did not make stays");
        assert!(prune(d, 2).unwrap().is_empty(), "again: nothing more");
    }
}
