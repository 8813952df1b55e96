# edgeloop: `make demo` runs the whole loop locally, `make test` runs the tests.
# Both run `setup` first; setup is idempotent (stamp files skip what is done).
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
EDGELOOP := $(VENV)/bin/edgeloop
LS_VENV := .tools/label-studio
LS_TEMPLATE := .tools/label-studio-template/label_studio.sqlite3
TRITON_VENV := .tools/triton-client
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST_ARGS ?=
# Top-level folders installed as edgeloop.<name> (see [tool.setuptools.package-dir] in pyproject.toml).
FEATURE_DIRS := components pipelines serving stream monitoring deploy manifests
TYPECHECK_VIEW := build/typecheck
# podman reads its configuration from the project (runc runtime, ulimits, storage under .tools/).
CONTAINERS_DIR := .tools/containers
export CONTAINERS_CONF := $(CURDIR)/$(CONTAINERS_DIR)/containers.conf
export CONTAINERS_STORAGE_CONF := $(CURDIR)/$(CONTAINERS_DIR)/storage.conf
# `make images` options: BASE_IMAGE=..., TORCH_INDEX_URL=..., TORCH_WHEELS=<dir of wheels>, KUBECTL=<binary>
IMAGE_ARGS = $(if $(BASE_IMAGE),--base-image $(BASE_IMAGE)) $(if $(TORCH_INDEX_URL),--torch-index-url $(TORCH_INDEX_URL)) $(if $(TORCH_WHEELS),--torch-wheels $(TORCH_WHEELS)) $(if $(KUBECTL),--kubectl $(KUBECTL))

.PHONY: help setup up down status demo test test-images test-unit lint bench lock compile clean-state schemas images base-image

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

setup: $(VENV)/.installed node_modules/.installed $(LS_VENV)/.installed $(LS_TEMPLATE) .tools/.debs $(CONTAINERS_DIR)/containers.conf $(TRITON_VENV)/.installed ## Install everything (venv, Node deps, Label Studio venv, mosquitto); idempotent

$(VENV)/.installed: pyproject.toml requirements/constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (or run make PYTHON=/path/to/python3.11)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip==26.*'
	$(PY) -m pip install -q -c requirements/constraints.txt -e '.[dev]'
	touch $@

node_modules/.installed: package.json package-lock.json
	@command -v node >/dev/null || { echo "error: Node.js is missing (Azurite needs it): install Node.js >= 20 (e.g. apt-get install nodejs npm), then re-run make setup"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(LS_VENV)/.installed: requirements/label-studio.lock
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade 'pip==26.*'
	$(LS_VENV)/bin/python -m pip install -q -r requirements/label-studio.lock
	touch $@

# Triton's clients (REST + gRPC) for the container tests: own venv (see the lock file's header).
$(TRITON_VENV)/.installed: requirements/triton-client.lock
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install -q --upgrade 'pip==26.*'
	$(TRITON_VENV)/bin/python -m pip install -q -r requirements/triton-client.lock
	touch $@

$(LS_TEMPLATE): $(LS_VENV)/.installed $(VENV)/.installed
	$(EDGELOOP) stack prepare

# Debian packages: the MQTT broker, Chromium + ChromeDriver for the labelers' browser test, podman
# (with runc, catatonit for --init, buildah/skopeo, debootstrap for the offline base image) for the images,
# wrk and h2load (nghttp2-client), the serving benchmark's REST and gRPC load generators.
DEBS := mosquitto chromium chromium-driver podman runc catatonit buildah skopeo debootstrap wrk nghttp2-client
.tools/.debs: Makefile
	@mkdir -p .tools
	@missing=$$(for p in $(DEBS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi
	touch $@

# crun (podman's default) cannot start containers on mixed cgroup v1/v2 hosts: runc works everywhere;
# raising ulimits is not always permitted: the defaults are this shell's hard limits. podman's event log
# (what its API's log streams wait on for a container's end) is the project's own and never rotated:
# a rotation while a stream waits can lose the container's "died" event.
$(CONTAINERS_DIR)/containers.conf: Makefile
	@mkdir -p $(CONTAINERS_DIR)
	printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=32768:32768"]\n[engine]\nruntime = "runc"\nevents_logger = "file"\nevents_logfile_path = "%s/events.log"\nevents_logfile_max_size = 0\n' "$$(ulimit -Hn)" "$$(ulimit -Hn)" "$(CURDIR)/$(CONTAINERS_DIR)" > $@
	printf '[storage]\ndriver = "overlay"\ngraphroot = "%s/storage"\nrunroot = "%s/run"\n' "$(CURDIR)/$(CONTAINERS_DIR)" "$(CURDIR)/$(CONTAINERS_DIR)" > $(CONTAINERS_STORAGE_CONF)

images: setup ## Build the container images (tagged by content hash; OCI archives + index in build/images/)
	$(EDGELOOP) images build --out build/images $(IMAGE_ARGS)

base-image: setup ## Build the base image from Debian packages (for machines without registry access)
	$(EDGELOOP) images base

up: setup ## Start the local stack (Azurite, MLflow, Label Studio, Mosquitto)
	$(EDGELOOP) stack up

down: ## Stop the local stack (data is kept under .edgeloop/)
	@[ -x $(EDGELOOP) ] && $(EDGELOOP) stack down || true

status: ## Show the local stack
	$(EDGELOOP) stack status

demo: setup ## The whole loop on the sample data, locally (TASK=detection: the defect detector's loop)
	$(EDGELOOP) demo $(if $(TASK),--task $(TASK))

test: setup test-images ## Run the whole test suite (unit + integration against the real stack + e2e)
	$(PY) -m pytest tests $(PYTEST_ARGS)

# The images the container tests run, built before the tests (a no-op when their content hash is current)
# so that no test waits on a build; with no working container engine the container tests skip, saying so.
TEST_IMAGES := edgeloop-pipeline edgeloop-serving
test-images: setup ## Build the images the container tests run (pipeline, serving)
	@if $(PY) -c 'from edgeloop.pipelines import image_build as b; b.use_project_engine_config(); b.container_engine()' 2>/dev/null; then \
	  echo "building the images the container tests run (once; cached by content hash): $(TEST_IMAGES)"; \
	  $(EDGELOOP) images build --out build/images $(foreach i,$(TEST_IMAGES),--only $(i)); \
	else echo "no working container engine: the container tests will be skipped"; fi

test-unit: setup ## Only the fast unit tests
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

lint: setup ## ruff (lint + format check) and mypy; fails on errors
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	@# mypy knows no package-dir mapping: check a symlink view laid out as the installed `edgeloop` package.
	rm -rf $(TYPECHECK_VIEW) && mkdir -p $(TYPECHECK_VIEW)/edgeloop
	for f in edgeloop/*; do ln -s "$(CURDIR)/$$f" $(TYPECHECK_VIEW)/edgeloop/; done
	for p in $(FEATURE_DIRS); do ln -s "$(CURDIR)/$$p" $(TYPECHECK_VIEW)/edgeloop/$$p; done
	cd $(TYPECHECK_VIEW) && "$(CURDIR)/$(VENV)/bin/mypy" --config-file "$(CURDIR)/pyproject.toml" -p edgeloop

bench: setup ## Benchmarks: serving vs bare ONNX Runtime and stock KServe, streams, training (JSON + PNG under benchmarks/results/)
	$(PY) -m benchmarks.run_all

compile: setup ## Compile the Kubeflow pipelines (training, batch scoring) to pipelines/compiled/
	$(EDGELOOP) pipeline compile --out pipelines/compiled/training_pipeline.yaml
	$(EDGELOOP) batch compile --out pipelines/compiled/batch_pipeline.yaml

lock: ## Re-resolve requirements/constraints.txt from requirements/*.in (then review the diff)
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv && .lock-venv/bin/pip install -q --upgrade 'pip==26.*'
	.lock-venv/bin/pip install -q -r requirements/base.in -r requirements/dev.in
	(echo "# Resolved set for the main venv (pip freeze). Regenerate with: make lock"; .lock-venv/bin/pip freeze --exclude-editable) > requirements/constraints.txt
	rm -rf .lock-venv

clean-state: down ## Delete the local stack's data (.edgeloop/)
	rm -rf .edgeloop

schemas: ## Re-download the vendored upstream schemas at the commits in edgeloop/schemas/sources.txt
	grep -v '^#' edgeloop/schemas/sources.txt | while read -r local repo commit path; do \
	  curl -fsSL "https://raw.githubusercontent.com/$$repo/$$commit/$$path" -o "edgeloop/schemas/$$local" || exit 1; \
	done
