#!/usr/bin/env bash
# Build the project image (deploy/Dockerfile) after checking, before anything is built,
# that the engine answers, the base image is here (or pullable) and the wheelhouse, if
# any, is complete.
#   deploy/docker/build-image.sh [--base IMAGE] [--tag TAG]
# Defaults: --base $FEDATTACK_BASE, else python:3.11-slim-bookworm where it is here or a
# registry serves it, else fedattack-base:bookworm (made by base-image.sh from Debian
# packages if it is not here yet); --tag fedattack:latest; the wheelhouse is
# deploy/docker/wheelhouse/ (fedattack deploy wheelhouse).
set -euo pipefail
. "$(dirname "$0")/common.sh"
cd "$(dirname "$0")/../.."
BASE="${FEDATTACK_BASE:-}" TAG=fedattack:latest
while [ $# -gt 0 ]; do
  case "$1" in
    --base) BASE="$2"; shift 2 ;;
    --tag) TAG="$2"; shift 2 ;;
    *) die "unknown option $1 (--base IMAGE, --tag TAG)" ;;
  esac
done
need_engine
have() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }
if [ -z "$BASE" ]; then
  BASE=python:3.11-slim-bookworm
  if ! have "$BASE" && ! timeout 60 "$DOCKER" pull -q "$BASE" >/dev/null 2>&1; then
    echo "no registry serves $BASE: the base from Debian packages (deploy/docker/base-image.sh)"
    BASE=fedattack-base:bookworm
    have "$BASE" || deploy/docker/base-image.sh "$BASE"
  fi
fi
if ! have "$BASE"; then
  timeout 120 "$DOCKER" pull -q "$BASE" >/dev/null 2>&1 \
    || die "base image $BASE is not on this host and cannot be pulled: run deploy/docker/base-image.sh (then --base fedattack-base:bookworm)"
fi
WH=deploy/docker/wheelhouse
if ls "$WH"/*.whl >/dev/null 2>&1; then
  # the host's Python (3.11+) with this checkout on its path: no installed project needed
  "${PYTHON:-python3}" -m deploy.docker.wheelhouse "$WH" || exit 1
  echo "installing from the wheelhouse $WH (no network)"
else
  echo "no wheelhouse in $WH: the build installs from the package index"
fi
start=$(date +%s)
DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain --build-arg BASE="$BASE" \
  -f deploy/Dockerfile -t "$TAG" . || die "docker build failed (output above)"
# the build this tag replaced is now an untagged image of several GB: remove it (only this
# project's, by the Dockerfile's label) so that rebuilds do not fill the disk
"$DOCKER" image prune -f --filter "label=org.opencontainers.image.title=fedattack" >/dev/null || true
echo "image $TAG built in $(( $(date +%s) - start ))s: $("$DOCKER" image inspect -f '{{.Size}}' "$TAG" | awk '{printf "%.2f GB", $1/1e9}')"
