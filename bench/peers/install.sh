#!/usr/bin/env bash
# Installs what the benchmark's rival publishers need: a Python venv
# (python/.venv, from python/requirements.txt) and node/node_modules (npm ci
# from node/package-lock.json). Idempotent: does nothing when both are already
# installed from the current requirements/lock file. Silent on success.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT

die() {
  echo "bench/peers/install.sh: $*" >&2
  if [ -s "$log" ]; then sed 's/^/  /' "$log" >&2; fi
  exit 1
}

stamp_of() { sha256sum "$1" | cut -d' ' -f1; }

# Python peer: psycopg2-binary, msgpack, nats-py.
command -v python3 >/dev/null 2>&1 || die "python3 not found"
py="$here/python"
want="$(stamp_of "$py/requirements.txt")"
if [ ! -x "$py/.venv/bin/python" ] || [ "$(cat "$py/.venv/.installed" 2>/dev/null)" != "$want" ]; then
  python3 -m venv "$py/.venv" >"$log" 2>&1 \
    || die "could not create the Python venv in $py/.venv (is python3-venv installed?)"
  "$py/.venv/bin/python" -m pip install --quiet --disable-pip-version-check \
    -r "$py/requirements.txt" >"$log" 2>&1 \
    || die "pip install -r $py/requirements.txt failed"
  echo "$want" >"$py/.venv/.installed"
fi

# Node peer: pg-logical-replication, msgpackr, nats (Node >= 20).
command -v node >/dev/null 2>&1 || die "node not found (Node.js >= 20 is needed)"
command -v npm >/dev/null 2>&1 || die "npm not found"
major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$major" -ge 20 ] || die "Node.js >= 20 is needed, found $(node --version)"
nd="$here/node"
want="$(stamp_of "$nd/package-lock.json")"
if [ "$(cat "$nd/node_modules/.installed" 2>/dev/null)" != "$want" ]; then
  (cd "$nd" && npm ci --no-audit --no-fund --loglevel=error) >"$log" 2>&1 \
    || die "npm ci in $nd failed"
  echo "$want" >"$nd/node_modules/.installed"
fi
