#!/usr/bin/env bash
# Prepare a Debian 12 build host for imagectl: the Debian packages diskimage-builder, the boot test and the SLC
# repository tests need, then imagectl itself (editable, with test tools). Idempotent; needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(sudo qemu-utils qemu-system-x86 debootstrap fdisk gdisk dosfstools squashfs-tools kpartx
          gnupg debian-archive-keyring xz-utils zstd e2fsprogs rpm rpm2cpio cpio createrepo-c curl openssl
          syslinux syslinux-common mtools xorriso shellcheck dash chromium rsync nginx-light
          python3-nova xen-utils-4.17)  # xen-utils: Xen's pygrub, which boot-tests xen-pv images (no Xen host needed); nginx-light: bench/pull.py's server
missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "host-setup: missing Debian packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
        exit 1
    fi
    echo "+ apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Node and npm: the stock tuf-js client and gitlab-ci-local tests install their pinned npm packages with them. A
# Node from elsewhere (nodesource, nvm) is kept; Debian's is installed only when there is none.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" != 0 ]; then
        echo "host-setup: node and npm are missing (run as root, or: sudo apt-get install nodejs npm)" >&2
        exit 1
    fi
    echo "+ apt-get install nodejs npm"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if [ "$node_major" -lt 20 ]; then
    echo "host-setup: warning: Node $(node --version) is older than 20, which tuf-js and gitlab-ci-local need" >&2
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
python3 -m pip install -q -e '.[test]'
