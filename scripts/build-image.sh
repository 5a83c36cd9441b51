#!/usr/bin/env bash
# Builds the image from ./Dockerfile without a Docker engine: Debian's buildah (as root, vfs
# storage, chroot isolation) on a Debian base image that mmdebstrap makes locally (no registry
# is reachable here, so neither debian:bookworm-slim nor the Rust image can be pulled).
#
# The Dockerfile's runtime stage is built as written (its apt-get RUN included). Its Rust build
# stage cannot run without the Rust image: its output, the runc-etcd binary, is supplied from the
# host's cargo build (argument 1) and stripped, as that stage does, at the path the runtime stage
# copies it from (`tests/dockerfile.rs` checks what the build stage itself copies and builds).
#
# Usage: scripts/build-image.sh <runc-etcd binary> <tag> [<dir to export the root file system to>]
# With a third argument the image's root file system is copied there, and `buildah inspect`'s
# account of the image (its OCI config: user, entrypoint) written beside it as <dir>.inspect.json.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$1 tag=$2 out=${3:-}
CACHE=${RUNC_ETCD_LAB_CACHE:-/var/cache/runc-etcd-lab}
B=(buildah --root "$CACHE/buildah/storage" --runroot "$CACHE/buildah/run" --storage-driver vfs)

# The base image, once: Debian bookworm's minimal variant under the name the Dockerfile uses.
base=docker.io/library/debian:bookworm-slim
if ! "${B[@]}" inspect --type image "$base" >/dev/null 2>&1; then
  mkdir -p "$CACHE/image"
  tar=$CACHE/image/bookworm-minbase.tar
  if ! [ -s "$tar" ]; then
    mmdebstrap --quiet --variant=minbase bookworm "$tar.part" http://deb.debian.org/debian
    mv "$tar.part" "$tar"
  fi
  ctr=$("${B[@]}" from scratch)
  "${B[@]}" add --quiet "$ctr" "$tar" /
  "${B[@]}" config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
  "${B[@]}" commit --quiet "$ctr" "$base" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$bin" "$ctx/runc-etcd"
strip "$ctx/runc-etcd"
# The build stage (from its FROM to the next) becomes the supplied binary at the same path.
awk '/^FROM .* AS build$/ { print "FROM scratch AS build"; print "COPY runc-etcd /src/target/release/runc-etcd"; skip = 1; next }
     /^FROM / { skip = 0 }
     !skip' Dockerfile > "$ctx/Dockerfile"
grep -q '^FROM scratch AS build$' "$ctx/Dockerfile" || { echo "the Dockerfile has no stage named build" >&2; exit 1; }
"${B[@]}" bud --quiet --pull-never --isolation chroot --layers=false -f "$ctx/Dockerfile" -t "$tag" "$ctx" >/dev/null
# The image this tag named before, if any, is no longer needed (vfs keeps whole copies).
"${B[@]}" rmi --prune >/dev/null 2>&1 || true

if [ -n "$out" ]; then
  ctr=$("${B[@]}" from --pull-never "$tag")
  mnt=$("${B[@]}" mount "$ctr")
  rm -rf "$out" && mkdir -p "$out"
  cp -a "$mnt/." "$out/"
  "${B[@]}" umount "$ctr" >/dev/null
  "${B[@]}" rm "$ctr" >/dev/null
  "${B[@]}" inspect --type image "$tag" > "$out.inspect.json"
fi
