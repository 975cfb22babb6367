#!/usr/bin/env bash
# Build robust-ft's image from the repository root; builds the base (build-base.sh) first when it
# is the default one and missing.
#   docker/build-image.sh [IMAGE]                        # default robust-ft:latest
# Environment:
#   BASE        base image (default robust-ft-base:bookworm; e.g. python:3.11-slim)
#   TORCH_SPEC  torch requirements (default: the Makefile's torch==2.14.1 torchvision==0.29.1)
#   WHEELHOUSE  a directory of wheels (docker/wheelhouse.sh): pip in the build then uses only
#               these, served on 127.0.0.1:$WHEELHOUSE_PORT (default 8741; the build runs with
#               --network host)
#   DOCKER      docker client (default docker); DOCKER_BUILD_ARGS: more `docker build` flags
set -euo pipefail
IMAGE=${1:-robust-ft:latest}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DOCKER=${DOCKER:-docker}
BASE=${BASE:-robust-ft-base:bookworm}
args=(--build-arg "BASE=$BASE")
[ -n "${TORCH_SPEC:-}" ] && args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")

if [ "$BASE" = robust-ft-base:bookworm ] && ! "$DOCKER" image inspect "$BASE" >/dev/null 2>&1; then
    "$ROOT/docker/build-base.sh" "$BASE"
fi

if [ -n "${WHEELHOUSE:-}" ]; then
    # A fixed port keeps the build args, and so Docker's layer cache, the same between builds.
    port=${WHEELHOUSE_PORT:-8741}
    if ! python3 -c "import socket; socket.socket().bind(('127.0.0.1', $port))" 2>/dev/null; then
        port=$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
    fi
    python3 -m http.server "$port" --bind 127.0.0.1 --directory "$WHEELHOUSE" >/dev/null 2>&1 &
    server=$!
    trap 'kill "$server" 2>/dev/null || true' EXIT
    for _ in $(seq 50); do
        python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$port/')" 2>/dev/null && break
        sleep 0.2
    done
    args+=(--network host --build-arg PIP_NO_INDEX=1
        --build-arg "PIP_FIND_LINKS=http://127.0.0.1:$port/" --build-arg PIP_TRUSTED_HOST=127.0.0.1)
fi

# shellcheck disable=SC2086  # DOCKER_BUILD_ARGS is a list of flags
"$DOCKER" build -f "$ROOT/docker/Dockerfile" -t "$IMAGE" "${args[@]}" ${DOCKER_BUILD_ARGS:-} "$ROOT"
