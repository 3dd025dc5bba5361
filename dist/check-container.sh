#!/usr/bin/env bash
# check-container.sh: build the shardbox image from a Containerfile and check that it runs as promised:
# non-root, the data directory a volume that the server can write and that survives a restart,
# 0.0.0.0:7070 exposed and reachable through a published port, the no-token refusal, token
# auth, /healthz and /readyz, and a clean exit on SIGTERM.
#
#   dist/check-container.sh [--containerfile FILE] [--repo DIR] [--binary FILE] [--full]
#
# Default (works offline, with only deb.debian.org reachable): the builder stage is replaced
# by one that holds an already built binary (--binary, default REPO/target/release/shardbox),
# and the runtime stage of the Containerfile is used verbatim. If the runtime base image
# (gcr.io/distroless/cc-debian12:nonroot) cannot be pulled, a stand-in is made from the same
# Debian 12 packages distroless builds it from (libc6, libgcc-s1, libstdc++6, libgomp1,
# libssl3, ca-certificates, tzdata, base-files, netbase; passwd with nonroot 65532), with no
# shell, so the check still proves the binary needs nothing more than that base.
# --full: build the whole Containerfile (builder stage too); needs the registries.
#
# Needs: podman (scripts/install-podman.sh), curl, and root (the uid checks read the volume and
# the process as the host sees them, which rootless podman maps to other uids).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=${REPO:-$(cd "$here/.." && pwd)}
containerfile=""
binary=""
full=0
while [ $# -gt 0 ]; do
  case $1 in
    --containerfile) containerfile=$2; shift 2 ;;
    --repo) repo=$2; shift 2 ;;
    --binary) binary=$2; shift 2 ;;
    --full) full=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
containerfile=${containerfile:-$here/Containerfile}
[ -f "$containerfile" ] || containerfile=$repo/dist/Containerfile
binary=${binary:-$repo/target/release/shardbox}

# This sandbox (and some CI runners): the hard RLIMIT_NOFILE is below podman's default
# 1048576 and cannot be raised (no CAP_SYS_RESOURCE), and the cgroup layout is v1/v2 hybrid,
# which crun refuses ("cgroups in hybrid mode not supported"); runc runs it. Only when no
# CONTAINERS_CONF is given.
if [ -z "${CONTAINERS_CONF:-}" ]; then
  conf=$(mktemp --suffix=.conf)
  nofile=$(ulimit -Hn); nproc=$(ulimit -Hu)
  [ "$nofile" = unlimited ] && nofile=1048576
  [ "$nproc" = unlimited ] && nproc=4194304
  # (65535 was refused here although the hard limit is 96367; 32768 was not)
  [ "$nproc" -gt 32768 ] && nproc=32768
  {
    echo '[containers]'
    echo "default_ulimits = [\"nofile=$nofile:$nofile\", \"nproc=$nproc:$nproc\"]"
    if command -v runc >/dev/null && [ -d /sys/fs/cgroup/unified ]; then
      printf '[engine]\nruntime = "runc"\n'
    fi
  } >"$conf"
  export CONTAINERS_CONF=$conf
fi

tag=localhost/shardbox-check:$$
ctr=shardbox-check-$$
vol=shardbox-check-$$
ctx=$(mktemp -d)
cleanup() {
  podman rm -f -t 0 "$ctr" >/dev/null 2>&1 || true
  podman volume rm -f "$vol" >/dev/null 2>&1 || true
  podman rmi -f "$tag" >/dev/null 2>&1 || true
  podman rm -f -t 0 "$ctr-refusal" >/dev/null 2>&1 || true
  rm -rf "$ctx"
  if [ -n "${conf:-}" ]; then rm -f "$conf"; fi
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; podman logs "$ctr" 2>&1 | tail -20 >&2 || true; exit 1; }
ok() { echo "ok: $*"; }

runtime_image=$(sed -n 's/^ARG RUNTIME_IMAGE=//p' "$containerfile")
[ -n "$runtime_image" ] || fail "no ARG RUNTIME_IMAGE=… in $containerfile"

# A stand-in for gcr.io/distroless/cc-debian12:nonroot from Debian 12's own packages.
make_distroless_standin() {
  local name=$1 root debs
  root=$(mktemp -d); debs=$(mktemp -d)
  (cd "$debs" && apt-get download libc6 libgcc-s1 libstdc++6 libgomp1 libssl3 \
      ca-certificates tzdata base-files netbase >/dev/null)
  for d in "$debs"/*.deb; do dpkg-deb -x "$d" "$root"; done
  mkdir -p "$root/etc/ssl/certs" "$root/tmp" "$root/home/nonroot"
  # update-ca-certificates would need a shell inside; the host's bundle is Debian's too.
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  chmod 1777 "$root/tmp"; chown 65532:65532 "$root/home/nonroot"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$root/etc/group"
  [ ! -e "$root/bin/sh" ] || fail "stand-in base has a shell"
  tar -C "$root" --numeric-owner -cf - . | podman import \
    --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' - "$name" >/dev/null
  rm -rf "$root" "$debs"
}

build_args=()
if [ "$full" = 1 ]; then
  podman build --format docker -f "$containerfile" -t "$tag" "$repo" || fail "podman build"
else
  [ -x "$binary" ] || fail "no binary at $binary (cargo build --release first, or --full)"
  if ! podman image exists "$runtime_image" && ! podman pull -q "$runtime_image" >/dev/null 2>&1; then
    standin=localhost/shardbox-check-base:debian12
    echo "note: cannot pull $runtime_image; using a stand-in built from Debian 12 packages"
    podman image exists "$standin" || make_distroless_standin "$standin"
    build_args+=(--build-arg "RUNTIME_IMAGE=$standin")
  fi
  # The build context: the binary and an empty 0700 data dir for a builder stage that only
  # holds them, and what the runtime stage copies from the repo.
  mkdir -p "$ctx/dist" "$ctx/data"; chmod 0700 "$ctx/data"
  cp "$binary" "$ctx/shardbox"
  cp "$repo/dist/shardbox.toml" "$ctx/dist/"
  {
    # the ARG lines before the first FROM (they set the base images), …
    sed -n '1,/^FROM /{/^ARG /p}' "$containerfile"
    echo 'FROM scratch AS builder'
    echo 'COPY shardbox /out/shardbox'
    echo 'COPY data /out/data'
    # … and the runtime stage exactly as written.
    sed -n '/^FROM .* AS runtime/,$p' "$containerfile"
  } >"$ctx/Containerfile"
  grep -q '^FROM .* AS runtime' "$ctx/Containerfile" || fail "no 'FROM … AS runtime' stage"
  podman build -q --format docker "${build_args[@]}" -f "$ctx/Containerfile" -t "$tag" "$ctx" >/dev/null \
    || fail "podman build"
fi
ok "built $tag"

# --- The image's configuration ---
user=$(podman image inspect -f '{{.Config.User}}' "$tag")
case $user in ""|0|root|0:*|root:*) fail "image runs as root (User=\"$user\")" ;; esac
podman image inspect -f '{{json .Config.Volumes}}' "$tag" | grep -q '"/var/lib/shardbox"' \
  || fail "/var/lib/shardbox is not a VOLUME"
podman image inspect -f '{{json .Config.ExposedPorts}}' "$tag" | grep -q '"7070/tcp"' \
  || fail "7070/tcp not exposed"
podman image inspect -f '{{json .Config.Env}}' "$tag" | grep -q 'SHARDBOX_LISTEN=0.0.0.0:7070' \
  || fail "SHARDBOX_LISTEN=0.0.0.0:7070 not set"
ok "user $user, VOLUME /var/lib/shardbox, EXPOSE 7070, listen 0.0.0.0:7070"
size=$(podman image inspect -f '{{.Size}}' "$tag"); ok "image size $((size / 1024 / 1024)) MiB"

# --- No tokens: refuses to start on 0.0.0.0 ---
set +e
out=$(timeout 60 podman run --rm --name "$ctr-refusal" "$tag" 2>&1); rc=$?
set -e
[ "$rc" != 0 ] && grep -q 'refusing to listen on 0.0.0.0:7070 without authentication' <<<"$out" \
  || fail "without tokens it should refuse to start (rc=$rc): $out"
ok "without tokens: refuses to start (exit $rc)"

# --- A token, through SHARDBOX_TOKENS ---
token=$(podman run --rm "$tag" token new --name ci --scopes read,write 2>/dev/null | head -1)
[ -n "$token" ] || fail "token new printed nothing"
sha=$(printf %s "$token" | sha256sum | cut -d' ' -f1)
tokens="[{name = \"ci\", sha256 = \"$sha\", scopes = [\"read\", \"write\"]}]"

port=$((20000 + RANDOM % 20000))
start() {
  podman run -d --name "$ctr" -p "127.0.0.1:$port:7070" -v "$vol:/var/lib/shardbox" \
    -e "SHARDBOX_TOKENS=$tokens" "$tag" >/dev/null || fail "podman run"
  for _ in $(seq 1 120); do
    curl -fsS "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    [ "$(podman inspect -f '{{.State.Running}}' "$ctr")" = true ] || fail "container exited"
    sleep 0.5
  done
  fail "not ready within 60 s"
}
start
ok "ready on the published port (127.0.0.1:$port -> 0.0.0.0:7070)"
curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || fail "/healthz"
ok "/healthz and /readyz answer without a token"

uid=$(podman top "$ctr" huser | tail -n +2 | tr -d ' ')
[ "$uid" = 65532 ] || [ "$uid" = nonroot ] || fail "server runs as $uid, not 65532"
ok "server process runs as uid $uid"

code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v1/kv/ci/hello")
[ "$code" = 401 ] || fail "no token: expected 401, got $code"
ok "a request without a token: 401"
auth=(-H "Authorization: Bearer $token")
curl -fsS "${auth[@]}" -X PUT --data-binary 'world' "http://127.0.0.1:$port/v1/kv/ci/hello" >/dev/null \
  || fail "PUT with token"
[ "$(curl -fsS "${auth[@]}" "http://127.0.0.1:$port/v1/kv/ci/hello")" = world ] || fail "GET after PUT"
ok "PUT and GET with the token"

mnt=$(podman volume inspect -f '{{.Mountpoint}}' "$vol")
owner=$(stat -c '%u %a' "$mnt"); [ "$owner" = "65532 700" ] || fail "volume root is '$owner', want '65532 700'"
bad=$(find "$mnt" ! -uid 65532 | head -3); [ -z "$bad" ] || fail "files not owned by 65532: $bad"
ok "volume owned by 65532, mode 700; $(find "$mnt" -type f | wc -l) files in it, all 65532's"

# --- SIGTERM: graceful stop, then the data is still there ---
podman stop -t 60 "$ctr" >/dev/null
rc=$(podman inspect -f '{{.State.ExitCode}}' "$ctr")
[ "$rc" = 0 ] || fail "exit code $rc after SIGTERM"
ok "SIGTERM: exit 0"
podman rm "$ctr" >/dev/null
start
[ "$(curl -fsS "${auth[@]}" "http://127.0.0.1:$port/v1/kv/ci/hello")" = world ] || fail "data lost on restart"
ok "restarted on the same volume: the value is still there"
podman stop -t 60 "$ctr" >/dev/null

echo "PASS"
