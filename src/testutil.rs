//! Golden files (`tests/golden/`, and generated files such as `crd/`); `UPDATE_GOLDEN=1` rewrites them.

use std::path::PathBuf;

pub fn golden(name: &str, actual: &str) {
    golden_at(&format!("tests/golden/{name}"), actual);
}

/// Like [`golden`], for a generated file anywhere in the tree (e.g. `crd/…`).
pub fn golden_at(relative: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(actual, want, "{} differs (UPDATE_GOLDEN=1 rewrites it)", path.display());
}
