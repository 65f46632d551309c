#!/usr/bin/env bash
# Start the API gateway from .env.api (copy .env.api.example first), or from the file ENV_FILE names
# (a relative ENV_FILE is taken from this directory, the repository root, wherever it is run from).
# WORKERS processes share API_PORT (SO_REUSEPORT), each on uvloop.
set -euo pipefail
cd "$(dirname "$0")"
ENV_FILE="${ENV_FILE:-.env.api}"
if [ ! -f "$ENV_FILE" ]; then
    where="$ENV_FILE"
    [ "${ENV_FILE#/}" = "$ENV_FILE" ] && where="$PWD/$ENV_FILE"
    echo "run_api.sh: $where not found; copy .env.api.example to it and fill it in" >&2
    exit 1
fi
[ -x .venv/bin/sn1 ] || make install
exec .venv/bin/sn1 api --env-file "$ENV_FILE"
