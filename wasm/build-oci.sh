#!/usr/bin/env bash
# Builds certbound's OCI image layout without a container engine: the "compat" variant of the Wasm
# image spec that Istio's image fetcher reads (one application/vnd.oci.image.layer.v1.tar+gzip layer
# holding plugin.wasm, manifest annotation module.wasm.image/variant=compat).
#
#   wasm/build-oci.sh WASM OUT_DIR
#
# OUT_DIR becomes an OCI image layout (oci-layout, index.json, blobs/sha256/) whose one manifest is
# tagged with the crate version: `skopeo copy oci:OUT_DIR:VERSION docker://REGISTRY/certbound:VERSION`.
# Prints the manifest digest, which is what Istio's WasmPlugin `sha256` is compared with for oci:// URLs.
#
# Reproducible: the same module and source revision give the same bytes and the same manifest digest
# (fixed tar metadata and order, gzip without name or time, `created` from SOURCE_DATE_EPOCH, which
# defaults to the time of the last commit).
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: $0 WASM OUT_DIR" >&2
  exit 2
fi
wasm=$1
out=$2
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)

for tool in tar gzip sha256sum stat git; do
  command -v "$tool" >/dev/null 2>&1 || { echo "build-oci: '$tool' not found on PATH" >&2; exit 127; }
done
[[ -f $wasm ]] || { echo "build-oci: $wasm not found (run 'make build')" >&2; exit 1; }
# The wasm magic number: refuse to package anything else under the name plugin.wasm.
[[ $(head -c 4 "$wasm" | od -An -tx1 | tr -d ' \n') == 0061736d ]] \
  || { echo "build-oci: $wasm is not a WebAssembly module" >&2; exit 1; }

version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml" | head -n 1)
[[ -n $version ]] || { echo "build-oci: no version in $repo/Cargo.toml" >&2; exit 1; }
revision=$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)
# Tracked files that differ from HEAD: the module may not be what that commit builds.
if [[ $revision != unknown ]] && ! git -C "$repo" diff --quiet HEAD -- 2>/dev/null; then
  revision="$revision-dirty"
fi
epoch=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 0)}
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
wasm_sha=$(sha256sum "$wasm" | cut -c1-64)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/root"
cp "$wasm" "$work/root/plugin.wasm"

rm -rf "$out"
mkdir -p "$out/blobs/sha256"

# $1: file → writes it as a blob, prints "sha256:<hex> <size>".
put_blob() {
  local hex size
  hex=$(sha256sum "$1" | cut -c1-64)
  size=$(stat -c %s "$1")
  cp "$1" "$out/blobs/sha256/$hex"
  echo "sha256:$hex $size"
}

# The layer: a tar with one entry, plugin.wasm, metadata fixed; ustar has no time-stamped pax headers.
tar --create --format=ustar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
  --mode=0644 -C "$work/root" -f "$work/layer.tar" plugin.wasm
diff_id="sha256:$(sha256sum "$work/layer.tar" | cut -c1-64)"
gzip -n -9 -c "$work/layer.tar" >"$work/layer.tar.gz"
blob=$(put_blob "$work/layer.tar.gz")
read -r layer_digest layer_size <<<"$blob"

# Labels (in the config, where `docker inspect` and `skopeo inspect` show them) and the same keys as
# manifest annotations (where registries and Istio see them without fetching the config).
labels=$(cat <<EOF
"org.opencontainers.image.title":"certbound","org.opencontainers.image.description":"proxy-wasm filter enforcing RFC 8705 certificate-bound OAuth tokens","org.opencontainers.image.version":"$version","org.opencontainers.image.revision":"$revision","org.opencontainers.image.created":"$created","org.opencontainers.image.licenses":"Apache-2.0","certbound.wasm.sha256":"$wasm_sha"
EOF
)

# GOOS/GOARCH-style platform of a WASI module, as `docker buildx --platform wasip1/wasm` names it.
printf '%s' "{\"created\":\"$created\",\"architecture\":\"wasm\",\"os\":\"wasip1\",\"config\":{\"Labels\":{$labels}},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[\"$diff_id\"]},\"history\":[{\"created\":\"$created\",\"created_by\":\"wasm/build-oci.sh: COPY certbound.wasm ./plugin.wasm\"}]}" >"$work/config.json"
blob=$(put_blob "$work/config.json")
read -r config_digest config_size <<<"$blob"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"config\":{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\"digest\":\"$config_digest\",\"size\":$config_size},\"layers\":[{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"$layer_digest\",\"size\":$layer_size}],\"annotations\":{\"module.wasm.image/variant\":\"compat\",$labels}}" >"$work/manifest.json"
blob=$(put_blob "$work/manifest.json")
read -r manifest_digest manifest_size <<<"$blob"

printf '%s' "{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"$manifest_digest\",\"size\":$manifest_size,\"annotations\":{\"org.opencontainers.image.ref.name\":\"$version\"}}]}" >"$out/index.json"
printf '%s' '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"

echo "build-oci: $out (certbound:$version, revision $revision, plugin.wasm sha256 $wasm_sha)" >&2
echo "$manifest_digest"
