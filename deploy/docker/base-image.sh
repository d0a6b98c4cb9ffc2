#!/usr/bin/env bash
# A base image made from Debian packages, for hosts that cannot pull python:3.11-slim-bookworm
# (no registry, air-gapped): Debian bookworm minbase + python3 (3.11), python3-venv and
# ca-certificates, imported as NAME (default fedattack-base:bookworm). Needs root,
# debootstrap, a Debian mirror (or a local one: MIRROR=...) and a running Docker engine.
#   deploy/docker/base-image.sh [NAME]
#   deploy/docker/build-image.sh --base fedattack-base:bookworm
set -euo pipefail
. "$(dirname "$0")/common.sh"
NAME="${1:-fedattack-base:bookworm}"
need_engine
if "$DOCKER" image inspect "$NAME" >/dev/null 2>&1 && [ -z "${FORCE:-}" ]; then
  echo "base image $NAME is already here (FORCE=1 to remake it)"; exit 0
fi
command -v debootstrap >/dev/null || die "debootstrap is missing: apt-get install -y debootstrap"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"
if [ -z "${MIRROR:-}" ]; then
  MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
  MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
ROOT=$(mktemp -d /var/tmp/fedattack-base.XXXXXX)
trap 'rm -rf "$ROOT"' EXIT
echo "debootstrap bookworm from $MIRROR (a few minutes)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 \
  || { tail -20 "$ROOT.log" >&2; die "debootstrap failed (log: $ROOT.log)"; }
rm -rf "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/* "$ROOT.log"
tar -C "$ROOT" -c . | "$DOCKER" import - "$NAME" >/dev/null
"$DOCKER" run --rm "$NAME" python3 -c 'import sys, venv; assert sys.version_info[:2] == (3, 11)' \
  || die "$NAME has no python3 3.11 with venv"
echo "base image $NAME: $("$DOCKER" image inspect -f '{{.Size}}' "$NAME" | awk '{printf "%.0f MB", $1/1e6}')"
