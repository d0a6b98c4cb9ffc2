#!/usr/bin/env bash
# On the server machine. Folders default to /srv/fedattack/...; override with env vars.
#
#   deploy/server-host.sh credentials NAME_OR_IP...  CA, server certificate for these names,
#                                                    one key pair per site, the attack host's
#                                                    client certificate (attack.crt/.key)
#   deploy/server-host.sh superlink                  the SuperLink: TLS, node auth, state
#   deploy/server-host.sh register                   register the four sites' public keys
#   deploy/server-host.sh submit CONFIG              one run per architecture, wait for all
#   deploy/server-host.sh serve-store                the checkpoint store over HTTPS (:8443),
#                                                    only to holders of attack.crt
#
# CREDENTIALS (default /srv/fedattack/credentials), STATE (/srv/fedattack/state),
# STORE (/srv/fedattack/checkpoints), ADDRESS (the address the sites dial, HOST:9093),
# STORE_HOST (the address serve-store listens on; default 0.0.0.0, every interface: the
# attack host is another machine, and it must present attack.crt).
set -euo pipefail
CREDENTIALS=${CREDENTIALS:-/srv/fedattack/credentials}
STATE=${STATE:-/srv/fedattack/state}
STORE=${STORE:-/srv/fedattack/checkpoints}
ADDRESS=${ADDRESS:-127.0.0.1:9093}
cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  credentials)
    sans=(); for n in "$@"; do sans+=(--san "$n"); done
    exec fedattack deploy credentials --out "$CREDENTIALS" "${sans[@]}" --sites A B C D ;;
  superlink)
    exec fedattack deploy superlink --credentials "$CREDENTIALS" --state "$STATE" \
      --host 0.0.0.0 --port "${ADDRESS##*:}" ;;
  register)
    exec fedattack deploy register --superlink "$ADDRESS" --root-certificates "$CREDENTIALS/ca.crt" \
      --public-key "$CREDENTIALS"/site-{A,B,C,D}.key.pub ;;
  submit)
    exec fedattack deploy submit --config "$1" --superlink "$ADDRESS" \
      --root-certificates "$CREDENTIALS/ca.crt" --store "$STORE" ;;
  serve-store)
    exec fedattack deploy serve-store --store "$STORE" --credentials "$CREDENTIALS" \
      --host "${STORE_HOST:-0.0.0.0}" --port "${PORT:-8443}" ;;
  *)
    sed -n '2,16p' "$0" >&2
    exit 64 ;;
esac
