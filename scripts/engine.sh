#!/usr/bin/env bash
# Start (or reuse) the one container engine this project's tests and devnet talk to, and import the
# local test images into it. Idempotent: a re-run with the engine up only pings it (well under 1 s).
#
#   scripts/engine.sh          start/reuse the engine; prints DOCKER_HOST=<url> on stdout
#   scripts/engine.sh stop     stop the engine this script started (by the PID in its pid file)
#   scripts/engine.sh registry [NAME [USER PASSWORD_FILE]]
#                              start/reuse local registry NAME (default "local"; Debian docker-registry,
#                              distribution 2.8) on 127.0.0.1 and a port the kernel picks; prints
#                              REGISTRY=127.0.0.1:<port>. With USER and PASSWORD_FILE it requires HTTP
#                              basic auth for that user (htpasswd, bcrypt; plain HTTP, on loopback only)
#   scripts/engine.sh registry-stop [NAME]
#                              stop registry NAME by the PID in its pid file
#
# Why by hand: the dev machines have no systemd (shared/notes/containers.md §0), so nothing else
# starts an engine. Engine choice (DEEDMESH_ENGINE=auto|dockerd|podman, default auto):
#   1. an engine that already answers (ours, $DOCKER_HOST, /var/run/docker.sock, /run/podman/podman.sock)
#      is reused and never stopped by us;
#   2. Debian docker.io's dockerd: no rlimit or crun trouble, and it reports OOMKilled (notes §2.1);
#   3. podman's Docker-compatible service with runc + lowered ulimits (notes §1.2-1.3), which reports
#      OOM only as exit 137.
# State lives under $DEEDMESH_ENGINE_DIR (default /tmp/deedmesh-engine): data, socket, pid file,
# engine.env (DOCKER_HOST=...), log. No public registry is reachable here, so images are built from
# busybox-static and imported through the API; a registry of ours keeps its config, storage, pid
# file, registry.env (REGISTRY=...) and log under $DEEDMESH_ENGINE_DIR/registry-<NAME>. dockerd
# treats 127.0.0.0/8 as an insecure (plain HTTP) registry by default; the podman this script starts
# is given a registries.conf that does the same (notes §1.4).
set -euo pipefail

ENGINE_DIR=${DEEDMESH_ENGINE_DIR:-/tmp/deedmesh-engine}
SOCK=$ENGINE_DIR/docker.sock
PID_FILE=$ENGINE_DIR/engine.pid
URL_FILE=$ENGINE_DIR/engine.env
LOG=$ENGINE_DIR/engine.log
BUSYBOX_IMAGE_REPO=localhost/deedmesh-busybox
BUSYBOX_IMAGE_TAG=1
READY_TIMEOUT_S=30

say() { echo "engine.sh: $*" >&2; }
die() { say "error: $*"; exit 1; }

# --- the Engine API over curl (works the same for dockerd and podman's compat socket) -------------

# api URL METHOD PATH [curl args...] -> response body on stdout; fails on HTTP >= 400.
api() {
  local url=$1 method=$2 path=$3
  shift 3
  case $url in
    unix://*) curl -sS --fail-with-body --max-time 60 --unix-socket "${url#unix://}" -X "$method" "$@" "http://d$path" ;;
    tcp://*) curl -sS --fail-with-body --max-time 60 -X "$method" "$@" "http://${url#tcp://}$path" ;;
    *) return 2 ;;
  esac
}

answers() { [ "$(api "$1" GET /_ping --max-time 2 2>/dev/null)" = OK ]; }

# --- packages -------------------------------------------------------------------------------------

# need COMMAND DEBIAN_PACKAGE: install the package if the command is missing (root + apt only).
need() {
  command -v "$1" >/dev/null && return 0
  need_package "$2" "$1"
  command -v "$1" >/dev/null || die "$2 is installed but $1 is still not on PATH"
}

# need_package DEBIAN_PACKAGE [WHAT]: apt-get install it (updating the index only if the first try fails).
need_package() {
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    die "${2:-$1} is missing: install the package providing it ($1 on Debian), or run this script as root with apt-get"
  fi
  say "installing Debian package $1"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >>"$LOG" 2>&1; then
    apt-get update -qq >>"$LOG" 2>&1
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$1" >>"$LOG" 2>&1 \
      || die "apt-get install $1 failed; see $LOG"
  fi
}

# --- pid file -------------------------------------------------------------------------------------

# running PID: the process exists and has not exited. A process we detached with setsid is
# reparented to PID 1, which here (no systemd) reaps it only after a second or so: until then it
# is a zombie that `kill -0` still finds.
running() {
  kill -0 "$1" 2>/dev/null && [ "$(ps -o stat= -p "$1" 2>/dev/null | cut -c1)" != Z ]
}

# pid_alive [PID_FILE]: the process named in the pid file (default: the engine's) is running.
pid_alive() {
  local pid
  pid=$(cat "${1:-$PID_FILE}" 2>/dev/null) || return 1
  [ -n "$pid" ] && running "$pid"
}

# stop_pid PID_FILE WHAT: SIGTERM the PID in the pid file, wait, then SIGKILL; never matches
# processes by name. Removes the pid file.
stop_pid() {
  local pid_file=$1 what=$2 pid
  pid=$(cat "$pid_file" 2>/dev/null) || { say "no pid file at $pid_file: no $what of ours to stop"; return 0; }
  if [ -n "$pid" ] && running "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 400); do running "$pid" || break; sleep 0.05; done
    if running "$pid"; then say "pid $pid ignored SIGTERM for 20 s; sending SIGKILL"; kill -KILL "$pid"; fi
    say "stopped $what pid $pid"
  fi
  rm -f "$pid_file"
}

stop_engine() {
  stop_pid "$PID_FILE" engine
  rm -f "$URL_FILE" "$SOCK"
}

# --- starting an engine ---------------------------------------------------------------------------

wait_ready() {
  local url=$1
  for _ in $(seq 1 $((READY_TIMEOUT_S * 20))); do
    answers "$url" && return 0
    pid_alive || return 1
    sleep 0.05
  done
  return 1
}

start_dockerd() {
  need dockerd docker.io
  need runc runc
  # dockerd's own --pidfile makes it refuse a second daemon on the same state (it must not be our pid
  # file: dockerd 20.10 would find its own live pid there and refuse). setsid detaches it from the
  # caller's process group so a Ctrl-C in pytest does not take the engine down mid-teardown.
  setsid dockerd --data-root "$ENGINE_DIR/dockerd-data" --exec-root "$ENGINE_DIR/dockerd-exec" \
    --pidfile "$ENGINE_DIR/dockerd.pid" -H "unix://$SOCK" --shutdown-timeout 5 </dev/null >>"$LOG" 2>&1 &
  echo "$!" >"$PID_FILE"
}

start_podman() {
  need podman podman
  need runc runc
  # --init (which the CAR runner always asks for) needs catatonit, only a Recommends of podman.
  [ -x /usr/libexec/podman/catatonit ] || need_package catatonit
  # crun rejects this hybrid cgroup layout and root lacks CAP_SYS_RESOURCE for podman's default
  # nofile=1048576 (notes §1.2); podman caps its own NPROC at 32768, so ask for no more than that.
  cat >"$ENGINE_DIR/containers.conf" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
EOF
  # Pulls and pushes through the compat API need our registries marked insecure (notes §1.4). They
  # listen on 127.0.0.1 and a port picked at start, and the service reads this file once: the
  # location "127.0.0.1" also matches "127.0.0.1:<port>" in containers/image (a prefix ending at
  # ':'; its own comment calls that unintended, so check pulls after a podman upgrade).
  cat >"$ENGINE_DIR/registries.conf" <<'EOF'
unqualified-search-registries = ["docker.io"]
[[registry]]
location = "127.0.0.1"
insecure = true
EOF
  CONTAINERS_CONF=$ENGINE_DIR/containers.conf CONTAINERS_REGISTRIES_CONF=$ENGINE_DIR/registries.conf \
    setsid podman --root "$ENGINE_DIR/podman-root" --runroot "$ENGINE_DIR/podman-run" \
    system service --time=0 "unix://$SOCK" </dev/null >>"$LOG" 2>&1 &
  echo "$!" >"$PID_FILE"
}

# try_engine KIND: start it, wait for /_ping, import images, run a container; 0 if all worked.
try_engine() {
  local kind=$1 t0 t1
  rm -f "$SOCK"
  t0=$(date +%s%N)
  # In a subshell so that a failed install ("need" exits) falls through to the next engine kind; in the
  # state directory because the daemon keeps that working directory (podman's conmon drops an "oom"
  # file into it when a container is OOM-killed).
  (cd "$ENGINE_DIR" && "start_$kind") || return 1
  if ! wait_ready "unix://$SOCK"; then
    say "$kind did not answer /_ping within ${READY_TIMEOUT_S} s; last log lines:"
    tail -n 15 "$LOG" >&2
    stop_engine
    return 1
  fi
  t1=$(date +%s%N)
  say "$kind (pid $(cat "$PID_FILE")) answers on unix://$SOCK after $(((t1 - t0) / 1000000)) ms"
  if ! ensure_images "unix://$SOCK" || ! check_run "unix://$SOCK"; then
    say "$kind answers but cannot run a container; last log lines:"
    tail -n 15 "$LOG" >&2
    stop_engine
    return 1
  fi
}

# --- images and the smoke test --------------------------------------------------------------------

build_busybox_tar() {
  need busybox busybox-static
  local root=$ENGINE_DIR/busybox-rootfs applet
  rm -rf "$root"
  mkdir -p "$root"/{bin,etc,proc,sys,dev,tmp,www,root}
  cp "$(command -v busybox)" "$root/bin/busybox"
  # Skip the "busybox" applet itself: linking it would replace the binary with a symlink to itself.
  for applet in $(busybox --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$root/bin/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo '<h1>hello from deedmesh-busybox</h1>' >"$root/www/index.html"
  tar -C "$root" -cf "$ENGINE_DIR/busybox-rootfs.tar" .
}

ensure_images() {
  local url=$1 ref=$BUSYBOX_IMAGE_REPO:$BUSYBOX_IMAGE_TAG
  api "$url" GET "/images/$ref/json" -o /dev/null 2>/dev/null && return 0
  say "importing $ref"
  build_busybox_tar
  # changes = CMD ["/bin/sh"] and ENV PATH=/bin, URL-encoded (the image has no other config).
  local reply image_id
  reply=$(api "$url" POST "/images/create?fromSrc=-&repo=$BUSYBOX_IMAGE_REPO&tag=$BUSYBOX_IMAGE_TAG&changes=CMD%20%5B%22%2Fbin%2Fsh%22%5D&changes=ENV%20PATH%3D%2Fbin" \
    -H 'Content-Type: application/x-tar' --data-binary "@$ENGINE_DIR/busybox-rootfs.tar") \
    || { say "image import failed"; return 1; }
  echo "$reply" >>"$LOG"
  # podman 4.3's compat import ignores repo/tag and leaves the image untagged: tag it by id (a no-op on dockerd).
  image_id=$(echo "$reply" | grep -o 'sha256:[0-9a-f]\{64\}' | tail -n 1)
  [ -n "$image_id" ] || { say "image import returned no image id"; return 1; }
  api "$url" POST "/images/$image_id/tag?repo=$BUSYBOX_IMAGE_REPO&tag=$BUSYBOX_IMAGE_TAG" >>"$LOG" \
    || { say "tagging $image_id as $ref failed"; return 1; }
  api "$url" GET "/images/$ref/json" -o /dev/null || { say "$ref missing after import"; return 1; }
}

# check_run URL: create, start and wait for a throwaway container; a ping alone does not prove that
# the runtime, cgroups and rlimits work (notes §1.2 shows an engine that answers but cannot run).
check_run() {
  local url=$1 name id status
  name=deedmesh-engine-check-$$
  id=$(api "$url" POST "/containers/create?name=$name" -H 'Content-Type: application/json' \
    -d "{\"Image\":\"$BUSYBOX_IMAGE_REPO:$BUSYBOX_IMAGE_TAG\",\"Cmd\":[\"true\"]}" | sed -n 's/.*"Id":"\([0-9a-f]*\)".*/\1/p') \
    || { say "cannot create a container"; return 1; }
  [ -n "$id" ] || { say "container create returned no id"; return 1; }
  status=1
  if api "$url" POST "/containers/$id/start" >>"$LOG" 2>&1; then
    api "$url" POST "/containers/$id/wait" | grep -q '"StatusCode":0' && status=0
  fi
  api "$url" DELETE "/containers/$id?force=1" >/dev/null 2>&1 || true
  [ "$status" = 0 ] || say "the check container did not run to exit code 0"
  return "$status"
}

# --- a local registry -----------------------------------------------------------------------------

# registry_answers ADDR: /v2/ answers 200 (open) or 401 (auth required): a registry is up there.
registry_answers() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$1/v2/" 2>/dev/null) || return 1
  [ "$code" = 200 ] || [ "$code" = 401 ]
}

# registry_config DIR WITH_AUTH: distribution's config.yml for a registry kept in DIR.
registry_config() {
  local dir=$1 with_auth=$2
  cat <<EOF
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $dir/storage
  delete:
    enabled: true
http:
  # port 0: the kernel picks a free one; the log says which ("listening on 127.0.0.1:<port>")
  addr: 127.0.0.1:0
EOF
  if [ -n "$with_auth" ]; then
    printf 'auth:\n  htpasswd:\n    realm: deedmesh\n    path: %s/htpasswd\n' "$dir"
  fi
}

# start_registry [NAME [USER PASSWORD_FILE]]: reuse registry NAME if it runs with this config (and
# this password), else (re)start it; prints REGISTRY=127.0.0.1:<port>.
start_registry() {
  local name=${1:-local} user=${2:-} password_file=${3:-}
  [[ $name =~ ^[a-z0-9][a-z0-9-]*$ ]] || die "registry name must be lowercase letters, digits and '-', not '$name'"
  if [ -n "$user" ] && [ ! -r "$password_file" ]; then
    die "registry $name: password file '$password_file' is not readable"
  fi
  local dir=$ENGINE_DIR/registry-$name
  local pid_file=$dir/registry.pid env_file=$dir/registry.env log=$dir/registry.log config addr
  mkdir -p "$dir/storage"
  need docker-registry docker-registry
  [ -z "$user" ] || need htpasswd apache2-utils
  config=$(registry_config "$dir" "$user")
  if pid_alive "$pid_file" && [ "$config" = "$(cat "$dir/config.yml" 2>/dev/null)" ] \
    && { [ -z "$user" ] || htpasswd -vi "$dir/htpasswd" "$user" <"$password_file" >/dev/null 2>&1; }; then
    addr=$(sed -n 's/^REGISTRY=//p' "$env_file" 2>/dev/null)
    if [ -n "$addr" ] && registry_answers "$addr"; then
      echo "REGISTRY=$addr"
      return 0
    fi
  fi
  if pid_alive "$pid_file"; then stop_pid "$pid_file" "registry $name"; fi
  rm -f "$pid_file" "$env_file"
  echo "$config" >"$dir/config.yml"
  if [ -n "$user" ]; then
    # -i: the password from stdin, never on a command line; -B: bcrypt, the only hash distribution takes
    htpasswd -iBc "$dir/htpasswd" "$user" <"$password_file" 2>>"$log" || die "htpasswd failed; see $log"
  fi
  : >"$log"  # fresh, so the port read below is this run's
  # setsid, as for the engine: a Ctrl-C in the caller does not take the registry down mid-teardown.
  setsid docker-registry serve "$dir/config.yml" </dev/null >>"$log" 2>&1 &
  echo "$!" >"$pid_file"
  for _ in $(seq 1 $((READY_TIMEOUT_S * 20))); do
    addr=$(sed -n 's/.*listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$log" | tail -n 1)
    if [ -n "$addr" ] && registry_answers "$addr"; then
      echo "REGISTRY=$addr" >"$env_file"
      say "registry $name (pid $(cat "$pid_file")) serves http://$addr${user:+ (basic auth, user $user)}"
      echo "REGISTRY=$addr"
      return 0
    fi
    pid_alive "$pid_file" || break
    sleep 0.05
  done
  say "registry $name did not answer within ${READY_TIMEOUT_S} s; last log lines:"
  tail -n 15 "$log" >&2
  stop_pid "$pid_file" "registry $name"
  return 1
}

stop_registry() {
  local name=${1:-local}
  stop_pid "$ENGINE_DIR/registry-$name/registry.pid" "registry $name"
  rm -f "$ENGINE_DIR/registry-$name/registry.env"
}

# --- main -----------------------------------------------------------------------------------------

finish() {
  echo "DOCKER_HOST=$1" >"$URL_FILE"
  echo "DOCKER_HOST=$1"
}

main() {
  mkdir -p "$ENGINE_DIR"
  command -v curl >/dev/null || need curl curl
  case ${1:-start} in
    start) ;;
    stop) stop_engine; return 0 ;;
    registry) shift; start_registry "$@"; return ;;
    registry-stop) shift; stop_registry "$@"; return 0 ;;
    *) die "usage: $0 [start | stop | registry [NAME [USER PASSWORD_FILE]] | registry-stop [NAME]]" ;;
  esac

  local url candidates=("unix://$SOCK")
  [ -n "${DOCKER_HOST:-}" ] && candidates+=("$DOCKER_HOST")
  candidates+=(unix:///var/run/docker.sock unix:///run/podman/podman.sock)
  for url in "${candidates[@]}"; do
    if answers "$url"; then
      ensure_images "$url" || die "the engine at $url answers but the test images could not be imported"
      finish "$url"
      return 0
    fi
  done

  # Nothing answers. Our own pid file may still name a live, wedged engine: stop it before starting anew.
  if pid_alive; then say "engine pid $(cat "$PID_FILE") does not answer; stopping it"; stop_engine; fi
  rm -f "$PID_FILE"

  local kinds
  case ${DEEDMESH_ENGINE:-auto} in
    auto) kinds=(dockerd podman) ;;
    dockerd | podman) kinds=("$DEEDMESH_ENGINE") ;;
    *) die "DEEDMESH_ENGINE must be auto, dockerd or podman, not '$DEEDMESH_ENGINE'" ;;
  esac
  local kind
  for kind in "${kinds[@]}"; do
    if try_engine "$kind"; then finish "unix://$SOCK"; return 0; fi
  done
  die "no container engine could be started (tried: ${kinds[*]}); see $LOG"
}

main "$@"
