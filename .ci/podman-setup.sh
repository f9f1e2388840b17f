#!/usr/bin/env bash
# Makes podman work on a plain Debian 12 machine with no container registry reachable, for
# `make image` and the container test. Idempotent: with everything in place it only checks.
#
# 1. System-wide settings in /etc/containers/containers.conf.d/50-cni-metrics-helper.conf, so a
#    plain `podman run` works afterwards:
#    - runtime "runc": crun refuses hosts with hybrid cgroups ("cgroups in hybrid mode not
#      supported") and is not needed;
#    - default_ulimits within this host's limits: podman gives root's containers RLIMIT_NOFILE
#      1048576, which the runtime fails to set (EPERM: "error setting rlimits") where the host's
#      hard limit is lower; RLIMIT_NPROC fails the same way above the hard limit or kernel.pid_max.
# 2. The base images of the Dockerfile, debian:12 and debian:12-slim, when podman's storage does not
#    have them already: built with debootstrap (minbase, bookworm) from the Debian archive apt uses
#    and imported. Where a registry is reachable, pull the official images instead
#    (`podman pull docker.io/library/debian:12 docker.io/library/debian:12-slim`) or set
#    CMH_BASE_IMAGES=registry, and this step is skipped: the build then pulls them.
set -euo pipefail

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

conf_dir=/etc/containers/containers.conf.d
conf="$conf_dir/50-cni-metrics-helper.conf"
cap() { # the hard limit of `ulimit -H$1`, at most $2
  local h
  h=$(ulimit -H"$1")
  if [ "$h" = unlimited ] || [ "$h" -gt "$2" ]; then echo "$2"; else echo "$h"; fi
}
nofile=$(cap n 1048576)
pid_max=$(cat /proc/sys/kernel/pid_max 2>/dev/null || echo 32768)
nproc=$(cap u $((pid_max < 65536 ? pid_max : 65536)))
want=$(printf '%s\n' \
  '# Written by cni-metrics-helper/.ci/podman-setup.sh (see there why).' \
  '[containers]' \
  "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]" \
  '[engine]' \
  'runtime = "runc"')
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
  $sudo mkdir -p "$conf_dir"
  printf '%s\n' "$want" | $sudo tee "$conf" >/dev/null
  echo "podman-setup: wrote $conf"
fi

[ "${CMH_BASE_IMAGES:-local}" = registry ] && exit 0
podman=${PODMAN:-podman} # the storage `make image` builds in (root's unless PODMAN says otherwise)
have() { $podman image exists "$1" 2>/dev/null; }
have debian:12 && have debian:12-slim && exit 0

# The archive apt already uses (deb822 sources first, then the one-line format).
mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\).*/\1/p' /etc/apt/sources.list.d/*.sources \
           2>/dev/null | grep -v -- '-security' | head -n 1 || true)
if [ -z "$mirror" ]; then
  mirror=$(grep -hs '^deb[[:space:]]' /etc/apt/sources.list /etc/apt/sources.list.d/*.list |
           awk '$2 !~ /security/ {print $2; exit}' || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d /var/tmp/cmh-debootstrap.XXXXXX)
trap '$sudo rm -rf "$work"' EXIT
root="$work/rootfs"
echo "podman-setup: debootstrap --variant=minbase bookworm from $mirror (a few minutes)"
$sudo debootstrap --variant=minbase bookworm "$root" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 20 "$work/debootstrap.log" >&2
  echo "podman-setup: debootstrap failed (log above)" >&2
  exit 1
}
$sudo rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*.log \
  "$root"/var/cache/apt/*.bin "$root"/var/log/apt/*
# The security archive beside the main one, as in the official image.
printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb http://deb.debian.org/debian-security bookworm-security main\n' \
  "$mirror" "$mirror" | $sudo tee "$root/etc/apt/sources.list" >/dev/null
# As in the official images: apt keeps no downloaded packages or caches after an install.
printf '%s\n' \
  'DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };' \
  'Dir::Cache::pkgcache "";' 'Dir::Cache::srcpkgcache "";' |
  $sudo tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null
import() { # DIR NAME
  $sudo tar -C "$1" --numeric-owner -c . |
    $podman import --quiet --change 'CMD ["bash"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      - "$2" >/dev/null
  echo "podman-setup: imported $2"
}
have debian:12 || import "$root" debian:12

# Slim: no documentation (copyright files kept), man pages, locales or apt caches, and dpkg told
# to leave them out of later installs, as the official slim image does.
$sudo rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/groff/* \
  "$root"/usr/share/lintian/* "$root"/usr/share/linda/* "$root"/var/cache/man/* \
  "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
$sudo find "$root"/usr/share/doc -mindepth 1 -not -name copyright -not -type d -delete
$sudo find "$root"/usr/share/doc -mindepth 1 -type d -empty -delete
$sudo find "$root"/usr/share/locale -mindepth 1 -maxdepth 1 -not -name locale.alias \
  -exec rm -rf {} +
printf '%s\n' 'path-exclude /usr/share/doc/*' 'path-include /usr/share/doc/*/copyright' \
  'path-exclude /usr/share/man/*' 'path-exclude /usr/share/groff/*' 'path-exclude /usr/share/info/*' \
  'path-exclude /usr/share/lintian/*' 'path-exclude /usr/share/linda/*' \
  'path-exclude /usr/share/locale/*' 'path-include /usr/share/locale/locale.alias' |
  $sudo tee "$root/etc/dpkg/dpkg.cfg.d/slim" >/dev/null
have debian:12-slim || import "$root" debian:12-slim
