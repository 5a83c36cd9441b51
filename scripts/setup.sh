#!/usr/bin/env bash
# Installs everything the lab and the tests need on a fresh Debian 12 machine (run as root):
# build tools (protoc for etcd-client), buildah and mmdebstrap (the image, built from the
# Dockerfile without a Docker engine), runc, a real OCI registry, skopeo, dbus and iproute2 for the
# simulated hosts, iptables (network faults between them), faketime (an operator whose clock is off), strace (state files flushed to disk, in order), Debian's python3 (a port squatter in the tests; hosts do not see /root/.pyenv),
# s3s-fs (an S3-compatible server, from crates.io), helm-python-sdk (PyPI), and Debian's etcd 3.4.23 (bookworm), 3.5.16 (trixie), 3.5.30 (sid) extracted
# side by side under $RUNC_ETCD_LAB_CACHE/etcd/<version>/ (nothing from trixie/sid is installed:
# a private apt state dir downloads the .debs, dpkg -x unpacks them).
set -euo pipefail
CACHE=${RUNC_ETCD_LAB_CACHE:-/var/cache/runc-etcd-lab}
SUITES=${SUITES:-bookworm trixie sid}

if ! [ -f /usr/include/google/protobuf/descriptor.proto ] || ! command -v protoc >/dev/null || ! command -v runc >/dev/null || ! command -v docker-registry >/dev/null \
   || ! command -v skopeo >/dev/null || ! command -v dbus-daemon >/dev/null || ! command -v ip >/dev/null || ! command -v iptables >/dev/null || ! command -v faketime >/dev/null || ! command -v strace >/dev/null || ! command -v openssl >/dev/null \
   || ! command -v buildah >/dev/null || ! command -v mmdebstrap >/dev/null || ! command -v strip >/dev/null \
   || ! [ -x /usr/bin/python3 ]; then
  apt-get update -q >/dev/null
  # --no-upgrade: the simulated hosts boot on an overlay of this machine's / and must not see it change
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends --no-upgrade \
    protobuf-compiler libprotobuf-dev runc docker-registry skopeo dbus iproute2 iptables faketime strace openssl util-linux procps systemd ca-certificates python3 \
    buildah mmdebstrap binutils >/dev/null
fi

A=$CACHE/apt
mkdir -p "$A/lists/partial" "$A/cache/archives/partial" "$A/debs" "$CACHE/etcd"
: > "$A/sources.list"
for s in $SUITES; do
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian $s main" >> "$A/sources.list"
done
APT=(-o Dir::Etc::SourceList="$A/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$A/lists" -o Dir::Cache="$A/cache" -o APT::Default-Release=
     -o Debug::NoLocking=1 -o APT::Sandbox::User=root)
apt-get "${APT[@]}" update -q >/dev/null
cd "$A/debs"
for p in etcd-server etcd-client; do
  for v in $(apt-cache "${APT[@]}" madison $p | awk -F'|' '{gsub(/ /,"",$2); print $2}' | sort -u); do
    ls "${p}_$(echo "$v" | sed 's/:/%3a/')"_*.deb >/dev/null 2>&1 || apt-get "${APT[@]}" download "$p=$v" >/dev/null
  done
done
# kubectl (a static binary) for the tests that drive the test API server the way a user does
if ! command -v kubectl >/dev/null; then
  mkdir -p "$A/tools" && cd "$A/tools"
  ls kubectl_1.32*.deb >/dev/null 2>&1 || apt-get "${APT[@]}" download "kubectl/trixie" >/dev/null
  dpkg-deb --fsys-tarfile kubectl_1.32*.deb | tar -xO ./usr/bin/kubectl > /usr/local/bin/kubectl
  chmod 755 /usr/local/bin/kubectl
  cd "$A/debs"
fi
# a real S3-compatible server for the backup tests (s3s-fs from crates.io; 0.14 builds with Rust 1.92+)
if ! [ -x "$CACHE/tools/bin/s3s-fs" ]; then
  cargo install -q --locked --root "$CACHE/tools" s3s-fs --version 0.14.1 --features binary
fi
# Helm's engine for the chart tests (PyPI helm-python-sdk bundles it: no helm binary, no Go)
if ! PYTHONPATH="$CACHE/pylib" python3 -c "import helm_python, yaml" 2>/dev/null; then
  python3 -m pip install -q --disable-pip-version-check --target "$CACHE/pylib" helm-python-sdk==0.2.2 pyyaml==6.0.2
fi
# one directory per upstream etcd version holding etcd, etcdctl and (3.5+) etcdutl
for deb in "$A"/debs/*.deb; do
  ver=$(dpkg-deb -f "$deb" Version); up=${ver#*:}; up=${up%%[-+]*}; up=${up%%~*}
  x=$A/x/$(basename "$deb" .deb); [ -d "$x" ] || { mkdir -p "$x"; dpkg -x "$deb" "$x"; }
  mkdir -p "$CACHE/etcd/$up"
  for b in etcd etcdctl etcdutl; do
    [ -f "$x/usr/bin/$b" ] && [ ! -L "$x/usr/bin/$b" ] && cp -a "$x/usr/bin/$b" "$CACHE/etcd/$up/"
  done
done
for d in "$CACHE"/etcd/*/; do echo "etcd $(basename "$d"): $(ls "$d" | tr '\n' ' ')"; done
