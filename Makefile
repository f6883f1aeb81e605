VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed

# torch, the CPU build exactly (requirements/torch-cpu.txt): resolved from PyPI, torch is a
# multi-GB CUDA build. pip looks for it on the PyTorch CPU index (a network mirror of it can be
# set here) and in pip's own sources (a machine's local wheels); an index it cannot reach only
# costs a warning. GPU: `make install TORCH=torch==2.13.0 TORCH_INDEX_URL=<a CUDA index>`.
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu
TORCH ?= $(shell cat requirements/torch-cpu.txt)
# uv (lock files, the floors check) stops at an index it cannot reach: it takes the CPU torch
# from pip's local wheels when the machine has them (PIP_FIND_LINKS), else from the index.
TORCH_SOURCE ?= $(if $(PIP_FIND_LINKS),--find-links $(PIP_FIND_LINKS),--extra-index-url $(TORCH_INDEX_URL))
LOCK := $(UV) pip compile -q --python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
	--override requirements/torch-cpu.txt --no-emit-package torch $(TORCH_SOURCE)

.PHONY: install up test ci lint check-deploy test-floors lock bench load clean

# Installs exactly the lock file (hashes checked), then torch, which the lock leaves out. In
# this order torch's dependencies are already there (from the lock), so pip asks the torch
# index for torch alone.
$(STAMP): pyproject.toml requirements/dev.txt requirements/torch-cpu.txt
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install --require-hashes --no-deps -r requirements/dev.txt
	$(PIP) install --extra-index-url $(TORCH_INDEX_URL) '$(TORCH)'
	$(PIP) install --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/xrx up

test: lint
	$(VENV)/bin/python -m pytest -ra

# What CI runs (.ci/run): the tests, the deployment files checked by real tools, and the
# dependency floors.
ci: test check-deploy test-floors

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy gateway vad_worker stt_bridge tts_bridge agent_bridge services shared tests bench

# Regenerate the lock files after changing pyproject.toml's dependencies.
lock: $(STAMP)
	$(LOCK) pyproject.toml --extra dev -o requirements/dev.txt
	$(LOCK) pyproject.toml -o requirements/full.txt
	$(PY) deploy/docker/requirements.py --light pyproject.toml > requirements/light.in
	$(LOCK) requirements/light.in -o requirements/light.txt
	$(UV) pip compile -q --python-version 3.11 --generate-hashes --custom-compile-command "make lock" \
		requirements/tools.in -o requirements/tools.txt

# --- the deployment files, checked by the tools that consume them (deploy/README.md) --------
TOOLS := .venv-tools
$(TOOLS)/.installed: requirements/tools.txt
	python3 -m venv $(TOOLS)
	$(TOOLS)/bin/pip install -q --require-hashes --no-deps -r requirements/tools.txt
	touch $@

check-deploy: $(TOOLS)/.installed
	$(TOOLS)/bin/check-jsonschema --builtin-schema vendor.compose-spec docker-compose.yml
	kubectl kustomize deploy/k8s > $(TOOLS)/k8s.yaml
	$(TOOLS)/bin/kubernetes-validate --strict --quiet $(TOOLS)/k8s.yaml
	for o in deploy/k8s/overlays/*/; do \
		kubectl kustomize $$o > $(TOOLS)/overlay.yaml && \
		$(TOOLS)/bin/kubernetes-validate --strict --quiet $(TOOLS)/overlay.yaml || exit 1; done
	$(TOOLS)/bin/hadolint deploy/docker/Dockerfile
	$(TOOLS)/bin/checkov --quiet --compact --config-file deploy/checkov.yaml \
		--framework kubernetes -f $(TOOLS)/k8s.yaml
	$(TOOLS)/bin/checkov --quiet --compact --config-file deploy/checkov.yaml \
		--framework dockerfile -f deploy/docker/Dockerfile

# --- the lowest versions pyproject.toml allows, in their own virtualenv, with the quick tests
FLOORS := .venv-floors
test-floors: $(STAMP)
	rm -rf $(FLOORS)
	python3 -m venv $(FLOORS)
	$(UV) pip compile -q --python-version 3.11 --resolution lowest-direct --no-header \
		--override requirements/torch-cpu.txt $(TORCH_SOURCE) pyproject.toml --extra dev \
		-o $(FLOORS)/requirements.txt
	$(UV) pip install -q --python $(FLOORS)/bin/python $(TORCH_SOURCE) -r $(FLOORS)/requirements.txt
	$(FLOORS)/bin/python -m pytest -q -m "not voice" -p no:cacheprovider

bench: $(STAMP)
	$(VENV)/bin/python -m bench

load: $(STAMP)
	$(PIP) install -e '.[load]'
	$(VENV)/bin/locust -f tests/load/locustfile.py

clean:
	rm -rf $(VENV) $(TOOLS) $(FLOORS)
