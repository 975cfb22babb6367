#!/usr/bin/env bash
# Build robust-ft's base image from Debian packages alone, with no registry image: a minimal
# Debian rootfs (python3 + venv, CA certificates, tini, the dataset-fashion-mnist package),
# with the suite's updates and security updates, `docker import`ed. Run as root on a
# Debian/Ubuntu host: `apt-get install docker.io mmdebstrap` (or debootstrap).
#
#   docker/build-base.sh [IMAGE]            # default robust-ft-base:bookworm
#   SUITE=trixie docker/build-base.sh robust-ft-base:trixie
#   BOOTSTRAP=debootstrap docker/build-base.sh      # force debootstrap (slower)
#
# mmdebstrap (Debian's successor of debootstrap: parallel downloads, apt's resolver) takes
# about a minute; debootstrap, the fallback, several.
# If you can pull images, skip this: `docker build --build-arg BASE=python:3.11-slim ...`.
set -euo pipefail

IMAGE=${1:-robust-ft-base:bookworm}
SUITE=${SUITE:-bookworm}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY=${SECURITY:-http://deb.debian.org/debian-security}
# python3-venv brings ensurepip (pip inside the venv); the rest is what the Dockerfile expects.
PACKAGES=${PACKAGES:-python3,python3-venv,ca-certificates,tini,dataset-fashion-mnist}
DOCKER=${DOCKER:-docker}
BOOTSTRAP=${BOOTSTRAP:-$(command -v mmdebstrap >/dev/null && echo mmdebstrap || echo debootstrap)}
SOURCES=("deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main"
    "deb $SECURITY $SUITE-security main")

if [ "$(id -u)" != 0 ]; then
    echo "error: $BOOTSTRAP needs root here (sudo $0 $*)" >&2
    exit 1
fi
for tool in "$BOOTSTRAP" "$DOCKER"; do
    command -v "$tool" >/dev/null || {
        echo "error: $tool not found; apt-get install docker.io mmdebstrap" >&2
        exit 1
    }
done

import_image() {
    "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        --message "$BOOTSTRAP --variant=minbase $SUITE + $PACKAGES" \
        - "$IMAGE" >/dev/null
}

echo "[build-base] $BOOTSTRAP $SUITE ($MIRROR) -> $IMAGE" >&2
if [ "$BOOTSTRAP" = mmdebstrap ]; then
    # The sources become the image's /etc/apt/sources.list; docs and man pages are left out.
    mmdebstrap --variant=minbase --include="$PACKAGES" \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/info/*' \
        "$SUITE" - "${SOURCES[@]}" | import_image
else
    ROOTFS=$(mktemp -d "${TMPDIR:-/tmp}/robust-ft-rootfs.XXXXXX")
    trap 'rm -rf "$ROOTFS"' EXIT
    debootstrap --variant=minbase --include="$PACKAGES" --components=main \
        "$SUITE" "$ROOTFS" "$MIRROR" >&2
    # debootstrap installs the suite as released: add updates and security, and upgrade.
    printf '%s\n' "${SOURCES[@]}" >"$ROOTFS"/etc/apt/sources.list
    cp /etc/resolv.conf "$ROOTFS"/etc/resolv.conf
    chroot "$ROOTFS" apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive chroot "$ROOTFS" apt-get -y -qq upgrade >&2
    chroot "$ROOTFS" apt-get clean
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* \
        "$ROOTFS"/usr/share/info/* "$ROOTFS"/var/log/*.log "$ROOTFS"/tmp/*
    : >"$ROOTFS"/etc/resolv.conf
    : >"$ROOTFS"/etc/hostname
    tar -C "$ROOTFS" --numeric-owner -c . | import_image
fi
echo "[build-base] done: $IMAGE" >&2
