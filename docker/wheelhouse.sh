#!/usr/bin/env bash
# Download every wheel the image installs into a directory, on the host (its pip settings,
# proxy and CA certificates apply), for an offline build: WHEELHOUSE=DIR docker/build-image.sh.
# The host's Python must match the image's (3.11 on the bookworm base) and its platform.
#   docker/wheelhouse.sh DIR
#   TORCH_SPEC="torch==2.13.0+cpu torchvision==0.28.0" docker/wheelhouse.sh DIR   # CPU torch
set -euo pipefail
DIR=${1:?usage: docker/wheelhouse.sh DIR}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1}
EXTRA_PIP=${EXTRA_PIP:-psycopg[binary]>=3.2,<4}
mkdir -p "$DIR"
REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
"$PYTHON" -c "import sys, tomllib; d = tomllib.load(open(sys.argv[1], 'rb')); \
print('\n'.join(d['project']['dependencies']))" "$ROOT/pyproject.toml" >"$REQ"
# shellcheck disable=SC2086  # TORCH_SPEC is a list of requirements
"$PYTHON" -m pip download -q -d "$DIR" $TORCH_SPEC -r "$REQ" "$EXTRA_PIP" \
    pip "setuptools>=68" wheel
echo "[wheelhouse] $(find "$DIR" -name '*.whl' | wc -l) wheels in $DIR" >&2
