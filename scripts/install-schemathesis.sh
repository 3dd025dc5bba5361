#!/usr/bin/env bash
# Installs the pinned schemathesis for the OpenAPI test (tests/it/schemathesis.rs) and prints
# the path of its `st`: schemathesis 4.32.5 from PyPI in a virtualenv under target/schemathesis
# (or $SCHEMATHESIS_INSTALL_DIR). The version is checked; safe to run again.
set -euo pipefail
VERSION=4.32.5
root="$(cd "$(dirname "$0")/.." && pwd)"
exec bash "$root/scripts/pip-tool.sh" schemathesis "$VERSION" st \
  "${SCHEMATHESIS_INSTALL_DIR:-$root/target/schemathesis}" "version $VERSION"
