//! Just enough of Kubernetes' protobuf encoding to read the request bodies kubectl sends that
//! way (client-go's default for built-in kinds, with no fallback to JSON): the `k8s\0` envelope
//! (`runtime.Unknown`) and the few kinds kubectl posts here — access reviews (`auth can-i`) and
//! TokenRequests (`create token`). Field numbers are those of `k8s.io/api`'s `generated.proto`.

use serde_json::{Map, Value, json};

enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

fn varint(buf: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// A message's fields in order, or None if it is not well formed.
fn fields(buf: &[u8]) -> Option<Vec<(u64, Field<'_>)>> {
    let (mut at, mut out) = (0, Vec::new());
    while at < buf.len() {
        let key = varint(buf, &mut at)?;
        let field = match key & 7 {
            0 => Field::Varint(varint(buf, &mut at)?),
            2 => {
                let len = usize::try_from(varint(buf, &mut at)?).ok()?;
                let bytes = buf.get(at..at.checked_add(len)?)?;
                at += len;
                Field::Bytes(bytes)
            }
            _ => return None, // no fixed-width fields in what is read here
        };
        out.push((key >> 3, field));
    }
    Some(out)
}

/// A message of string fields (`names[i]` is field i+1's JSON name; "" skips it), repeated ones
/// (`repeated`) as lists.
fn strings(buf: &[u8], names: &[&str], repeated: &[&str]) -> Option<Value> {
    let mut out = Map::new();
    for (n, f) in fields(buf)? {
        let (Some(name), Field::Bytes(b)) = (usize::try_from(n).ok().and_then(|n| names.get(n.checked_sub(1)?)), f)
        else {
            continue;
        };
        if name.is_empty() {
            continue;
        }
        let s = Value::from(String::from_utf8(b.to_vec()).ok()?);
        if repeated.contains(name) {
            out.entry(name.to_string())
                .or_insert_with(|| json!([]))
                .as_array_mut()?
                .push(s);
        } else {
            out.insert(name.to_string(), s);
        }
    }
    Some(Value::Object(out))
}

const RESOURCE_ATTRIBUTES: &[&str] = &[
    "namespace",
    "verb",
    "group",
    "version",
    "resource",
    "subresource",
    "name",
];
const NON_RESOURCE_ATTRIBUTES: &[&str] = &["path", "verb"];

/// An access review's spec (`SelfSubjectAccessReviewSpec`, or `SubjectAccessReviewSpec` with
/// its user and groups).
fn review_spec(buf: &[u8]) -> Option<Value> {
    let mut spec = Map::new();
    for (n, f) in fields(buf)? {
        let Field::Bytes(b) = f else { continue };
        match n {
            1 => drop(spec.insert("resourceAttributes".into(), strings(b, RESOURCE_ATTRIBUTES, &[])?)),
            2 => drop(spec.insert(
                "nonResourceAttributes".into(),
                strings(b, NON_RESOURCE_ATTRIBUTES, &[])?,
            )),
            3 => drop(spec.insert("user".into(), String::from_utf8(b.to_vec()).ok()?.into())),
            4 => spec
                .entry("groups")
                .or_insert_with(|| json!([]))
                .as_array_mut()?
                .push(String::from_utf8(b.to_vec()).ok()?.into()),
            _ => {}
        }
    }
    Some(Value::Object(spec))
}

fn token_request_spec(buf: &[u8]) -> Option<Value> {
    let mut spec = json!({"audiences": []});
    for (n, f) in fields(buf)? {
        match (n, f) {
            (1, Field::Bytes(b)) => spec["audiences"]
                .as_array_mut()?
                .push(String::from_utf8(b.to_vec()).ok()?.into()),
            (4, Field::Varint(v)) => spec["expirationSeconds"] = v.into(),
            _ => {}
        }
    }
    Some(spec)
}

/// The JSON of a protobuf request body (`k8s\0` + `runtime.Unknown{typeMeta, raw}`), for the
/// kinds above; None for anything else.
pub fn to_json(body: &[u8]) -> Option<Value> {
    let unknown = fields(body.strip_prefix(b"k8s\0")?)?;
    let (mut type_meta, mut raw) = (None, None);
    for (n, f) in unknown {
        match (n, f) {
            (1, Field::Bytes(b)) => type_meta = Some(strings(b, &["apiVersion", "kind"], &[])?),
            (2, Field::Bytes(b)) => raw = Some(b),
            _ => {}
        }
    }
    let (type_meta, raw) = (type_meta?, raw?);
    let kind = type_meta["kind"].as_str()?;
    let spec = fields(raw)?.into_iter().find_map(|(n, f)| match (n, f) {
        (2, Field::Bytes(b)) => Some(b),
        _ => None,
    });
    let spec = match kind {
        "SelfSubjectAccessReview" | "SubjectAccessReview" => review_spec(spec.unwrap_or_default())?,
        "TokenRequest" => token_request_spec(spec.unwrap_or_default())?,
        _ => return None,
    };
    Some(json!({"apiVersion": type_meta["apiVersion"], "kind": kind, "metadata": {}, "spec": spec}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: u8, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(n << 3) | 2, u8::try_from(b.len()).unwrap()];
        out.extend_from_slice(b);
        out
    }

    #[test]
    fn an_access_review_reads_as_kubectl_sent_it() {
        let attributes = [
            bytes(1, b"ops"),
            bytes(2, b"get"),
            bytes(5, b"secrets"),
            bytes(7, b"main-ca"),
        ]
        .concat();
        let review = bytes(2, &bytes(1, &attributes));
        let type_meta = [
            bytes(1, b"authorization.k8s.io/v1"),
            bytes(2, b"SelfSubjectAccessReview"),
        ]
        .concat();
        let body = [b"k8s\0".to_vec(), bytes(1, &type_meta), bytes(2, &review)].concat();
        let v = to_json(&body).unwrap();
        assert_eq!(v["kind"], "SelfSubjectAccessReview");
        assert_eq!(
            v["spec"]["resourceAttributes"],
            json!({"namespace": "ops", "verb": "get", "resource": "secrets", "name": "main-ca"})
        );
        assert!(to_json(b"k8s\0\xff").is_none(), "not well formed");
        assert!(to_json(b"{}").is_none(), "not protobuf");
    }
}
