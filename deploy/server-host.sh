#!/usr/bin/env bash
# On the server machine, locked down: the sites' network reaches only the Fleet proxy
# (ADDRESS's port, 9093); the SuperLink itself listens on 127.0.0.1:9091, where only this
# host's `register` and `submit` reach it; the sites run only the app signed here.
#
#   deploy/server-host.sh credentials NAME_OR_IP...  CA, server certificate for these names,
#                                                    one key pair per site, the attack host's
#                                                    client certificate (attack.crt/.key), the
#                                                    app-signing key and the signed app
#   deploy/server-host.sh superlink                  the SuperLink (TLS, node auth, state) on
#                                                    loopback, the Fleet proxy on every interface
#   deploy/server-host.sh register                   register the four sites' public keys
#   deploy/server-host.sh submit CONFIG              one run per architecture, wait for all
#   deploy/server-host.sh sign-app                   re-sign the app (after updating the code)
#   deploy/server-host.sh serve-store                the checkpoint store over HTTPS (:8443),
#                                                    only to holders of attack.crt
#
# CREDENTIALS (default /srv/fedattack/credentials: ca.key and app-signing.key stay here),
# SERVER_DIR (/srv/fedattack/server: what the SuperLink reads, its certificate and the
# signed app), STATE (/srv/fedattack/state), STORE (/srv/fedattack/checkpoints), ADDRESS
# (the address the sites dial, HOST:9093), STORE_HOST (the address serve-store listens
# on; default 0.0.0.0, every interface: the attack host is another machine, and it must
# present attack.crt), FLEET_LIMITS (the Fleet proxy's load limits, NAME=VALUE separated
# by spaces, e.g. "header-timeout-s=5 max-connections-per-address=16": docs/deployment.md,
# "Load limits").
set -euo pipefail
CREDENTIALS=${CREDENTIALS:-/srv/fedattack/credentials}
SERVER_DIR=${SERVER_DIR:-/srv/fedattack/server}
STATE=${STATE:-/srv/fedattack/state}
STORE=${STORE:-/srv/fedattack/checkpoints}
ADDRESS=${ADDRESS:-127.0.0.1:9093}
CONTROL=127.0.0.1:9091
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  credentials)
    sans=(); for n in "$@"; do sans+=(--san "$n"); done
    exec fedattack deploy credentials --out "$CREDENTIALS" "${sans[@]}" --sites A B C D \
      --server-dir "$SERVER_DIR" --sign-app "$SERVER_DIR/app" ;;
  sign-app)
    exec fedattack deploy sign-app --key "$CREDENTIALS/app-signing.key" --out "$SERVER_DIR/app" ;;
  superlink)
    limits=(); for l in ${FLEET_LIMITS:-}; do limits+=(--fleet-limit "$l"); done
    exec fedattack deploy superlink "${limits[@]}" --credentials "$SERVER_DIR" --app "$SERVER_DIR/app" \
      --state "$STATE" --host 0.0.0.0 --port "${ADDRESS##*:}" ;;
  register)
    exec fedattack deploy register --superlink "$CONTROL" --root-certificates "$CREDENTIALS/ca.crt" \
      --public-key "$CREDENTIALS"/site-{A,B,C,D}.key.pub ;;
  submit)
    exec fedattack deploy submit --config "$1" --superlink "$CONTROL" \
      --root-certificates "$CREDENTIALS/ca.crt" --store "$STORE" --signed-app ;;
  serve-store)
    exec fedattack deploy serve-store --store "$STORE" --credentials "$CREDENTIALS" \
      --host "${STORE_HOST:-0.0.0.0}" --port "${PORT:-8443}" ;;
  *)
    sed -n '2,23p' "$0" >&2
    exit 64 ;;
esac
