#!/bin/sh
# Installs the Debian packages the project needs, only those missing, only when root.
# Not root: prints the exact command to run and fails, so nothing half-works silently.
set -eu
PKGS="python3 python3-venv python3-pip libfuse2 fuse3 git chromium fonts-dejavu-core qemu-system-x86 busybox-static kmod gcc libc6-dev lz4 rsync tmux jq"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if ! command -v apt-get >/dev/null 2>&1; then
    echo "ifc-sandbox: missing system packages:$missing (no apt-get here: install them with your package manager)" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ifc-sandbox: missing system packages; run: sudo apt-get install -y$missing" >&2
    exit 1
fi
echo "ifc-sandbox: installing system packages:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends $missing >/dev/null
