# Two entry points for a fresh machine (Debian, Python 3.11, no GPU):
#   make demo   set up, then run the demo on Fashion-MNIST (minutes on a CPU)
#   make test   set up, then run the test suite (slow tests excluded: make test-slow)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: setup demo test test-slow fashion-mnist bench clean

$(BIN)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --disable-pip-version-check -q -c constraints.txt -e '.[dev]'
	touch $@

setup: $(BIN)/.installed

fashion-mnist:
	@bash scripts/install_fashion_mnist.sh

demo: setup fashion-mnist
	$(BIN)/selfsup demo

test: setup
	$(BIN)/python -m pytest

test-slow: setup
	$(BIN)/python -m pytest -m slow

bench: setup
	$(BIN)/python benchmarks/throughput.py
	$(BIN)/python benchmarks/input_pipeline.py

clean:
	rm -rf $(VENV) runs .pytest_cache
