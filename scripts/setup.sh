#!/usr/bin/env bash
# One-time (idempotent) set-up of a fresh Debian machine: system packages,
# kernel headers for bcc, bpffs, and the project's virtualenv in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3 python3-venv python3-bpfcc bpfcc-tools linux-headers-amd64
  clang llvm libbpf-dev bpftool gcc make
  iproute2 iptables nftables procps
  nginx-light wrk socat etcd-server
  dnsmasq-base bind9-dnsutils
)

need_apt=0
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || need_apt=1
done
if [ "$need_apt" = 1 ]; then
  if [ "$(id -u)" != 0 ]; then echo "setup: run as root to install system packages: ${APT_PACKAGES[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${APT_PACKAGES[@]}"
fi

# bcc compiles against /lib/modules/$(uname -r)/build. Debian ships headers for
# its own kernels only; the UAPI structs the cgroup programs use are the same
# in the newest headers installed, so point the running kernel at them.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include" ] && [ "$(id -u)" = 0 ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -1)
  if [ -n "$hdr" ]; then
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "${common:-$hdr}" "$kdir/source"
  fi
fi

# Debian's python3 carries bcc (python3-bpfcc); the venv sees bcc and nothing
# else from the system through one symlink.
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv .venv
fi
site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"

stamp=.venv/.socklb-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
  touch "$stamp"
fi
