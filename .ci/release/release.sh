#!/usr/bin/env bash
# Release: a tag vX.Y.Z -> a multi-arch image, the Helm chart as an OCI artifact, checksums.
# See .ci/release/README.md. Two modes:
#
#   release.sh --local OUT_DIR [--tag vX.Y.Z]
#       Every step that needs no registry, on this machine: the version checks, the image for this
#       machine's architecture (make image), the chart package (make chart), the source archive,
#       SHA256SUMS and image-digests.txt in OUT_DIR. make test runs this mode.
#   release.sh --push REGISTRY --tag vX.Y.Z [OUT_DIR]
#       The release itself, from CI on the tag: the same, then the image for linux/amd64 and
#       linux/arm64 as one manifest list pushed to REGISTRY/cni-metrics-helper:X.Y.Z (and :latest),
#       the chart pushed to oci://REGISTRY/charts, and the pushed digests added to the checksums.
#       Needs `podman login REGISTRY` and `helm registry login REGISTRY` done before, and
#       qemu-user-static registered with binfmt_misc for the foreign architecture.
set -euo pipefail
cd "$(dirname "$0")/../.."

mode="" registry="" tag="" out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --local) mode=local; out="${2:?--local needs an output directory}"; shift 2 ;;
    --push) mode=push; registry="${2:?--push needs a registry}"; shift 2 ;;
    --tag) tag="${2:?--tag needs a tag}"; shift 2 ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) if [ "$mode" = push ] && [ -z "$out" ]; then out="$1"; shift
       else echo "release: unknown argument '$1' (see --help)" >&2; exit 2; fi ;;
  esac
done
[ -n "$mode" ] || { echo "release: --local OUT_DIR or --push REGISTRY (see --help)" >&2; exit 2; }

version=$(make -s --no-print-directory version)
[ -n "$version" ] || { echo "release: no version in CMakeLists.txt" >&2; exit 1; }
if [ -n "$tag" ] && [ "$tag" != "v$version" ]; then
  echo "release: tag $tag is not v$version, the version in CMakeLists.txt: bump project(VERSION)" \
       "there (and CHANGELOG.md, the chart's appVersion) or tag v$version" >&2
  exit 1
fi
[ "$mode" = local ] || [ -n "$tag" ] || { echo "release: --push needs --tag v$version" >&2; exit 2; }
chart_dir=$(dirname "$(ls manifests/helm/*/Chart.yaml | head -n 1)")
app_version=$(sed -n 's/^appVersion:[[:space:]]*"\{0,1\}\([^"[:space:]]*\)"\{0,1\}.*/\1/p' "$chart_dir/Chart.yaml")
if [ "$app_version" != "$version" ]; then
  echo "release: $chart_dir/Chart.yaml appVersion is '$app_version', not $version" >&2
  exit 1
fi
if [ -n "$tag" ] && ! grep -q "^## \[$version\]" CHANGELOG.md; then
  echo "release: CHANGELOG.md has no '## [$version]' section: move Unreleased there" >&2
  exit 1
fi

out=${out:-release-$version}
mkdir -p "$out"
out=$(cd "$out" && pwd)
rm -f "$out"/SHA256SUMS "$out"/image-digests.txt "$out"/*.tar.gz "$out"/*.tgz
podman=${PODMAN:-podman}
image=cni-metrics-helper

# 1. The source archive of the commit released.
git archive --format=tar.gz --prefix="cni-metrics-helper-$version/" \
  -o "$out/cni-metrics-helper-$version.tar.gz" HEAD

# 2. The image for this machine's architecture, in podman's storage (cached layers reused).
make --no-print-directory image >"$out/image-build.log" 2>&1 || {
  tail -n 30 "$out/image-build.log" >&2; echo "release: make image failed" >&2; exit 1; }
arch=$($podman image inspect --format '{{.Architecture}}' "$image:$version")
id=$($podman image inspect --format '{{.Id}}' "$image:$version")
echo "sha256:$id  $image:$version linux/$arch (local image id)" >>"$out/image-digests.txt"

# 3. The chart, packaged by the Makefile's `chart` target (helm lint + helm package into
#    CHART_OUT). The hook: without that target this step says so and the release stops in
#    --push mode.
if make -n --no-print-directory chart >/dev/null 2>&1; then
  make --no-print-directory chart CHART_OUT="$out" >"$out/chart.log" 2>&1 || {
    tail -n 30 "$out/chart.log" >&2; echo "release: make chart failed" >&2; exit 1; }
  ls "$out"/*.tgz >/dev/null 2>&1 || { echo "release: make chart left no .tgz in $out" >&2; exit 1; }
else
  echo "release: no 'make chart' target: the chart is not packaged" >&2
  [ "$mode" = local ] || exit 1
fi

# 4. The release proper: multi-arch manifest list and the chart, pushed.
if [ "$mode" = push ]; then
  ref="$registry/$image:$version"
  $podman manifest rm "$ref" >/dev/null 2>&1 || true
  $podman build --platform linux/amd64,linux/arm64 --build-arg VERSION="$version" --manifest "$ref" .
  $podman manifest push --all --digestfile "$out/manifest.digest" "$ref" "docker://$ref"
  $podman manifest push --all "$ref" "docker://$registry/$image:latest"
  echo "$(cat "$out/manifest.digest")  $ref (manifest list: linux/amd64, linux/arm64)" \
    >>"$out/image-digests.txt"
  for c in "$out"/*.tgz; do
    helm push "$c" "oci://$registry/charts" | tee -a "$out/chart-push.log"
  done
fi

# 5. Checksums of every file released.
(cd "$out" && sha256sum -- *.tar.gz $(ls *.tgz 2>/dev/null) image-digests.txt >SHA256SUMS)
echo "release $version ($mode): $out"
cat "$out/SHA256SUMS"
