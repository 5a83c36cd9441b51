//! Golden files of the engine's output (`tests/golden/`: the unit, the bundle's config, etcd's
//! config); `UPDATE_GOLDEN=1` rewrites them.

pub fn golden(name: &str, actual: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create it)", path.display()));
    assert_eq!(actual, want, "{} differs (UPDATE_GOLDEN=1 rewrites it)", path.display());
}
