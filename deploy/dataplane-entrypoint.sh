#!/bin/sh
# Entrypoint of the dataplane image: give bcc kernel headers for the running
# kernel, then exec the command (`socklb-dataplane run ...` by default).
#
# bcc compiles bpf/sock_lb.c against /lib/modules/$(uname -r)/build (and
# .../source). In the container /lib/modules is the image's own; the host's
# /lib/modules and /usr/src are mounted read-only under /host (their symlinks
# are absolute host paths, resolved here under /host). In order:
#
#   1. /lib/modules/$(uname -r)/build already has headers (the host runs the
#      kernel the image has headers for, or an earlier start linked them);
#   2. the host has headers for its kernel: link build and source to them;
#   3. else (a kernel with no Debian headers, e.g. a custom or cloud-VM kernel)
#      the newest Debian headers installed in the image (linux-headers-amd64):
#      the cgroup sock_addr programs use only UAPI structs, which those carry
#      unchanged (scripts/setup.sh does the same on a machine);
#   4. else say so and let bcc try /sys/kernel/kheaders.tar.xz (CONFIG_IKHEADERS).
#
# SOCKLB_ENTRYPOINT_ROOT (empty in the image) prefixes every path: the unit
# tests run this script against a fake tree (tests/unit/test_deploy.py).
set -eu

root=${SOCKLB_ENTRYPOINT_ROOT:-}
host="$root/host"
release=$(uname -r)
kdir="$root/lib/modules/$release"

log() { echo "socklb-dataplane-entrypoint: $*" >&2; }

# host_target LINK: where a host path under $host/lib/modules/$release points,
# as a path in this container (absolute host targets are re-rooted at $host).
host_target() {
  if [ -L "$1" ]; then
    t=$(readlink "$1")
    case $t in
      /*) echo "$host$t" ;;
      *) echo "$(dirname "$1")/$t" ;;
    esac
  else
    echo "$1"
  fi
}

newest() {  # the last of the existing directories given, in version order
  for d in "$@"; do [ -d "$d" ] && printf '%s\n' "$d"; done | sort -V | tail -n 1
}

link_headers() {  # BUILD SOURCE
  mkdir -p "$kdir"
  ln -sfn "$1" "$kdir/build"
  ln -sfn "$2" "$kdir/source"
}

if [ -d "$kdir/build/include" ]; then
  :
else
  hbuild=$(host_target "$host/lib/modules/$release/build")
  hsource=$(host_target "$host/lib/modules/$release/source")
  if [ -d "$hbuild/include" ]; then
    # Split trees (Debian: build = -amd64, source = -common) or one tree (source = build).
    [ -d "$hsource/include" ] || hsource=$hbuild
    link_headers "$hbuild" "$hsource"
    log "kernel $release: headers of the host ($hbuild)"
  else
    hdr=$(newest "$root"/usr/src/linux-headers-*-amd64)
    common=$(newest "$root"/usr/src/linux-headers-*-common)
    if [ -n "$hdr" ]; then
      link_headers "$hdr" "${common:-$hdr}"
      log "kernel $release: no headers on the host; using the image's $(basename "$hdr") (UAPI structs only)"
    else
      log "kernel $release: no kernel headers found (host or image); bcc will try /sys/kernel/kheaders.tar.xz"
    fi
  fi
fi

exec "$@"
