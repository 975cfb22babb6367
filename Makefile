# robust-ft: `make demo` sets everything up and runs the main job; `make test` runs the suite.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
ARCH := $(shell uname -m)
# torch wheels that match torchvision on this platform (CPU runs fine with either build).
ifeq ($(ARCH),aarch64)
TORCH_SPEC ?= torch==2.9.1 torchvision==0.24.1
else
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
endif
DATA_DIR ?= data
export MALLOC_MMAP_THRESHOLD_ ?= 1073741824
export MALLOC_TRIM_THRESHOLD_ ?= 1073741824

.PHONY: setup data demo test test-fast lint format bench bench-setup bench-gpu sweep report tune clean wheel \
	bench-routing estimator-table

$(BIN)/.installed: pyproject.toml
	@command -v $(PY) >/dev/null || { echo "error: $(PY) not found; set PY=/path/to/python3.11"; exit 1; }
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_SPEC)
# setuptools warns on every editable install that a folder named like the package may shadow it
	PYTHONWARNINGS=ignore::UserWarning $(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m robust_ft.helpcache  # `robust-ft fit --help` without importing Lightning
	touch $@

setup: $(BIN)/.installed

data: setup
	$(BIN)/python -m robust_ft.data.fetch --root $(DATA_DIR)

DEMO_ARGS ?=
demo: setup data
	$(BIN)/python -m robust_ft demo --config conf/demo.yaml $(DEMO_ARGS)

test: setup
	$(BIN)/python -m pytest -q --durations=15

test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check robust_ft tests benchmarks
	$(BIN)/ruff format --check robust_ft tests benchmarks

format: setup
	$(BIN)/ruff format robust_ft tests benchmarks
	$(BIN)/ruff check --fix robust_ft tests benchmarks

SWEEP_ARGS ?= --preset fashion_mnist --budget demo
REPORT_ARGS ?=
sweep: setup data
	$(BIN)/python -m robust_ft sweep $(SWEEP_ARGS) --root $(DATA_DIR)

# Rebuild the committed report: MLFLOW_TRACKING_URI=sqlite:///outputs/fmnist_sweep/mlflow.db make report
report: setup
	$(BIN)/python -m robust_ft report --out docs/report $(REPORT_ARGS)

TRIALS ?= 20
tune: setup data
	$(BIN)/python -m robust_ft tune --model lenet5 --dataset fashion_mnist --kind defocus --level 2 --n-trials $(TRIALS) --trial-epochs 5 --then-finetune

$(BIN)/.bench-installed: $(BIN)/.installed
	$(BIN)/pip install -q -e '.[bench]'
	touch $@

bench-setup: $(BIN)/.bench-installed

# Side-by-side throughput ratios, measured in one run; results in benchmarks/results/.
bench: bench-setup wheel  # the wheel: startup.py times the help of a wheel install
	$(BIN)/python benchmarks/distortions.py --out benchmarks/results/distortions.json
	$(BIN)/python benchmarks/training.py --out benchmarks/results/training.json
	$(BIN)/python benchmarks/demo_time.py --out benchmarks/results/demo.json
	$(BIN)/python benchmarks/startup.py --out benchmarks/results/startup.json --before 9eb468d
	$(BIN)/python benchmarks/streaming.py --n 5000 --factor 10 --px 256 --out benchmarks/results/streaming.json

# From study to deployment (README): the routing benchmark from a fresh store, outputs/routing/
# (about 40 min on 2 CPU cores); `make estimator-table` validates the distortion estimator there.
ROUTING_URI ?= sqlite:///$(CURDIR)/outputs/routing/mlflow.db
ROUTING_DATA ?= --data.init_args.train_subset 10000 --data.init_args.val_split 1000 --data.init_args.test_subset 2000
bench-routing: setup data
	mkdir -p outputs/routing
	set -e; export MLFLOW_TRACKING_URI=$(ROUTING_URI); \
	$(BIN)/python -m robust_ft sweep --model lenet5 --dataset fashion_mnist --levels 1,2,3,4 \
	    --first-n 4 --no-retrain --budget demo --train-subset 10000 --name routing --root $(DATA_DIR); \
	$(BIN)/python -m robust_ft fit --config conf/lenet5_fashion_mnist.yaml --config conf/finetune.yaml \
	    --model.first_n 4 --model.init_from latest --data.init_args.distortion.kind combined \
	    --data.init_args.distortion.level 'U(0,4)' --model.finetune.lr 1e-3 \
	    --model.finetune.max_epochs 2 $(ROUTING_DATA) --data.init_args.root $(DATA_DIR); \
	$(BIN)/python -m robust_ft register --from-sweep routing --advise; \
	$(BIN)/python -m robust_ft estimate --train --root $(DATA_DIR); \
	$(BIN)/python -m robust_ft build-router --model lenet5 --dataset fashion_mnist; \
	$(BIN)/python benchmarks/routing.py --out benchmarks/results/routing.json

estimator-table: setup data
	mkdir -p outputs/routing
	export MLFLOW_TRACKING_URI=$(ROUTING_URI); \
	$(BIN)/python -m robust_ft estimate --validate --root $(DATA_DIR) \
	|| { $(BIN)/python -m robust_ft estimate --train --root $(DATA_DIR) \
	     && $(BIN)/python -m robust_ft estimate --validate --root $(DATA_DIR); }

bench-gpu: $(BIN)/.installed  # on a machine with a CUDA GPU (README: Performance, on a GPU)
	$(BIN)/python benchmarks/gpu.py --out benchmarks/results/gpu.json

# A wheel that carries its rendered `fit/validate/test --help`: installed with the versions it was
# built against (pip install dist/robust_ft-*.whl -c dist/constraints.txt), the first --help
# answers without importing Lightning; other versions render it once.
wheel: setup
	rm -rf dist build robust_ft/help_texts
	$(BIN)/python -m robust_ft.helpcache --package --constraints dist/constraints.txt
	$(BIN)/pip wheel -q --no-deps -w dist .
	rm -rf build robust_ft/help_texts
	@ls dist

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache dist build

# ---------------------------------------------------------------- Docker (docs/scale-out.md)
IMAGE ?= robust-ft:latest
COMPOSE_PROFILE ?= gpu
COMPOSE_BIN := $(shell docker compose version >/dev/null 2>&1 && echo "docker compose" || echo docker-compose)
COMPOSE := $(COMPOSE_BIN) -p robust-ft -f docker/compose.yaml --env-file docker/.env
.PHONY: docker-build compose-up compose-down

docker-build:
	docker/build-image.sh $(IMAGE)

docker/.env:
	@umask 077; printf 'POSTGRES_PASSWORD=%s\n' "$$(python3 -c 'import secrets; print(secrets.token_hex(16))')" > $@
	@echo "wrote $@ (random POSTGRES_PASSWORD; keep it out of git)"

compose-up: docker-build docker/.env
	$(COMPOSE) --profile $(COMPOSE_PROFILE) up -d
	@echo "MLflow UI: http://127.0.0.1:5000   logs: $(COMPOSE) logs -f"

compose-down:
	$(COMPOSE) --profile gpu --profile cpu --profile tune down
