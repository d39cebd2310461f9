#!/usr/bin/env bash
# Runs inside a private network and mount namespace (run.sh starts it with `unshare --net --mount`): this
# namespace's lo is the only interface, so nothing here can reach 169.254.169.254 or any address outside, and
# /var/opt is a tmpfs, so the HIMDS key directory here is not the machine's. A docker daemon of its own runs the
# images run.sh built, and both compose files, unmodified.
set -uo pipefail
# One compound command, read whole before it runs: editing this file during a run cannot derail the run.
{
ROOT=$E2E_ROOT
# shellcheck source=test/e2e/lib.sh
# shellcheck source=lib.sh
. "$ROOT/test/e2e/lib.sh"
COMPOSE_DIR=$ROOT/deploy/compose
IMAGE=arc-imds-proxy:e2e
HIMDS_GID=4242 # a gid that exists nowhere: numeric, as deploy/README says
TOKENS=/var/opt/azcmagent/tokens
REBOOTS=${ARC_IMDS_E2E_REBOOTS:-2}
TOKEN_URL='http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F'
# Another resource, so that a request for it can only be answered through the relay (no cache has it yet).
other_url() { echo "http://169.254.169.254/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fe2e-$1.example%2F"; }

ip link set lo up
mount -t tmpfs -o mode=0755 tmpfs /var/opt
mkdir -p "$TOKENS"
chown "0:$HIMDS_GID" "$TOKENS" && chmod 0770 "$TOKENS"
# Proof, for the log, that this namespace has no way out.
echo "# interfaces here: $(ip -o link show | awk -F': ' '{ print $2 }' | tr '\n' ' ')"

start_dockerd run --bridge=none || exit 1
export DOCKER_HOST="unix://$E2E_WORK/run/docker.sock"
docker load -q -i "$E2E_WORK/images.tar" >/dev/null || { fail "images load into the engine"; exit 1; }
# docker-compose.dev.yml builds its image (`build:`); compose names what it builds PROJECT-SERVICE. This
# engine has no network to build with, so the image built from the same Dockerfile gets those names, and
# compose runs with --no-build --pull never: it must find everything here.
for svc in himds netns-setup relay sidecar; do docker tag "$IMAGE" "arc-imds-dev-$svc"; done
# The image is labelled MIT: it carries that licence, and the licences of the packages bundled into dist/.
# shellcheck disable=SC2016 # expanded by the container's shell
expect "the image carries its LICENSE and the bundled packages' licences" "MIT License|undici prom-client pino lru-cache" \
  "$(docker run --rm --network none --entrypoint sh "$IMAGE" -c 'printf "%s|" "$(head -n 1 /app/LICENSE)"
    for p in undici prom-client pino lru-cache; do grep -q "^$p@" /app/dist/THIRD-PARTY-LICENSES.txt && printf "%s " "$p"; done' | sed 's/ $//')"

# ---- helpers --------------------------------------------------------------------------------------------------
dc() { docker compose -f "$FILE" "$@"; }
cid() { dc ps -a -q "$1"; }
pid_of() { docker inspect -f '{{.State.Pid}}' "$(cid "$1")"; }
status_field() { awk -v f="$2:" '$1 == f { $1 = ""; sub(/^ /, ""); print }' "/proc/$1/status"; }
# A token request from the app container; prints the body (curl fails on a non-2xx status).
app_get() { dc exec -T app curl -sS --max-time 15 --fail-with-body -H 'Metadata: true' "$1"; }
# node -e in one of our containers (they have node; the app has only curl and sh).
in_node() { local svc=$1; shift; dc exec -T "$svc" node -e "$@"; }
metrics_of() { in_node "$1" "fetch('http://127.0.0.1:9464/metrics').then(r => r.text()).then(t => process.stdout.write(t))"; }
# metric_sum TEXT NAME [LABEL=\"VALUE\"...]: the sum of NAME's samples that have every label given.
metric_sum() {
  local text=$1 name=$2
  shift 2
  awk -v m="$name" -v want="$*" '
    index($0, m "{") == 1 || index($0, m " ") == 1 {
      n = split(want, w, " "); for (i = 1; i <= n; i++) if (index($1, w[i]) == 0) next
      s += $NF }
    END { print s + 0 }' <<<"$text"
}
json_field() { node -e 'let s = ""; process.stdin.on("data", d => s += d).on("end", () => process.stdout.write(String(JSON.parse(s)[process.argv[1]] ?? "")))' "$1"; }
health() { docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$1"; }
is_healthy() { [ "$(health "$(cid "$1")")" = healthy ]; }
tokens_in_app_log() { dc logs app 2>/dev/null | grep -c '"access_token":"<redacted>"'; }
# For retry, which runs its command again each time (so no "$(...)" in its arguments):
app_printed() { [ "$(tokens_in_app_log)" -ge "$1" ]; }
# The app (whichever container it is now) printed a token since unix time $1.
app_printed_since() { dc logs --since "$1" app 2>/dev/null | grep -q '"access_token":"<redacted>"'; }
health_is() { [ "$(health "$1")" = "$2" ]; }
all_up() {
  local s
  for s in "$@"; do [ "$(docker inspect -f '{{.State.Status}}' "$(cid "$s")" 2>/dev/null)" = running ] || return 1; done
}

# states WANT...: each service's state (and health, and exit code when it exited), as compose reports them.
states() {
  dc ps -a --format '{{.Service}} {{.State}} {{.Health}} {{.ExitCode}}' | awk '
    { h = ($3 == "" || $3 ~ /^[0-9]+$/) ? "" : $3; code = $NF
      printf "%s:%s%s%s\n", $1, $2, (h == "" ? "" : "/" h), ($2 == "exited" ? "(" code ")" : "") }' | sort | tr '\n' ' '
}

# Engine events (containers only) into events-PHASE.json, from SINCE (unix seconds; the daemon replays what it
# has seen since it started) until the daemon stops or stop_events.
start_events() {
  stop_events
  docker events --since "$2" --format '{{json .}}' --filter type=container >"$E2E_WORK/events-$1.json" 2>/dev/null &
  events_pid=$!
  sleep 0.5
}
stop_events() {
  [ -n "${events_pid:-}" ] || return 0
  kill "$events_pid" 2>/dev/null
  wait "$events_pid" 2>/dev/null
  events_pid=
}
# order LABEL PHASE: the start order the compose file's depends_on asks for, checked on that phase's events.
order() {
  local verdict rest
  while read -r verdict rest; do
    if [ "$verdict" = PASS ]; then pass "$1: $rest"; else fail "$1: $rest"; fi
  done < <(node "$ROOT/test/e2e/fixtures/order.mjs" "$FILE" "$E2E_WORK/events-$2.json" || echo "FAIL the engine's events could be read")
}
# No service's health is still "starting".
settled() { ! dc ps -a --format '{{.Health}}' | grep -q starting; }

# ---- one compose file, start to finish ------------------------------------------------------------------------
scenario() {
  local kind=$1 services want_states t0 ms body token
  FILE=$COMPOSE_DIR/$2
  PROJECT=$(sed -n 's/^name: *//p' "$FILE")
  log "$kind: $2 (project $PROJECT)"
  if [ "$kind" = production ]; then
    export HIMDS_GID ARC_IMDS_IMAGE=$IMAGE
    RUN_VOLUME=arc-imds-run
    services="netns relay sidecar app"
    want_states="app:running netns-setup:exited(0) netns:running relay:running/healthy sidecar:running/healthy "
    # The host's HIMDS: the emulator, on 127.0.0.1:40342 of this namespace (compose's network_mode: host), as
    # uid 65532 with the himds gid, writing key files root would own on a real host into the tokens directory.
    # --restart always: like the Arc agent's service, it is back after a reboot.
    docker run -d --name e2e-host-himds --restart always --network host --user "65532:$HIMDS_GID" --read-only --cap-drop ALL \
      --no-healthcheck -v "$TOKENS:$TOKENS" "$IMAGE" emulate-himds --listen 127.0.0.1:40342 --tokens-dir "$TOKENS" >/dev/null
    check "$kind: the host's HIMDS (emulator) answers on 127.0.0.1:40342" \
      retry 30 curl -sf -o /dev/null http://127.0.0.1:40342/agentstatus
  else
    unset ARC_IMDS_IMAGE
    RUN_VOLUME=${PROJECT}_arc-imds-run
    services="himds netns relay sidecar app"
    want_states="app:running himds:running/healthy netns-setup:exited(0) netns:running relay:running/healthy sidecar:running/healthy "
  fi

  start_events "$kind-up" "$(date +%s)"

  # -- up, and the time to the first token the app prints
  t0=$(now_ms)
  check "$kind: compose up -d exits 0" dc up -d --no-build --pull never
  if retry 180 app_printed 1; then
    ms=$(($(now_ms) - t0))
    pass "$kind: the app prints a token (${ms} ms after up)"
    echo "up_to_token_ms_$kind $ms" >>"$E2E_WORK/figures"
  else
    fail "$kind: the app prints a token"
    dc logs --tail 20
  fi
  expect "$kind: service states" "$want_states" "$(states)"
  order "$kind: up" "$kind-up"

  # -- the token, from 169.254.169.254 in the app's namespace
  body=$(app_get "$TOKEN_URL")
  token=$(json_field access_token <<<"$body")
  check "$kind: a token from 169.254.169.254 in the app" test -n "$token"
  expect "$kind: token_type" Bearer "$(json_field token_type <<<"$body")"
  expect "$kind: resource echoed" "https://management.azure.com/" "$(json_field resource <<<"$body")"
  expect "$kind: without Metadata: true, IMDS's 400" 400 \
    "$(dc exec -T app curl -s -o /dev/null -w '%{http_code}' --max-time 15 "$TOKEN_URL")"

  # -- the key-file challenge: HIMDS demands it, the relay answers it, the sidecar never sees one
  local challenge relay_metrics sidecar_metrics
  challenge=$(in_node relay "fetch('http://127.0.0.1:40342/metadata/identity/oauth2/token?api-version=2020-06-01&resource=https%3A%2F%2Fmanagement.azure.com%2F', { headers: { Metadata: 'true' } }).then(r => console.log(r.status, r.headers.get('www-authenticate')))")
  check "$kind: HIMDS answers a keyless request with 401 and a key file in $TOKENS" \
    grep -Eq "^401 Basic realm=$TOKENS/[^/]+\.key$" <<<"$challenge"
  relay_metrics=$(metrics_of relay)
  sidecar_metrics=$(metrics_of sidecar)
  check "$kind: the relay got the challenge (401) from HIMDS" \
    test "$(metric_sum "$relay_metrics" arc_imds_upstream_requests_total 'leg="challenge"' 'outcome="401"')" -ge 1
  check "$kind: the relay answered it (token leg, 2xx)" \
    test "$(metric_sum "$relay_metrics" arc_imds_upstream_requests_total 'leg="token"' 'outcome="2xx"')" -ge 1
  expect "$kind: no challenge failure at the relay" 0 "$(metric_sum "$relay_metrics" arc_imds_challenge_failures_total)"
  check "$kind: the sidecar's upstream (the relay) answers at once (2xx)" \
    test "$(metric_sum "$sidecar_metrics" arc_imds_upstream_requests_total 'leg="challenge"' 'outcome="2xx"')" -ge 1
  expect "$kind: the sidecar got no challenge" 0 \
    "$(metric_sum "$sidecar_metrics" arc_imds_upstream_requests_total 'leg="token"')"
  expect "$kind: only the relay mounts the key directory" "relay" "$(
    for s in $services netns-setup; do
      docker inspect -f '{{range .Mounts}}{{.Destination}} {{end}}' "$(cid "$s")" | grep -qw "$TOKENS" && [ "$s" != himds ] && echo "$s"
    done | tr '\n' ' ' | sed 's/ $//')"

  # -- users, capabilities, no-new-privileges, read-only roots: from the kernel, /proc/PID of each process
  local s pid want_user
  for s in $services; do
    pid=$(pid_of "$s")
    case $s in
      netns) want_user=65535 ;;
      *) want_user=65532 ;;
    esac
    expect "$kind: $s runs as uid $want_user" "$want_user $want_user $want_user $want_user" "$(status_field "$pid" Uid | tr -s '\t ' ' ')"
    expect "$kind: $s has no capability" "0000000000000000 0000000000000000 0000000000000000" \
      "$(status_field "$pid" CapPrm) $(status_field "$pid" CapEff) $(status_field "$pid" CapBnd)"
    expect "$kind: $s has no-new-privileges" 1 "$(status_field "$pid" NoNewPrivs)"
    expect "$kind: $s has a read-only root" ro "$(awk '$5 == "/" { split($6, o, ","); print o[1] }' "/proc/$pid/mountinfo")"
  done
  if [ "$kind" = production ]; then
    check "$kind: the relay has the himds gid $HIMDS_GID" grep -qw "$HIMDS_GID" <<<"$(status_field "$(pid_of relay)" Groups)"
  fi
  check "$kind: writing to the app's root fails: read-only file system" \
    sh -c "docker exec $(cid app) sh -c ': >/e2e-probe' 2>&1 | grep -q 'Read-only file system'"
  # netns-setup has exited; run its exact service again (idempotent) and once more to show what it holds.
  check "$kind: netns-setup runs again and exits 0 (idempotent)" dc run --rm --no-deps -T netns-setup
  expect "$kind: netns-setup holds NET_ADMIN and nothing else, as root" "0 0000000000001000 0000000000001000" "$(
    # shellcheck disable=SC2016 # expanded by the container's shell, not this one
    dc run --rm --no-deps -T --entrypoint sh netns-setup -c \
      'echo $(id -u) $(grep ^CapEff /proc/self/status | cut -f2) $(grep ^CapBnd /proc/self/status | cut -f2)' | tr -d '\r')"
  expect "$kind: 169.254.169.254/32 is on lo in the app's namespace" "169.254.169.254/32" \
    "$(nsenter -t "$(pid_of netns)" -n ip -o -4 addr show dev lo | awk '{ print $4 }' | grep -F 169.254.169.254)"

  # -- the socket: mode, owner, and who may connect
  expect "$kind: the relay's socket" "660 65532 65532 socket" \
    "$(dc exec -T relay stat -c '%a %u %g %F' /run/arc-imds/imds.sock)"
  local as want got
  for as in 65532:65532/200 1000:65532/200 65532:1000/200 1000:1000/EACCES; do
    want=${as#*/}
    got=$(docker run --rm --network none --read-only --cap-drop ALL --no-healthcheck --user "${as%/*}" \
      -v "$RUN_VOLUME:/run/arc-imds:ro" --entrypoint node "$IMAGE" -e "
        require('node:http').get({ socketPath: '/run/arc-imds/imds.sock', headers: { Metadata: 'true' },
          path: '/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https%3A%2F%2Fmanagement.azure.com%2F' },
          (r) => { console.log(r.statusCode); process.exit(0); }).on('error', (e) => { console.log(e.code); process.exit(0); });")
    expect "$kind: uid:gid ${as%/*} connecting to the socket gets $want" "$want" "$got"
  done

  # -- the image's own HEALTHCHECK (the compose files replace or disable it): healthy when /readyz can mint a
  # token, unhealthy when it cannot. Only the timings are overridden.
  expect "$kind: the image's HEALTHCHECK" '[CMD node /app/dist/cli.js probe]' \
    "$(docker image inspect -f '{{.Config.Healthcheck.Test}}' "$IMAGE")"
  local good bad
  good=$(docker run -d --network none --read-only --cap-drop ALL -v "$RUN_VOLUME:/run/arc-imds:ro" \
    --health-interval 2s --health-start-period 1s --health-retries 2 "$IMAGE" \
    serve --listen 127.0.0.1:8080 --upstream unix:/run/arc-imds/imds.sock)
  bad=$(docker run -d --network none --read-only --cap-drop ALL -v "$RUN_VOLUME:/run/arc-imds:ro" \
    --health-interval 2s --health-start-period 1s --health-retries 2 "$IMAGE" \
    serve --listen 127.0.0.1:8080 --upstream unix:/run/arc-imds/absent.sock)
  check "$kind: HEALTHCHECK: healthy in front of the relay's socket" retry 60 health_is "$good" healthy
  check "$kind: HEALTHCHECK: unhealthy in front of no socket" retry 60 health_is "$bad" unhealthy
  docker rm -f "$good" "$bad" >/dev/null

  # -- real Azure SDK clients, in the app's network namespace, with their defaults (no endpoint configured)
  local sdk
  sdk=$(docker run --rm --network "container:$(cid netns)" --user 65532:65532 --read-only --cap-drop ALL \
    --security-opt no-new-privileges:true -e HOME=/tmp --tmpfs /tmp \
    -v "$ROOT/node_modules:/e2e/node_modules:ro" -v "$ROOT/test/e2e/fixtures/sdk-clients.mjs:/e2e/sdk-clients.mjs:ro" \
    "$NODE_IMAGE" node /e2e/sdk-clients.mjs 2>&1)
  printf '%s\n' "$sdk" | while IFS= read -r line; do printf '    %s\n' "$line"; done
  check "$kind: @azure/identity ManagedIdentityCredential gets a token" grep -qx 'azure-identity ok' <<<"$sdk"
  check "$kind: @azure/identity DefaultAzureCredential gets a token" grep -qx 'default-credential ok' <<<"$sdk"
  check "$kind: msal-node ManagedIdentityApplication (DefaultToImds) gets a token" grep -qx 'msal-node ok' <<<"$sdk"

  # -- relay restart: the sidecar serves what it has cached meanwhile, and is not restarted
  local sidecar_started cached
  sidecar_started=$(docker inspect -f '{{.State.StartedAt}} {{.RestartCount}}' "$(cid sidecar)")
  check "$kind: relay stops" dc stop relay
  cached=$(app_get "$TOKEN_URL" | json_field access_token)
  expect "$kind: relay down: the sidecar serves the cached token" "$token" "$cached"
  check "$kind: relay down: an uncached resource fails (the cache, not the relay, answered)" \
    sh -c "! docker exec $(cid app) curl -sf --max-time 20 -H 'Metadata: true' '$(other_url down)' >/dev/null"
  check "$kind: relay starts again" dc start relay
  check "$kind: relay healthy again" retry 90 is_healthy relay
  check "$kind: relay back: an uncached resource gets a token through the same sidecar" \
    retry 30 sh -c "docker exec $(cid app) curl -sf --max-time 10 -H 'Metadata: true' '$(other_url back)' | grep -q access_token"
  expect "$kind: the sidecar was not restarted" "$sidecar_started" \
    "$(docker inspect -f '{{.State.StartedAt}} {{.RestartCount}}' "$(cid sidecar)")"

  # -- reboot: the daemon stops (and with it every container) and starts; then the documented recovery
  local i booted
  for i in $(seq "$REBOOTS"); do
    log "$kind: reboot $i of $REBOOTS"
    stop_events
    stop_dockerd run
    booted=$(date +%s)
    start_dockerd run --bridge=none || { fail "$kind: reboot $i: the daemon starts again"; break; }
    start_events "$kind-reboot-$i" "$booted"
    if [ "$kind" = production ]; then
      check "$kind: reboot $i: the host's HIMDS is back" retry 60 curl -sf -o /dev/null http://127.0.0.1:40342/agentstatus
    fi
    sleep "${ARC_IMDS_E2E_BOOT_SETTLE:-5}" # let the restart policies act first, as at a real boot
    check "$kind: reboot $i: the documented recovery exits 0" recover
    # shellcheck disable=SC2086 # one argument per service
    check "$kind: reboot $i: every service is back" retry 120 all_up $services
    retry 120 settled
    expect "$kind: reboot $i: service states" "$want_states" "$(states)"
    check "$kind: reboot $i: a token from 169.254.169.254 in the app" sh -c "docker exec $(cid app) curl -sf --max-time 15 -H 'Metadata: true' '$TOKEN_URL' | grep -q access_token"
    check "$kind: reboot $i: the app prints a token again" retry 120 app_printed_since "$booted"
    order "$kind: reboot $i" "$kind-reboot-$i"
  done

  # -- RSS of the relay and the sidecar, inside their containers, after all of the above
  echo "relay_rss_kb_$kind $(status_field "$(pid_of relay)" VmRSS | awk '{ print $1 }')" >>"$E2E_WORK/figures"
  echo "sidecar_rss_kb_$kind $(status_field "$(pid_of sidecar)" VmRSS | awk '{ print $1 }')" >>"$E2E_WORK/figures"

  # -- graceful stop: every service stops on SIGTERM, at once, with status 0
  t0=$(now_ms)
  check "$kind: compose stop exits 0" dc stop
  ms=$(($(now_ms) - t0))
  echo "stop_ms_$kind $ms" >>"$E2E_WORK/figures"
  check "$kind: compose stop takes under 8 s (no 10 s SIGKILL timeout): ${ms} ms" test "$ms" -lt 8000
  for s in $services; do
    expect "$kind: $s exits 0 on SIGTERM" 0 "$(docker inspect -f '{{.State.ExitCode}}' "$(cid "$s")")"
  done

  # -- down -v leaves nothing
  check "$kind: compose down -v exits 0" dc down -v
  expect "$kind: no container left" "" "$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT")"
  expect "$kind: no volume left" "" "$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  expect "$kind: no network left" "" "$(docker network ls -q --filter "label=com.docker.compose.project=$PROJECT")"
  [ "$kind" = production ] && docker rm -f e2e-host-himds >/dev/null

  stop_events
}

# The documented recovery after a reboot (deploy/README.md, "Docker Compose"), exactly, but for --no-build and
# --pull never (this engine has no network to build or pull with).
# ARC_IMDS_E2E_RECOVERY replaces it (e.g. "up -d", the old advice) to see what it does.
recover() {
  if [ -n "${ARC_IMDS_E2E_RECOVERY:-}" ]; then
    # shellcheck disable=SC2086 # compose arguments, split on purpose
    dc $ARC_IMDS_E2E_RECOVERY --no-build --pull never
  else
    dc up -d --force-recreate --no-build --pull never
  fi
}

scenario development docker-compose.dev.yml
scenario production docker-compose.yml

log "engine: stopping"
stop_dockerd run
exit
}
