#!/usr/bin/env bash
# Builds a tiny local image, `helios-busybox:latest` (or the tag given), holding only Debian's
# static busybox and links to its applets: no registry is needed (none may be reachable).
#
#   scripts/busybox-image.sh [TAG]      needs `docker` and busybox-static (apt-get install busybox-static)
set -euo pipefail
tag="${1:-helios-busybox:latest}"
busybox="$(command -v busybox || true)"
[ -x /bin/busybox ] && busybox=/bin/busybox
if [ -z "$busybox" ]; then
    echo "busybox not found: apt-get install busybox-static" >&2
    exit 1
fi
context="$(mktemp -d)"
trap 'rm -rf "$context"' EXIT
mkdir -p "$context/rootfs/bin"
cp "$busybox" "$context/rootfs/bin/busybox"
for applet in sh echo sleep true false cat head tr env ls httpd; do
    ln -s busybox "$context/rootfs/bin/$applet"
done
printf 'FROM scratch\nCOPY rootfs/ /\nCMD ["sh"]\n' >"$context/Dockerfile"
docker build -q -t "$tag" "$context" >/dev/null
echo "$tag"
