#!/usr/bin/env bash
# On a site's GPU machine: start its SuperNode against the SuperLink (TLS + node auth),
# running only the app signed with the operator's key.
#
#   deploy/site-host.sh SITE SUPERLINK_HOST:PORT SITE_DIR [GPU_INDEX]
#
# SITE_DIR holds the site's shard as `fedattack deploy prepare-data` writes it
# (site_<SITE>.json + images), its private key site-<SITE>.key (mode 600), ca.crt and
# trusted-entities.yaml (the operator's app-signing public key), as `fedattack deploy
# credentials --sites-dir` lays them out. KEY=, CA= and TRUSTED=/path override those
# three. GPU_INDEX pins one card (CUDA_VISIBLE_DEVICES); default: GPU 0 if there is one,
# else CPU.
set -euo pipefail
if [ $# -lt 3 ]; then
  sed -n '2,12p' "$0" >&2
  exit 64
fi
site=$1 superlink=$2 dir=$3
if [ $# -ge 4 ]; then export CUDA_VISIBLE_DEVICES=$4; fi
exec fedattack deploy supernode --site "$site" --superlink "$superlink" --data "$dir" \
  --root-certificates "${CA:-$dir/ca.crt}" --key "${KEY:-$dir/site-$site.key}" \
  --trusted-entities "${TRUSTED:-$dir/trusted-entities.yaml}" \
  ${MAX_RETRIES:+--max-retries "$MAX_RETRIES"} ${PORT:+--port "$PORT"}
