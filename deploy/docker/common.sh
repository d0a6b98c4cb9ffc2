# Shared by the scripts beside it (sourced, not run).
# Debian's docker client first: /usr/local/bin/docker may lack BuildKit's builder.
export PATH="/usr/bin:$PATH"
DOCKER="${DOCKER:-docker}"

die() { echo "error: $*" >&2; exit 1; }

need_engine() {
  command -v "$DOCKER" >/dev/null \
    || die "no docker client: install Docker (Debian: apt-get install -y docker.io docker-compose)"
  "$DOCKER" info >/dev/null 2>&1 \
    || die "no Docker engine answers ($DOCKER info failed): start it (systemctl start docker, or as root: dockerd --iptables=false &)"
}
