#!/usr/bin/env bash
# pip-tool.sh PACKAGE VERSION BIN DIR VERSION_SUFFIX: installs PACKAGE==VERSION from PyPI into a
# virtualenv under DIR (unless BIN there already prints a version ending in VERSION_SUFFIX),
# checks what BIN --version prints, and prints BIN's path. The pinned tools of the tests
# (install-nats.sh, install-schemathesis.sh) go through it; safe to run again.
set -euo pipefail
package=$1 version=$2 name=$3 dir=$4 want=$5
bin="$dir/venv/bin/$name"
if [ -x "$bin" ] && "$bin" --version 2>/dev/null | grep -q -- "$want\$"; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dir"
echo "pip-tool: pip install $package==$version into $dir/venv …" >&2
python3 -m venv "$dir/venv" >&2
"$dir/venv/bin/pip" install --quiet --disable-pip-version-check "$package==$version" >&2
got="$("$bin" --version 2>&1 || true)"
case "$got" in
  *"$want") echo "$bin" ;;
  *) echo "pip-tool: expected $name ending in '$want', got: $got" >&2; exit 1 ;;
esac
