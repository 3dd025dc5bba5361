#!/usr/bin/env bash
# Installs the pinned schemathesis for the OpenAPI test (tests/it/schemathesis.rs) and prints
# the path of its `st`: schemathesis 4.32.5 from PyPI in a virtualenv under target/schemathesis
# (or $SCHEMATHESIS_INSTALL_DIR). The version is checked; safe to run again.
set -euo pipefail
VERSION=4.32.5
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="${SCHEMATHESIS_INSTALL_DIR:-$root/target/schemathesis}"
bin="$dir/venv/bin/st"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q "version $VERSION\$"; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
echo "install-schemathesis: pip install schemathesis==$VERSION into $dir/venv …" >&2
python3 -m venv "$dir/venv" >&2
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
got="$("$bin" --version 2>&1 || true)"
case "$got" in
  *"version $VERSION") echo "$bin" ;;
  *) echo "install-schemathesis: expected schemathesis $VERSION, got: $got" >&2; exit 1 ;;
esac
