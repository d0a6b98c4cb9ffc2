#!/usr/bin/env bash
# The study in containers (four sites, or the sites of a file from `fedattack deploy
# compose`), from start to report, then nothing left running:
#   deploy/compose-study.sh [--out DIR] [-f docker-compose.yml -f docker-compose.gpu.yml ...]
# Each step is the docker-compose.yml service of the same name, started in the order its
# depends_on gives, the one-shot steps attached (their progress lines appear as they
# come, the job's round lines included, with Compose v2 and with Debian's 1.29 alike).
# The report is copied to DIR (default runs/compose: report.md, matrix.csv, heatmap.png,
# results.json; or FEDATTACK_REPORT_DIR); the volumes keep the store and the results. Exit code:
# 0 with the report written; otherwise the failed step's, its reason the last lines shown.
# Compose: FEDATTACK_COMPOSE if set, else the `docker compose` plugin, else Compose v2's
# binary from `make compose-v2` (.cache/compose-v2/docker-compose), else docker-compose.
# The image must exist (`make image`); COMPOSE_FILE / COMPOSE_PROJECT_NAME are honoured.
set -euo pipefail
. "$(dirname "$0")/docker/common.sh"
cd "$(dirname "$0")/.."
OUT=${FEDATTACK_REPORT_DIR:-runs/compose} FILES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT="$2"; shift 2 ;;
    -f) FILES+=(-f "$2"); shift 2 ;;
    *) die "unknown option $1 (--out DIR, -f COMPOSE_FILE)" ;;
  esac
done
need_engine
if [ -n "${FEDATTACK_COMPOSE:-}" ]; then
  read -r -a COMPOSE <<<"$FEDATTACK_COMPOSE"
elif "$DOCKER" compose version >/dev/null 2>&1; then
  COMPOSE=("$DOCKER" compose)
elif [ -x .cache/compose-v2/docker-compose ]; then
  COMPOSE=(.cache/compose-v2/docker-compose)
elif command -v docker-compose >/dev/null; then
  COMPOSE=(docker-compose)
else
  die "no Docker Compose: install the compose plugin, or run \`make compose-v2\` (fetches Compose v2), or apt-get install docker-compose"
fi
IMAGE=fedattack:latest
"$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1 || die "no image $IMAGE on this host: run \`make image\` first"
c() { "${COMPOSE[@]}" "${FILES[@]}" "$@"; }
echo "compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

finish() {
  local code=$?
  trap - EXIT
  # The sites first, while the SuperLink still answers: a SuperNode told to stop
  # deactivates itself there. Stopped together, the SuperLink may go first and keep the
  # sites "online" for up to two heartbeats (60 s), and a study started in that minute
  # has its sites refused ("could not be activated").
  mapfile -t running_sites < <(c config --services 2>/dev/null | grep '^site-' || true)
  [ "${#running_sites[@]}" -eq 0 ] || c stop -t 20 "${running_sites[@]}" >/dev/null 2>&1 || true
  c stop -t 20 >/dev/null 2>&1 || true
  if [ "$code" -ne 0 ]; then
    echo "study FAILED (exit $code); the services are stopped, the volumes kept; logs: ${COMPOSE[*]} logs SERVICE" >&2
  fi
  exit "$code"
}
trap finish EXIT

# A one-shot step, attached: its lines as they come, its exit code ours.
step() {
  echo "== $1"
  local code=0
  c up --no-build --no-deps --exit-code-from "$1" "$1" || code=$?
  if [ "$code" -ne 0 ]; then
    echo "== $1 failed (exit $code); its last lines:" >&2
    c logs --no-color --tail 15 "$1" >&2 || true
    exit "$code"
  fi
}
# A long-running service, detached.
service() {
  echo "== $*"
  c up --no-build --no-deps -d "$@"
}

step credentials
step data-init
service superlink
step register
# every site service the compose file holds (four in docker-compose.yml; any number in a
# file from `fedattack deploy compose`)
mapfile -t SITES < <(c config --services | grep '^site-' || true)
[ "${#SITES[@]}" -ge 2 ] || die "the compose file holds ${#SITES[@]} site services (site-...); a federation needs at least 2"
service "${SITES[@]}"
step job
step attack
# the report replaces an earlier one whole, never half-copied
mkdir -p "$(dirname "$OUT")"
tmp=$(mktemp -d "$(dirname "$OUT")/.compose-report.XXXXXX")
"$DOCKER" cp "$(c ps -a -q attack | head -1)":/runs/attack/. "$tmp/" >/dev/null || { rm -rf "$tmp"; die "could not copy the report out of the attack container"; }
chmod 755 "$tmp"
rm -rf "$OUT" && mv "$tmp" "$OUT"
echo "study complete: the report is $OUT/report.md (with matrix.csv, heatmap.png, results.json)"
