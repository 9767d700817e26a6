#!/usr/bin/env bash
# Builds the last release of the previous stored format (helios-server, helios-client,
# helios-cli) into target/previous-format/bin, from this repository's history. The rolling
# upgrade test (helios-server/tests/rolling_upgrade.rs) runs it beside the current build, and
# scripts/write-format-fixture.sh can write that format's fixture with it.
#
#   scripts/build-previous-format.sh        # prints the directory of the binaries
#
# Its third-party crates are compiled once for both builds: it builds in this checkout's build
# directory (target/, cargo's `build.build-dir`), where every registry crate this commit shares
# with the current one is already built, which halves a cold CI run's compile time. Two
# workspaces' path crates would share names there (cargo names them by their place in the
# workspace) and take each other's artifacts for fresh, so the old sources get a version of their
# own (0.1.0-previous-format), and its binaries go to a target directory of their own, so they
# never replace this checkout's. Called from a test (cargo test holds target/ while it builds),
# it builds in a directory of its own instead: slower, but it cannot wait on the caller's lock.
# When the stored format changes, point PREVIOUS_FORMAT_COMMIT at the last commit of the format
# being replaced.
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
sed -i '0,/^version = "0.1.0"$/s//version = "0.1.0-previous-format"/' "$src/Cargo.toml"
grep -q '^version = "0.1.0-previous-format"$' "$src/Cargo.toml" || {
    echo "build-previous-format.sh: no workspace version 0.1.0 to rename in $PREVIOUS_FORMAT_COMMIT's Cargo.toml" >&2
    exit 1
}
build_dir="$root/target"
[ -n "${CARGO_MANIFEST_DIR:-}" ] && build_dir="$out/build"
cargo build --quiet --manifest-path "$src/Cargo.toml" --target-dir "$out/target" \
    --config "build.build-dir=\"$build_dir\"" -p helios-server -p helios-client -p helios-cli --bins >&2
for bin in helios-server helios-client helios-cli; do
    cp "$out/target/debug/$bin" "$out/bin/$bin"
done
echo "$PREVIOUS_FORMAT_COMMIT" >"$stamp"
echo "$out/bin"
