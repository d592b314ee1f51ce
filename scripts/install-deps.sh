#!/usr/bin/env bash
# Installs what the tests need beyond cargo (Debian packages), only when missing.
# Safe to run repeatedly; needs root (or sudo) only when something is missing.
set -euo pipefail
need=()
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
# WAN test bench (netem-tests): namespaces and tc, ping, TCP and UFTP peers, scp over a local sshd.
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v ping >/dev/null 2>&1 || need+=(iputils-ping)
command -v iperf3 >/dev/null 2>&1 || need+=(iperf3)
command -v uftp >/dev/null 2>&1 || need+=(uftp)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v scp >/dev/null 2>&1 || need+=(openssh-client)
# The loopback benchmark's rsync-small-up row (rsync over the same local sshd).
command -v rsync >/dev/null 2>&1 || need+=(rsync)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing: ${need[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# At rest (issue 6): the interoperability test decrypts envelopes with Python's `cryptography`
# package (>= 44 for Argon2id), an implementation independent of ours.
command -v python3 >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"; $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3 python3-pip >/dev/null; }
if ! python3 -c 'import cryptography.hazmat.primitives.kdf.argon2' >/dev/null 2>&1; then
  echo "== installing: python3 cryptography (pip)"
  python3 -m pip --version >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"; $SUDO apt-get update -qq; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pip >/dev/null; }
  python3 -m pip install --quiet --upgrade cryptography 2>/dev/null \
    || python3 -m pip install --quiet --upgrade --break-system-packages cryptography
fi
