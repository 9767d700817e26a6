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
cargo test --workspace
