#!/usr/bin/env bash
# Installs Debian's podman and runc for dist/check-container.sh, when they are missing and this
# machine can: root (or passwordless sudo) with apt-get. Safe to run again.
set -euo pipefail
if command -v podman >/dev/null 2>&1 && command -v runc >/dev/null 2>&1; then exit 0; fi
command -v apt-get >/dev/null 2>&1 || { echo "install-podman: no apt-get; install podman by hand" >&2; exit 1; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else echo "install-podman: not root; cannot apt-get install podman" >&2; exit 1; fi
fi
pkgs="podman runc uidmap slirp4netns fuse-overlayfs netavark aardvark-dns conmon catatonit iptables"
echo "install-podman: apt-get install $pkgs …" >&2
export DEBIAN_FRONTEND=noninteractive
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null 2>&1 \
  || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $pkgs >/dev/null; }
