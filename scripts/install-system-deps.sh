#!/usr/bin/env bash
# System packages the local stack and the tests need besides the venv: redis-server (the
# Celery broker) and PostgreSQL server binaries (a private test cluster). Debian/Ubuntu only.
# Idempotent: installs nothing when everything is already there.
# --venv: also python3-venv, for a Debian python3 that cannot create the project's venv.
set -euo pipefail

have_redis() { command -v redis-server >/dev/null 2>&1; }
have_postgres() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
have_venv() { python3 -c 'import ensurepip, venv' >/dev/null 2>&1; }

missing=()
have_redis || missing+=(redis-server)
have_postgres || missing+=(postgresql)
if [ "${1:-}" = "--venv" ] && ! have_venv; then
    missing+=(python3-venv)
fi

if [ ${#missing[@]} -eq 0 ]; then
    echo "system deps: redis-server and PostgreSQL server binaries already installed"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "system deps: missing ${missing[*]}, and apt-get is not available; install them by hand" >&2
    exit 1
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi

echo "system deps: installing ${missing[*]} with apt-get"
"${sudo[@]}" apt-get update
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y --no-install-recommends "${missing[@]}"
echo "system deps: installed ${missing[*]}"
