#!/usr/bin/env bash
# The API contract stage: starts `tally serve --demo` on a free loopback port in a fresh
# data dir, validates the OpenAPI document it serves (openapi-spec-validator), then runs
# schemathesis over that document with every check and every phase (coverage, fuzzing,
# stateful) as the platform admin. Exits non-zero on any failure.
#
#   tests/contract/run.sh [TALLY_BINARY]
#
# Environment: TALLY_CONTRACT_EXAMPLES (examples per operation, default 30),
# TALLY_CONTRACT_SEED (default 1: the same cases on every run; "random" for a new seed),
# TALLY_CONTRACT_VENV (default target/contract-venv), TALLY_CONTRACT_REPORT_DIR (when set,
# a HAR file of every request and answer is written there).
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/tally}
venv=${TALLY_CONTRACT_VENV:-target/contract-venv}
examples=${TALLY_CONTRACT_EXAMPLES:-30}
seed=${TALLY_CONTRACT_SEED:-1}
for tool in schemathesis openapi-spec-validator; do
  if [ ! -x "$venv/bin/$tool" ]; then
    echo "contract: $tool is missing from $venv (scripts/test.sh installs it)" >&2
    exit 1
  fi
done
[ -x "$bin" ] || { echo "contract: no tally binary at $bin" >&2; exit 1; }

work=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
password=contract-admin-password
TALLY_ADMIN_PASSWORD=$password "$bin" serve --demo --config tests/loopback.toml \
  --data-dir "$work/data" --listen "127.0.0.1:$port" \
  > "$work/server.log" 2>&1 &
server=$!
cleanup() { kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  curl -sf "$base/healthz" > /dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; echo "contract: the server exited" >&2; exit 1; }
  sleep 0.5
done
curl -sf "$base/healthz" > /dev/null || { cat "$work/server.log"; echo "contract: the server did not start" >&2; exit 1; }

curl -sf "$base/api/v1/openapi.json" -o "$work/openapi.json"
"$venv/bin/openapi-spec-validator" "$work/openapi.json"

login() {
  curl -sf -X POST "$base/api/v1/auth/login" -H 'Content-Type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$password\"}" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["access_token"])'
}
token=$(login admin@tally.local)
# Logout and logout_all end sessions: each runs with a spare account's token (see
# schemathesis.toml), so the admin's session lasts the whole run.
spare() {
  curl -sf -X POST "$base/api/v1/accounts" -H "Authorization: Bearer $token" \
    -H 'Content-Type: application/json' \
    -d "{\"email\":\"$1\",\"password\":\"$password\",\"role\":\"member\"}" > /dev/null
  login "$1"
}
export TALLY_CONTRACT_TOKEN=$token
TALLY_CONTRACT_LOGOUT_TOKEN=$(spare logout@tally.local)
TALLY_CONTRACT_LOGOUT_ALL_TOKEN=$(spare logout-all@tally.local)
export TALLY_CONTRACT_LOGOUT_TOKEN TALLY_CONTRACT_LOGOUT_ALL_TOKEN

seed_args=()
[ "$seed" = random ] || seed_args=(--seed "$seed")
if [ -n "${TALLY_CONTRACT_REPORT_DIR:-}" ]; then
  seed_args+=(--report har --report-dir "$TALLY_CONTRACT_REPORT_DIR")
fi
set +e
# One worker: with two, Python 3.11's `ast` module (hypothesis describes its strategies
# with it) can fail from threads with "AST constructor recursion depth mismatch"
# (CPython gh-106905), a crash of the tool that fails the stage at random.
"$venv/bin/schemathesis" --config-file tests/contract/schemathesis.toml run "$base/api/v1/openapi.json" \
  --url "$base" --checks all \
  --phases coverage,fuzzing,stateful --max-examples "$examples" "${seed_args[@]}" \
  --workers 1 --no-color 2>&1 | tee "$work/schemathesis.txt"
status=${PIPESTATUS[0]}
set -e
if grep -q "panicked" "$work/server.log"; then
  grep -n "panicked" "$work/server.log" >&2
  echo "contract: the server panicked" >&2
  status=1
fi
cases=$(grep -oE '[0-9]+ generated' "$work/schemathesis.txt" | tail -1 | grep -oE '[0-9]+' || echo 0)
failed=$(grep -oE '[0-9]+ found [0-9]+ unique failures?' "$work/schemathesis.txt" | tail -1 | grep -oE '^[0-9]+' || echo 0)
if [ "$status" -eq 0 ]; then
  echo "contract: $((cases - failed)) passed, $failed failed"
else
  echo "contract: schemathesis reported failures (exit $status)" >&2
fi
exit "$status"
