#!/usr/bin/env bash
# Assembles a release of certbound into DIST (called by `make release`):
#
#   DIST/certbound.wasm       the module
#   DIST/oci/                 its OCI image layout (wasm/build-oci.sh), tag = crate version
#   DIST/wasmplugin.yaml      wasm/wasmplugin.yaml with url oci://$REGISTRY/certbound:VERSION and
#                             sha256 = the image manifest digest (what Istio compares for oci:// URLs)
#   DIST/envoy-remote.yaml    envoy/envoy-remote.yaml with sha256 = the module's SHA-256
#   DIST/SHA256SUMS           every file above (`sha256sum -c SHA256SUMS` in DIST)
#
#   REGISTRY=registry.example.com wasm/release.sh WASM DIST
set -euo pipefail

if [[ $# -ne 2 ]]; then
  echo "usage: REGISTRY=host[:port][/path] $0 WASM DIST" >&2
  exit 2
fi
wasm=$1
dist=$2
registry=${REGISTRY:-registry.example.com}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
placeholder=0000000000000000000000000000000000000000000000000000000000000000

version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' "$repo/Cargo.toml" | head -n 1)
rm -rf "$dist"
mkdir -p "$dist"
cp "$wasm" "$dist/certbound.wasm"
manifest_digest=$("$here/build-oci.sh" "$dist/certbound.wasm" "$dist/oci")
wasm_sha=$(sha256sum "$dist/certbound.wasm" | cut -c1-64)

# $1 template, $2 output, $3 sha256, then sed expressions: replace the placeholder, fail if it was not there.
render() {
  local template=$1 output=$2 sha=$3
  shift 3
  grep -q "sha256: \"$placeholder\"" "$template" \
    || { echo "release: no placeholder sha256 in $template" >&2; exit 1; }
  {
    echo "# Rendered by 'make release' from $(realpath --relative-to="$repo" "$template") for certbound $version."
    sed -e "s/sha256: \"$placeholder\"/sha256: \"$sha\"/" "$@" "$template"
  } >"$output"
  grep -q "sha256: \"$sha\"" "$output" || { echo "release: could not pin sha256 in $output" >&2; exit 1; }
}

render "$here/wasmplugin.yaml" "$dist/wasmplugin.yaml" "${manifest_digest#sha256:}" \
  -e "s#url: oci://[^ ]*/certbound:[^ ]*#url: oci://$registry/certbound:$version#"
grep -q "url: oci://$registry/certbound:$version\$" "$dist/wasmplugin.yaml" \
  || { echo "release: could not set the url in $dist/wasmplugin.yaml" >&2; exit 1; }
render "$repo/envoy/envoy-remote.yaml" "$dist/envoy-remote.yaml" "$wasm_sha"

sums=$(cd "$dist" && find . -type f -printf '%P\n' | LC_ALL=C sort | xargs sha256sum)
printf '%s\n' "$sums" >"$dist/SHA256SUMS"

echo "release: $dist: certbound $version, module sha256 $wasm_sha, image $manifest_digest (oci://$registry/certbound:$version)"
