# shellcheck shell=bash
# Shared by test/e2e/run.sh and test/e2e/engine.sh (sourced, not run). Needs E2E_WORK (this run's scratch
# directory) and E2E_BIN (the unpacked docker.io packages' usr/bin and usr/sbin, and the compose plugin).

# ---- results: one line per check in $E2E_WORK/results ("PASS name" / "FAIL name"), summed by run.sh --------
pass() {
  echo "PASS $*" >>"$E2E_WORK/results"
  echo "ok - $*"
}
fail() {
  echo "FAIL $*" >>"$E2E_WORK/results"
  echo "not ok - $*"
}
# check NAME COMMAND...: passes when COMMAND exits 0; its output is shown only when it fails.
check() {
  local name=$1 out
  shift
  if out=$("$@" 2>&1); then
    pass "$name"
  else
    fail "$name"
    printf '    %s\n' "${out//$'\n'/$'\n'    }" | tail -n 20
  fi
}
# expect NAME WANT GOT: passes when the two strings are equal.
expect() {
  if [ "$2" = "$3" ]; then
    pass "$1"
  else
    fail "$1"
    echo "    want: $2"
    echo "    got:  $3"
  fi
}

log() { echo "# $(date -u +%H:%M:%S) $*"; }
now_ms() { date +%s%3N; }

# retry SECONDS COMMAND...: runs COMMAND every half second until it exits 0, at most SECONDS seconds.
retry() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

# ---- daemons: each has its own directory E2E_WORK/NAME with data-root, exec-root, pidfile and socket -------
# start_dockerd NAME [ARG...]: starts dockerd (its own containerd as a child), waits until it answers.
# Prefix it with a wrapper through DOCKERD_WRAP (e.g. "unshare --mount --propagation private").
start_dockerd() {
  local name=$1 dir="$E2E_WORK/$1"
  shift
  mkdir -p "$dir/data" "$dir/exec"
  # shellcheck disable=SC2086 # DOCKERD_WRAP is a command prefix, split on purpose
  ${DOCKERD_WRAP:-} dockerd \
    --data-root "$dir/data" --exec-root "$dir/exec" --pidfile "$dir/dockerd.pid" -H "unix://$dir/docker.sock" \
    --storage-driver overlay2 --iptables=false --ip6tables=false --ip-masq=false --ip-forward=false \
    --cgroup-parent "$(cgroup_parent "$name")" --log-level warn "$@" >>"$dir/dockerd.log" 2>&1 &
  echo $! >"$dir/launcher.pid"
  DOCKER_HOST="unix://$dir/docker.sock" retry 90 docker version || {
    echo "dockerd $name did not start; its log:"
    tail -n 30 "$dir/dockerd.log"
    return 1
  }
}

# stop_dockerd NAME: SIGTERM (dockerd stops its containers, then its containerd), SIGKILL after 60 s.
stop_dockerd() {
  local dir="$E2E_WORK/$1" pid
  pid=$(cat "$dir/launcher.pid" 2>/dev/null) || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
    wait "$pid" 2>/dev/null
  fi
  rm -f "$dir/launcher.pid"
}

cgroup_parent() { echo "arc-imds-e2e-$1-${E2E_WORK##*.}"; }

# leftovers NAME: processes that still belong to daemon NAME (its containerd, shims, containers): those whose
# command line names its directory (unique: mktemp), and those in its cgroups. Prints their PIDs.
leftovers() {
  local dir="$E2E_WORK/$1" cg pid
  cg=$(cgroup_parent "$1")
  {
    for pid in /proc/[0-9]*; do
      pid=${pid#/proc/}
      [ "$pid" = "$$" ] && continue
      { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF -- "$dir/" && echo "$pid"
    done
    cat /sys/fs/cgroup/*/"$cg"/*/cgroup.procs /sys/fs/cgroup/*/"$cg"/cgroup.procs 2>/dev/null
  } | sort -un
}

# reap NAME: stop daemon NAME and whatever it left, remove its cgroups, unmount what it left mounted here.
reap() {
  local name=$1 pid m
  stop_dockerd "$name"
  for pid in $(leftovers "$name"); do kill -KILL "$pid" 2>/dev/null; done
  sleep 0.2
  find /sys/fs/cgroup/*/"$(cgroup_parent "$name")" -depth -type d -exec rmdir {} + 2>/dev/null
  # dockerd 20.10 leaves an nsfs mount (exec-root/netns/default) and may leave overlays: unmount, deepest first.
  findmnt -rn -o TARGET | grep -F -- "$E2E_WORK/$name/" | sort -r | while read -r m; do umount -l "$m"; done
  return 0
}
