//! Every file in examples/ applied, as a user would, to the lab's control plane and reaching
//! Available (or Succeeded, for a backup). Only what cannot work in the lab is rewritten: images
//! come from the lab's registry, the S3 endpoint and keys are the lab's S3 server's.

mod common;

use common::plane::*;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams};
use runc_etcd_api::EtcdBackup;
use runc_etcd_testkit::lab::registry::{S3_ACCESS_KEY, S3_SECRET_KEY};
use serde_json::{Value, json};

fn docs(file: &str) -> Vec<Value> {
    let path = format!("{}/examples/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    serde_saphyr::from_multiple::<Value>(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// What the lab needs changed: its registry's images, its S3 server and keys.
fn for_the_lab(p: &Plane, s3: &str, mut doc: Value) -> Value {
    match doc["kind"].as_str().unwrap() {
        "EtcdCluster" => {
            let version = doc["spec"]["version"].as_str().unwrap().to_string();
            let spec = doc["spec"].as_object_mut().unwrap();
            spec.remove("repository");
            spec.insert("image".into(), json!(p.lab.image(&version)));
            if let Some(b) = spec.get_mut("backup").and_then(|b| b.get_mut("s3")) {
                b["endpoint"] = json!(format!("http://{s3}"));
            }
        }
        "Secret" => {
            doc["stringData"] = json!({"accessKeyId": S3_ACCESS_KEY, "secretAccessKey": S3_SECRET_KEY});
        }
        _ => {}
    }
    doc
}

fn apply(p: &Plane, doc: &Value) {
    let (api_version, kind) = (doc["apiVersion"].as_str().unwrap(), doc["kind"].as_str().unwrap());
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
    let api: Api<DynamicObject> = Api::namespaced_with(p.cp.client.clone(), p.ns(), &ar);
    let name = doc["metadata"]["name"].as_str().unwrap();
    p.rt.block_on(api.patch(name, &PatchParams::apply("kubectl").force(), &Patch::Apply(doc)))
        .unwrap_or_else(|e| panic!("applying {kind} {name}: {e}"));
}

fn apply_file(p: &Plane, s3: &str, file: &str) {
    for doc in docs(file) {
        apply(p, &for_the_lab(p, s3, doc));
    }
}

#[test]
fn every_example_reaches_available() {
    let p = Plane::up(5);
    let s3 = p.lab.start_s3(&["example-etcd-backups"]).unwrap();

    apply_file(&p, &s3.address, "minimal.yaml");
    p.wait_ready("etcd-minimal", 3, 180);
    p.delete("etcd-minimal"); // its ports are the production example's
    common::eventually("etcd-minimal deleted", 120, || p.get("etcd-minimal").is_none());

    for n in 1..=5 {
        p.label_node(n, &[("node-role.example.com/etcd", "true")]);
    }
    apply_file(&p, &s3.address, "production.yaml");
    p.wait_ready("etcd-prod", 5, 300);
    p.put_keys("etcd-prod", "example/", 10);

    apply_file(&p, &s3.address, "backup.yaml");
    let backups: Api<EtcdBackup> = Api::namespaced(p.cp.client.clone(), p.ns());
    common::eventually("the example backup succeeds", 60, || {
        p.rt.block_on(backups.get("etcd-prod-before-maintenance"))
            .unwrap()
            .succeeded()
    });

    apply_file(&p, &s3.address, "restore.yaml");
    p.wait_ready("etcd-restored", 3, 300);
    let mut restored = p.all_keys("etcd-restored");
    restored.retain(|k, _| k.starts_with("example/"));
    assert_eq!(restored.len(), 10, "{restored:?}");
    let _ =
        p.rt.block_on(backups.delete("etcd-prod-before-maintenance", &DeleteParams::default()));
    drop(s3);
}
