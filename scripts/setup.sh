#!/usr/bin/env bash
# Install everything the project's tests need: Debian packages, then .venv from the pinned lock file.
# Idempotent: each step is skipped when a stamp says it is already done with the same inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

cache=${KUBEHA_CACHE:-/var/cache/kubeha}
mkdir -p "$cache"
log() { printf '[setup] %s\n' "$*" >&2; }

# What the host needs to build and run the lab (the nodes' own packages come from the lab's mirror).
debs=(
  qemu-system-x86 qemu-utils debootstrap systemd-container dpkg-dev e2fsprogs shellcheck
  iproute2 nftables iptables openssh-client netcat-openbsd curl ca-certificates rsync python3-venv
  openssl gcc libc6-dev
  # the unit tests run the guard's haproxy configuration with the real haproxy on loopback, and its nftables data
  # path's connection closing with the real conntrack in a network namespace
  haproxy conntrack
)
deb_stamp="$cache/debs.stamp"
want=$(printf '%s\n' "${debs[@]}" | sha256sum | cut -c1-16)
if [[ $(cat "$deb_stamp" 2>/dev/null) != "$want" ]]; then
  missing=()
  for p in "${debs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  echo "$want" >"$deb_stamp"
fi

lock=requirements/dev.lock.txt
venv_stamp=.venv/.lock.sha256
want=$(sha256sum "$lock" | cut -c1-64)
if [[ $(cat "$venv_stamp" 2>/dev/null) != "$want" ]]; then
  log "creating .venv from $lock"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/pip install -q --disable-pip-version-check -r "$lock"
  echo "$want" >"$venv_stamp"
fi
log "ready: $(.venv/bin/python -c "import ansible.release as r; print('ansible-core', r.__version__)")"
