#!/usr/bin/env bash
# Start the API gateway from .env.api (copy .env.api.example first).
# WORKERS processes share API_PORT (SO_REUSEPORT), each on uvloop.
set -euo pipefail
cd "$(dirname "$0")"
ENV_FILE="${ENV_FILE:-.env.api}"
if [ ! -f "$ENV_FILE" ]; then
    echo "run_api.sh: $ENV_FILE not found; copy .env.api.example to $ENV_FILE and fill it in" >&2
    exit 1
fi
[ -x .venv/bin/sn1 ] || make install
exec .venv/bin/sn1 api --env-file "$ENV_FILE"
