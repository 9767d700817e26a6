#!/usr/bin/env bash
# Builds the last release of the previous stored format (helios-server, helios-client,
# helios-cli) into target/previous-format/bin, from this repository's history. The rolling
# upgrade test (helios-server/tests/rolling_upgrade.rs) runs it beside the current build, and
# scripts/write-format-fixture.sh can write that format's fixture with it.
#
#   scripts/build-previous-format.sh        # prints the directory of the binaries
#
# It builds in a target directory of its own: cargo names a workspace's path crates by their
# place in the workspace, so two checkouts sharing one target directory take each other's
# crates for fresh. When the stored format changes, point PREVIOUS_FORMAT_COMMIT at the last
# commit of the format being replaced.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# The last commit writing stored format 9.
PREVIOUS_FORMAT_COMMIT=4105d74ff06330b5bf0b0a2e1a2d28cd7b076913
out="$root/target/previous-format"
src="$out/src"
stamp="$out/bin/.commit"

if [ "$(cat "$stamp" 2>/dev/null)" = "$PREVIOUS_FORMAT_COMMIT" ]; then
    echo "$out/bin"
    exit 0
fi
if ! git -C "$root" cat-file -e "$PREVIOUS_FORMAT_COMMIT^{commit}" 2>/dev/null; then
    echo "build-previous-format.sh: commit $PREVIOUS_FORMAT_COMMIT is not in this clone's history; fetch it (git fetch --unshallow)" >&2
    exit 1
fi
rm -rf "$src"
mkdir -p "$out/bin"
git -C "$root" archive --format=tar "$PREVIOUS_FORMAT_COMMIT" | tar -x -C "$(mkdir -p "$src" && echo "$src")"
cargo build --quiet --manifest-path "$src/Cargo.toml" --target-dir "$out/target" \
    -p helios-server -p helios-client -p helios-cli --bins >&2
for bin in helios-server helios-client helios-cli; do
    cp "$out/target/debug/$bin" "$out/bin/$bin"
done
echo "$PREVIOUS_FORMAT_COMMIT" >"$stamp"
echo "$out/bin"
