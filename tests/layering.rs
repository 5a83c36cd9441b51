//! The architecture the workspace keeps (README "Development"): arrows point from the product to
//! its two libraries only. Cargo already refuses a cycle; these checks refuse the arrows cargo
//! would allow: the harness or kube's CEL interpreter linked into the shipped binary, Kubernetes in
//! the host engine, and the agent reaching into the operator (they share only the API crate).

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

/// The crates a package links, normal dependencies only (what its binary is built from).
fn linked(package: &str) -> BTreeSet<String> {
    let out = Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-e", "normal", "--prefix", "none", "-p", package])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn the_shipped_binary_links_no_test_harness() {
    let product = linked("runc-etcd");
    for harness in ["runc-etcd-testkit", "kube-cel", "cel"] {
        assert!(!product.contains(harness), "runc-etcd links {harness}");
    }
    assert!(product.contains("runc-etcd-host") && product.contains("runc-etcd-api"));
}

#[test]
fn the_host_engine_knows_no_kubernetes() {
    let host = linked("runc-etcd-host");
    for k in ["kube", "kube-client", "k8s-openapi", "runc-etcd-api"] {
        assert!(!host.contains(k), "runc-etcd-host links {k}");
    }
}

/// Every `.rs` file under `dir`, with its text.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(sources(&p));
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push((p.display().to_string(), std::fs::read_to_string(&p).unwrap()));
        }
    }
    out
}

#[test]
fn the_agent_and_the_operator_share_only_the_api() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for (side, other) in [("agent", "operator"), ("operator", "agent")] {
        for (file, text) in sources(&src.join(side)) {
            for (n, line) in text.lines().enumerate() {
                assert!(
                    !line.contains(&format!("crate::{other}")) && !line.contains(&format!("super::super::{other}")),
                    "{file}:{}: the {side} reaches into the {other}: {line}",
                    n + 1
                );
            }
        }
    }
}
