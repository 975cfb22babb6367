#!/bin/sh
# The image's entry point (under tini): robust-ft's commands run `robust-ft`; anything else
# (mlflow, torchrun, python, bash) runs as given.
#   docker run robust-ft fit --config conf/lenet5_fashion_mnist.yaml
#   docker run robust-ft mlflow server ...      docker run -it robust-ft bash
set -e
# ./mlruns (local MLflow artifacts) links into /app/outputs; a fresh volume lacks the target.
if [ -L /app/mlruns ] && [ ! -e /app/mlruns ]; then mkdir -p /app/outputs/mlruns 2>/dev/null || true; fi
case "${1:-}" in
    "" | -h | --help | fit | validate | test | demo | show-distortions | sweep | report | tune | advise | estimate | register | build-router | make-folder)
        exec robust-ft "$@"
        ;;
esac
exec "$@"
