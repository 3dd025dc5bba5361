#!/usr/bin/env bash
# Installs Debian's chromium for the status-page test (tests/it/status_page.rs), when it is missing
# and this machine can: root (or passwordless sudo) with apt-get. Safe to run again.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
  if command -v "$b" >/dev/null 2>&1; then exit 0; fi
done
command -v apt-get >/dev/null 2>&1 || { echo "install-browser: no apt-get; install chromium by hand" >&2; exit 1; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if sudo -n true 2>/dev/null; then SUDO="sudo -n"; else echo "install-browser: not root; cannot apt-get install chromium" >&2; exit 1; fi
fi
echo "install-browser: apt-get install chromium …" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -qq chromium >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null; }
