#!/usr/bin/env bash
# Build the sidecar's image with podman or docker, whichever is there.
#
#   deploy/image/build.sh IMAGE [BASE_IMAGE]
#
# BASE_IMAGE defaults to the official python:3.11-slim-bookworm. BASE_IMAGE=local
# first makes a Debian bookworm base from Debian's archive with mmdebstrap (for
# machines that reach no image registry) and builds on that.
# With podman, a containers.conf made here is used (CONTAINERS_CONF): runc as
# the runtime, cgroupfs, file events, and ulimits the host allows.
set -euo pipefail
cd "$(dirname "$0")/../.."

image=${1:?usage: deploy/image/build.sh IMAGE [BASE_IMAGE]}
base=${2:-python:3.11-slim-bookworm}
work=.build/image
mkdir -p "$work"

die() { echo "image: $*" >&2; exit 1; }

if command -v podman >/dev/null 2>&1; then
  engine=podman
  command -v runc >/dev/null 2>&1 || die "runc is missing (apt-get install runc): podman's default runtime, crun, refuses this host's hybrid cgroup layout"
  nofile=$(ulimit -Hn)
  nproc=$(ulimit -Hu)
  pid_max=$(cat /proc/sys/kernel/pid_max)
  [ "$nproc" = unlimited ] && nproc=$pid_max
  [ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
  cat > "$work/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
  export CONTAINERS_CONF="$PWD/$work/containers.conf"
elif command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  engine=docker
else
  die "neither podman nor a running docker engine is here (apt-get install podman runc)"
fi

if [ "$base" = local ]; then
  [ "$engine" = podman ] || die "BASE_IMAGE=local is made for podman"
  command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap is missing (apt-get install mmdebstrap)"
  sources=/etc/apt/sources.list.d/debian.sources
  [ -f "$sources" ] || sources=/etc/apt/sources.list
  base=localhost/sidecar-base:bookworm
  if ! podman image exists "$base"; then
    echo "image: making the Debian bookworm base from $sources"
    mmdebstrap --quiet --variant=minbase \
      --include=python3,python3-venv,python-is-python3,ca-certificates \
      --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
      bookworm "$work/base.tar" "$sources"
    podman import "$work/base.tar" "$base" >/dev/null
    rm -f "$work/base.tar"
  fi
fi

args=(build -f deploy/Dockerfile -t "$image" --build-arg "BASE_IMAGE=$base")
if [ "$engine" = podman ]; then
  # --format docker keeps the HEALTHCHECK; the machine's CA bundle is mounted
  # (not copied) so pip in the build trusts what the machine trusts.
  args+=(--format docker)
  for bundle in /etc/ssl/certs/ca-certificates.crt; do
    [ -f "$bundle" ] && args+=(-v "$bundle:$bundle:ro")
  done
fi
echo "image: $engine ${args[*]} ."
"$engine" "${args[@]}" .
echo "image: built $image"
