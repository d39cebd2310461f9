#!/usr/bin/env bash
# npm run test:e2e: the image and both compose files on a real Docker Engine (docs/e2e.md says what and why).
#
#   1. tools: Debian bookworm's docker.io (engine 20.10) with containerd, runc and tini, and trixie's
#      docker-compose (the compose v2 CLI plugin), unpacked by scripts/debian-packages (nothing installed, no
#      maintainer script, so no service starts), plus mmdebstrap for the stand-ins.
#   2. stand-ins for the base images the files name (no image registry is reachable here), built once and kept
#      in the cache directory (ARC_IMDS_E2E_CACHE, default /var/cache/arc-imds-proxy/e2e): test/e2e/standins/.
#   3. a BUILD daemon in the host's network namespace (its own mount namespace; --bridge=none, no iptables)
#      builds the image from the unmodified Dockerfile with `docker build --network host`, the legacy builder.
#   4. test/e2e/engine.sh, in a private network and mount namespace (only lo; a tmpfs on /var/opt), runs a
#      second daemon, loads the images and runs the compose files unmodified.
#   5. everything this run started is stopped, unmounted and removed, also on failure, and that is checked.
#
# Exit 0 when every check passed, 1 when one failed, 77 (with a message) when this machine cannot run dockerd.
# The last line is "N passed, N failed".
set -uo pipefail
# One compound command, read whole before it runs: editing this file during a run cannot derail the run.
{
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
E2E=$ROOT/test/e2e
CACHE=${ARC_IMDS_E2E_CACHE:-/var/cache/arc-imds-proxy/e2e}
started=$(date +%s)

# ---- can this machine run dockerd at all? ---------------------------------------------------------------------
skip() {
  echo "e2e skipped: $*"
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "dockerd needs root (this is uid $(id -u))"
command -v unshare >/dev/null || skip "no unshare (util-linux)"
grep -qw overlay /proc/filesystems || skip "the kernel has no overlay filesystem"
[ -d /sys/fs/cgroup ] || skip "no cgroup filesystem"
unshare --net --mount --propagation private true 2>/dev/null || skip "cannot create network and mount namespaces"

E2E_WORK=$(mktemp -d /tmp/arc-imds-e2e.XXXXXX)
export E2E_WORK
# shellcheck source=test/e2e/lib.sh
# shellcheck source=lib.sh
. "$E2E/lib.sh"
: >"$E2E_WORK/results"

cleanup() {
  local status=$?
  [ -n "${engine_pid:-}" ] && kill -TERM "$engine_pid" 2>/dev/null && wait "$engine_pid" 2>/dev/null
  reap run
  reap build
  local left
  left=$(findmnt -rn -o TARGET | grep -cF -- "$E2E_WORK/")
  [ "$left" -eq 0 ] || echo "e2e: $left mounts under $E2E_WORK could not be removed"
  [ "$left" -eq 0 ] && rm -rf "$E2E_WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# ---- 1. tools ---------------------------------------------------------------------------------------------------
log "tools (cached in $CACHE)"
mkdir -p "$CACHE"
if ! { "$ROOT/scripts/debian-packages" bookworm "$CACHE/docker" docker.io containerd runc tini mmdebstrap >/dev/null \
  && "$ROOT/scripts/debian-packages" trixie "$CACHE/compose" docker-compose >/dev/null; }; then
  fail "tools: docker.io (bookworm) and docker-compose (trixie) unpacked"
  exit 1
fi
export PATH="$CACHE/docker/usr/sbin:$CACHE/docker/usr/bin:$PATH"
export DOCKER_CONFIG=$E2E_WORK/docker-config DOCKER_BUILDKIT=0
mkdir -p "$DOCKER_CONFIG/cli-plugins"
ln -s "$CACHE/compose/usr/libexec/docker/cli-plugins/docker-compose" "$DOCKER_CONFIG/cli-plugins/docker-compose"
echo "# $(dockerd --version); $(docker compose version)"

# ---- 2 and 3. the build daemon, the stand-ins, the image ------------------------------------------------------
DOCKERD_WRAP="unshare --mount --propagation private" start_dockerd build --bridge=none || exit 1
export DOCKER_HOST="unix://$E2E_WORK/build/docker.sock"

NODE_VERSION=$(sed -n 's/^ARG NODE_VERSION=//p' "$ROOT/Dockerfile")
# The names the compose files use, so the stand-ins follow the files.
compose_image() { sed -n "s|^ *image: *\($1:[^ ]*\)$|\1|p" "$ROOT/deploy/compose/docker-compose.yml" | head -n 1; }
NODE_IMAGE=node:$NODE_VERSION-slim
CURL_IMAGE=$(compose_image curlimages/curl)
PAUSE_IMAGE=$(compose_image registry.k8s.io/pause)
standins_key=$( {
  echo "$NODE_IMAGE $CURL_IMAGE $PAUSE_IMAGE"
  cat "$E2E"/standins/* /etc/ssl/certs/ca-certificates.crt
} | cksum | cut -d' ' -f1)
standins_tar=$CACHE/standins-$standins_key.tar

if [ -s "$standins_tar" ]; then
  log "stand-ins: loading $standins_tar"
  docker load -q -i "$standins_tar" >/dev/null || { fail "stand-ins load from the cache"; exit 1; }
else
  t0=$(date +%s)
  if ! { bash "$E2E/standins.sh" "$CACHE" "$NODE_VERSION" "$NODE_IMAGE" "$CURL_IMAGE" "$PAUSE_IMAGE" \
    && docker save -o "$standins_tar.part" "$NODE_IMAGE" "$CURL_IMAGE" "$PAUSE_IMAGE" \
    && mv "$standins_tar.part" "$standins_tar"; }; then
    rm -f "$standins_tar.part"
    fail "stand-ins: $NODE_IMAGE, $CURL_IMAGE, $PAUSE_IMAGE built"
    exit 1
  fi
  find "$CACHE" -maxdepth 1 -name 'standins-*.tar' ! -path "$standins_tar" -delete
  log "stand-ins built in $(($(date +%s) - t0)) s"
fi

log "image: docker build --network host from the unmodified Dockerfile (legacy builder)"
t0=$(date +%s)
if (cd "$ROOT" && docker build --network host -q -t arc-imds-proxy:e2e . >"$E2E_WORK/build.log" 2>&1); then
  pass "the image builds from the unmodified Dockerfile ($(($(date +%s) - t0)) s)"
else
  fail "the image builds from the unmodified Dockerfile"
  tail -n 30 "$E2E_WORK/build.log"
  exit 1
fi
{
  echo "image_build_seconds $(($(date +%s) - t0))"
  echo "image_bytes $(docker image inspect -f '{{.Size}}' arc-imds-proxy:e2e)"
  echo "base_bytes $(docker image inspect -f '{{.Size}}' "$NODE_IMAGE")"
} >>"$E2E_WORK/figures"
docker save -o "$E2E_WORK/images.tar" arc-imds-proxy:e2e "$NODE_IMAGE" "$CURL_IMAGE" "$PAUSE_IMAGE" \
  || { fail "images saved for the engine"; exit 1; }
reap build
unset DOCKER_HOST

# ---- 4. the engine, in a private network and mount namespace ----------------------------------------------------
log "engine: private network and mount namespace"
E2E_ROOT=$ROOT NODE_IMAGE=$NODE_IMAGE timeout --signal=TERM 1200 \
  unshare --net --mount --propagation private bash "$E2E/engine.sh" &
engine_pid=$!
wait "$engine_pid"
engine_status=$?
engine_pid=
[ "$engine_status" -eq 0 ] || echo "# engine.sh exited $engine_status"

# ---- 5. nothing left behind ----------------------------------------------------------------------------------------
reap run
reap build
expect "nothing left running by either daemon" "" "$(leftovers run; leftovers build)"
expect "nothing left mounted under $E2E_WORK" "" "$(findmnt -rn -o TARGET | grep -F -- "$E2E_WORK/")"
expect "no cgroup left" "" "$(ls -d /sys/fs/cgroup/*/arc-imds-e2e-*-"${E2E_WORK##*.}" 2>/dev/null)"

# ---- figures and the count -------------------------------------------------------------------------------------
node "$E2E/fixtures/figures.mjs" "$E2E_WORK/figures"
echo "# e2e took $(($(date +%s) - started)) s (load average now: $(cut -d' ' -f1-3 /proc/loadavg))"
passed=$(grep -c '^PASS ' "$E2E_WORK/results")
failed=$(grep -c '^FAIL ' "$E2E_WORK/results")
[ "$engine_status" -eq 0 ] || [ "$failed" -gt 0 ] || failed=1
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
exit
}
