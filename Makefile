VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install up test lint bench load clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# The CPU build of torch, exactly: any other spec resolves to a multi-GB CUDA build.
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

up: $(STAMP)
	$(VENV)/bin/xrx up

test: lint
	$(VENV)/bin/python -m pytest -ra

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy gateway vad_worker stt_bridge tts_bridge agent_bridge services shared tests bench

bench: $(STAMP)
	$(VENV)/bin/python -m bench

load: $(STAMP)
	$(PIP) install -e '.[load]'
	$(VENV)/bin/locust -f tests/load/locustfile.py

clean:
	rm -rf $(VENV)
