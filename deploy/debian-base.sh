#!/bin/sh
# The base image the Dockerfiles start from, made from Debian's packages, for a host that can
# reach a Debian mirror but no image registry (air-gapped, or behind a proxy that only lets
# package mirrors through). Needs root, debootstrap and a Docker engine; about a minute.
#   deploy/debian-base.sh [TAG]     (default tuneyard-base:bookworm)
# then build with BASE_IMAGE=TAG (see deploy/README.md). DEBIAN_MIRROR picks the mirror.
set -eu
tag=${1:-tuneyard-base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python-is-python3,ca-certificates \
  bookworm "$root" "$mirror"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["python"]' - "$tag"
