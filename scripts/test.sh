#!/usr/bin/env bash
# The whole test suite, as a newcomer runs it on a fresh machine and as CI runs it (.ci/run):
# install what the tests need when it is missing, then the lints and every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Docker tests build their image from Debian's static busybox. The fault-injection run
# (helios-chaos/tests/runs.rs) puts each server in a network namespace of its own and cuts
# traffic with iptables inside them: it needs root, iproute2's `ip netns` and iptables.
missing=()
command -v busybox >/dev/null 2>&1 || [ -x /bin/busybox ] || missing+=(busybox-static)
command -v ip >/dev/null 2>&1 || missing+=(iproute2)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
# The Python client test builds a virtual environment (Debian's python3 needs python3-venv).
command -v python3 >/dev/null 2>&1 || missing+=(python3)
python3 -c "import ensurepip" >/dev/null 2>&1 || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/test.sh: missing ${missing[*]}; run as root (the fault runs need root too)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The rolling upgrade test runs the previous stored format's last build beside this one; built
# here, before the tests, so that no test competes with a build for the machine.
scripts/build-previous-format.sh >/dev/null
# The Python client test (helios-server/tests/python_client.rs) generates stubs from proto/ with
# grpcio-tools, and the trace export test (helios-cli/tests/request_ids.rs) decodes spans with
# OpenTelemetry's own classes; installed from PyPI into a virtual environment of its own, kept
# between runs.
venv=target/python-venv
if ! "$venv/bin/python" -c "import grpc_tools, grpc_status, opentelemetry.proto" >/dev/null 2>&1; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q grpcio-tools==1.85.4 grpcio-status==1.85.3 opentelemetry-proto==1.45.2
fi
export HELIOS_PYTHON="$PWD/$venv/bin/python" HELIOS_REQUIRE_PYTHON=1
cargo test --workspace
