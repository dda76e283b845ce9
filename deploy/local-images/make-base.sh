#!/bin/sh
# Build a local Debian bookworm base with Python 3.11 and import it into Docker, for hosts that can
# reach Debian's package mirror but no container registry (no python:3.11-slim-bookworm to pull).
#   deploy/local-images/make-base.sh [IMAGE]          # default IMAGE: localhost/ocrmesh-base:bookworm
# Then: docker build --build-arg BASE_IMAGE=IMAGE -f deploy/docker/Dockerfile ...
# Needs root, debootstrap and a docker CLI (DOCKER_HOST is honoured). MIRROR defaults to the Debian
# mirror apt on this host already uses. BASE_TARBALL, when set, caches the root filesystem there.
set -eu
IMAGE="${1:-localhost/ocrmesh-base:bookworm}"
SUITE="${SUITE:-bookworm}"
DOCKER="${DOCKER:-docker}"
if [ -z "${MIRROR:-}" ]; then
    MIRROR="$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
        2>/dev/null | sed -n -E 's#^(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?(https?://[^ ]*/debian)/?([[:space:]].*)?$#\3#p' \
        | head -n 1 || true)"
    MIRROR="${MIRROR:-http://deb.debian.org/debian}"
fi
# python3-venv for the build stage's venv, passwd for useradd; nothing else beyond minbase.
PACKAGES="python3,python3-venv,passwd"
# What the public python image sets too: `docker import` starts from an empty config, and an image's
# `ENV PATH=/opt/venv/bin:$PATH` would otherwise lose /usr/bin.
import_image() {
    "$DOCKER" import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' - "$IMAGE"
}

if [ -n "${BASE_TARBALL:-}" ] && [ -s "$BASE_TARBALL" ]; then
    echo "make-base: importing the cached root filesystem $BASE_TARBALL as $IMAGE"
    import_image < "$BASE_TARBALL"
    exit 0
fi

ROOTFS="$(mktemp -d "${TMPDIR:-/tmp}/ocrmesh-rootfs.XXXXXX")"
trap 'rm -rf "$ROOTFS"' EXIT
echo "make-base: debootstrap $SUITE from $MIRROR into $ROOTFS"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" >"$ROOTFS.log" 2>&1 \
    || { tail -n 30 "$ROOTFS.log" >&2; rm -f "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# What an image does not need: package lists and caches, docs, man pages, non-English locales.
rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin "$ROOTFS"/var/cache/apt/archives/*.deb \
    "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/info/* \
    "$ROOTFS"/var/log/*.log "$ROOTFS"/var/log/apt/*
find "$ROOTFS"/usr/share/locale -mindepth 1 -maxdepth 1 ! -name 'locale.alias' -exec rm -rf {} +
# The image resolves names through Docker's DNS, not this host's.
: > "$ROOTFS/etc/resolv.conf"
printf 'deb %s %s main\ndeb %s %s-updates main\n' "$MIRROR" "$SUITE" "$MIRROR" "$SUITE" \
    > "$ROOTFS/etc/apt/sources.list"
if [ -n "${BASE_TARBALL:-}" ]; then
    tar --numeric-owner -C "$ROOTFS" -c . > "$BASE_TARBALL"
    import_image < "$BASE_TARBALL"
else
    tar --numeric-owner -C "$ROOTFS" -c . | import_image
fi
echo "make-base: $IMAGE"
