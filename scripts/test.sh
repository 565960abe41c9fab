#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): the Rust tests, the API contract against
# a real server, then the official OpenAI Python SDK against the gateway. Installs the
# tools into target/ (Python virtualenvs); prints each stage's duration.
set -euo pipefail
cd "$(dirname "$0")/.."
durations=()
stage() {
  local name=$1; shift
  local start=$SECONDS
  echo "==> $name"
  "$@"
  durations+=("$name: $((SECONDS - start)) s")
}

contract_tools() {
  local venv=target/contract-venv
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "python3-venv is missing; installing it with apt"
    apt-get update -qq && apt-get install -y -qq python3-venv
  fi
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/contract/requirements.txt
}

sdk_tools() {
  local venv=target/sdk-venv
  [ -x "$venv/bin/pip" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tests/sdk/requirements.txt
}

stage "rust tests" cargo test --workspace --locked
stage "build tally" cargo build --locked -p tally -p tally-fake-provider
stage "contract tools" contract_tools
stage "api contract" tests/contract/run.sh target/debug/tally
stage "sdk tools" sdk_tools
stage "openai sdk" tests/sdk/run.sh target/debug/tally target/debug/tally-fake-provider
echo "==> stage durations"
printf '  %s\n' "${durations[@]}"
