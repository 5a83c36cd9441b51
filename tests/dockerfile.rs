//! The Dockerfile: what its build stage copies exists and builds the binary it ships, which has
//! the subcommands the chart and the DaemonSets run; the runc it installs is where the agent
//! looks for it; the runtime user is not root. And the image itself, built from it without a
//! Docker engine (`scripts/build-image.sh`: buildah on a Debian base from mmdebstrap, with the
//! Rust stage's output supplied from this build), carries what the pods use and runs there.

use std::process::Command;

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap()
}

/// Instructions, with `\` continuations joined.
fn instructions() -> Vec<(String, String)> {
    dockerfile()
        .replace("\\\n", " ")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            let (op, rest) = l.split_once(' ').unwrap_or((l, ""));
            (op.to_uppercase(), rest.trim().to_string())
        })
        .collect()
}

#[test]
fn what_the_build_stage_copies_exists_and_builds_the_binary_it_ships() {
    let ins = instructions();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for (_, rest) in ins.iter().filter(|(op, r)| op == "COPY" && !r.starts_with("--from")) {
        let parts: Vec<&str> = rest.split_whitespace().collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root.join(src).exists(), "COPY {src}: not in the repository");
        }
    }
    let build = ins
        .iter()
        .find(|(op, r)| op == "RUN" && r.contains("cargo build"))
        .unwrap();
    assert!(build.1.contains("--release --locked --bin runc-etcd"), "{}", build.1);
    // Without `-p`, cargo builds with the features of every workspace member: the test harness's
    // (kube's CEL interpreter) would reach the shipped binary.
    assert!(build.1.contains("-p runc-etcd"), "{}", build.1);
    let (_, shipped) = ins
        .iter()
        .find(|(op, r)| op == "COPY" && r.starts_with("--from=build"))
        .unwrap();
    assert!(
        shipped.contains("/src/target/release/runc-etcd /usr/local/bin/runc-etcd"),
        "{shipped}"
    );
    let (_, entry) = ins.iter().rfind(|(op, _)| op == "ENTRYPOINT").unwrap();
    assert_eq!(entry, r#"["/usr/local/bin/runc-etcd"]"#);
}

#[test]
fn the_runtime_runs_as_non_root_and_carries_runc_where_the_agent_takes_it() {
    let ins = instructions();
    let (_, user) = ins.iter().rfind(|(op, _)| op == "USER").unwrap();
    assert!(!user.starts_with('0') && !user.starts_with("root"), "USER {user}");
    let runtime = ins.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let apt = ins[runtime..]
        .iter()
        .find(|(op, r)| op == "RUN" && r.contains("apt-get install"))
        .unwrap();
    for pkg in ["runc", "systemd", "ca-certificates"] {
        assert!(
            apt.1.split_whitespace().any(|w| w == pkg),
            "{pkg} not installed: {}",
            apt.1
        );
    }
    // Debian's runc package puts runc where the DaemonSet tells the agent to install it from.
    let files = Command::new("dpkg").args(["-L", "runc"]).output().unwrap();
    let files = String::from_utf8(files.stdout).unwrap();
    assert!(
        files.lines().any(|l| l == runc_etcd_api::contract::IMAGE_RUNC),
        "{files}"
    );
}

#[test]
fn the_shipped_binary_has_the_subcommands_the_chart_and_daemonsets_run() {
    let bin = env!("CARGO_BIN_EXE_runc-etcd");
    for args in [&["operator", "--help"][..], &["agent", "--help"], &["crd"]] {
        let out = Command::new(bin).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "runc-etcd {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let help = Command::new(bin).args(["agent", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--metrics-address",
        "--install-runc",
        "--cluster",
        "--node",
        "--keep-archives",
    ] {
        assert!(help.contains(flag), "agent {flag}");
    }
    let help = Command::new(bin).args(["operator", "--help"]).output().unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in [
        "--agent-image",
        "--agent-service-account",
        "--lease-seconds",
        "--metrics-address",
        "--log-json",
    ] {
        assert!(help.contains(flag), "operator {flag}");
    }
}

/// The image built from the Dockerfile (`scripts/build-image.sh`) carries what the pods use:
/// the binary (and it runs on the image's own libraries), runc where the agent installs it from,
/// systemctl, CA certificates; it runs as the non-root user with the binary as its entrypoint.
#[test]
fn the_image_built_from_the_dockerfile_carries_what_the_pods_use() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let rootfs = out.path().join("rootfs");
    let built = Command::new("bash")
        .arg(root.join("scripts/build-image.sh"))
        .args([env!("CARGO_BIN_EXE_runc-etcd"), "localhost/runc-etcd:test"])
        .arg(&rootfs)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));

    let inspect: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.path().join("rootfs.inspect.json")).unwrap()).unwrap();
    let config = &inspect["OCIv1"]["config"];
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(config["Entrypoint"], serde_json::json!(["/usr/local/bin/runc-etcd"]));
    let certs = std::fs::metadata(rootfs.join("etc/ssl/certs/ca-certificates.crt")).unwrap();
    assert!(certs.len() > 10_000, "CA certificates");
    // Each runs inside the image's root, on the image's own libraries.
    let image_runc = runc_etcd_api::contract::IMAGE_RUNC;
    for args in [
        &["/usr/local/bin/runc-etcd", "agent", "--help"][..],
        &[image_runc, "--version"],
        &["/usr/bin/systemctl", "--version"],
    ] {
        let ran = Command::new("chroot").arg(&rootfs).args(args).output().unwrap();
        assert!(
            ran.status.success(),
            "{args:?} in the image: {}",
            String::from_utf8_lossy(&ran.stderr)
        );
    }
}
