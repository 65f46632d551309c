#!/usr/bin/env bash
# Start the API gateway from .env.api (copy .env.api.example first), or from the file ENV_FILE names
# (a relative ENV_FILE is taken from this directory, the repository root, wherever it is run from).
# Without either, the settings come from the environment alone (a unit's Environment= lines, pm2's env).
# WORKERS processes share API_PORT (SO_REUSEPORT), each on uvloop.
set -euo pipefail
cd "$(dirname "$0")"
args=()
if [ -n "${ENV_FILE:-}" ]; then
    if [ ! -f "$ENV_FILE" ]; then
        where="$ENV_FILE"
        [ "${ENV_FILE#/}" = "$ENV_FILE" ] && where="$PWD/$ENV_FILE"
        echo "run_api.sh: ENV_FILE $where not found" >&2
        exit 1
    fi
    args=(--env-file "$ENV_FILE")
elif [ ! -f .env.api ]; then
    echo "run_api.sh: no $PWD/.env.api: settings from the environment alone (copy .env.api.example to .env.api" \
         "to keep them in a file)" >&2
fi
[ -x .venv/bin/sn1 ] || make install
exec .venv/bin/sn1 api ${args[@]+"${args[@]}"}
