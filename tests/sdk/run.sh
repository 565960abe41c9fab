#!/usr/bin/env bash
# The SDK stage: the official OpenAI Python SDK (installed by scripts/test.sh into
# target/sdk-venv) against a real `tally serve`, whose gateway calls the fake provider on
# loopback.
#
#   tests/sdk/run.sh [TALLY_BINARY] [FAKE_PROVIDER_BINARY]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${1:-target/debug/tally}
fake=${2:-target/debug/tally-fake-provider}
venv=${TALLY_SDK_VENV:-target/sdk-venv}
if ! { [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import openai' 2>/dev/null; }; then
  echo "sdk: the openai package is missing from $venv (scripts/test.sh installs it)" >&2
  exit 1
fi
for b in "$bin" "$fake"; do
  [ -x "$b" ] || { echo "sdk: no binary at $b" >&2; exit 1; }
done

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port=$(free_port)
fake_port=$(free_port)
"$fake" --listen "127.0.0.1:$fake_port" --answer-words 5 > "$work/fake.log" 2>&1 &
fake_pid=$!
TALLY_ADMIN_PASSWORD=sdk-admin-password "$bin" serve --config tests/loopback.toml \
  --data-dir "$work/data" --listen "127.0.0.1:$port" > "$work/server.log" 2>&1 &
server=$!
cleanup() {
  kill "$server" "$fake_pid" 2>/dev/null || true
  wait "$server" "$fake_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 1 120); do
  curl -sf "$base/healthz" > /dev/null && break
  kill -0 "$server" 2>/dev/null || { cat "$work/server.log"; echo "sdk: the server exited" >&2; exit 1; }
  sleep 0.5
done
curl -sf "$base/healthz" > /dev/null || { cat "$work/server.log"; echo "sdk: the server did not start" >&2; exit 1; }

tenant=$("$bin" admin --data-dir "$work/data" tenant create --name sdk)
key=$("$bin" admin --data-dir "$work/data" key create --tenant "$tenant" --name sdk --scopes gateway,admin)
fake_key=fake-provider-key-0123456789
for p in "openai v1" "anthropic anthropic/v1" "google gemini/v1beta"; do
  set -- $p
  curl -sf -X POST "$base/api/v1/ai/credentials" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d "{\"name\":\"$1\",\"api_key\":\"$fake_key\",\"base_url\":\"http://127.0.0.1:$fake_port/$2\"}" > /dev/null \
    || { cat "$work/server.log"; echo "sdk: could not store the $1 credential" >&2; exit 1; }
done
if ! TALLY_BASE=$base TALLY_KEY=$key "$venv/bin/python" tests/sdk/openai_sdk.py; then
  tail -50 "$work/server.log"
  exit 1
fi
