#!/usr/bin/env bash
# Installs the Debian 12 packages breakerbox needs to build and test, only when missing
# (idempotent; `apt-get update` runs once, and only if something has to be installed).
set -euo pipefail
packages=(
  g++ cmake ninja-build pkg-config openssl curl ca-certificates
  libboost1.81-dev libssl-dev libsimdjson-dev libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev libsqlite3-dev
  prometheus   # for promtool: the tests check the /metrics output with it
  sslscan      # the TLS listener test scans protocols and suites with it
  nodejs       # a Node.js client goes through the forward proxy in the tests
  iproute2 util-linux  # ip and unshare: the DNS test runs in its own network namespace
)
packages+=("$@")
missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  sudo_cmd=()
  if [[ $(id -u) -ne 0 ]]; then
    if ! command -v sudo >/dev/null; then
      echo "setup: ${missing[*]} must be installed: run this as root, or install sudo" >&2
      exit 1
    fi
    sudo_cmd=(sudo)
  fi
  # A freshly booted machine often has apt-daily or unattended-upgrades holding the dpkg
  # lock for a few minutes: wait for it rather than fail.
  apt_opts=(-qq -o DPkg::Lock::Timeout=600)
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends "${missing[@]}"
  if [[ " ${missing[*]} " == *" prometheus "* ]] && command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    # Installed for promtool only: the server the package enables is not wanted on :9090.
    "${sudo_cmd[@]}" systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
