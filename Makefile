# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install jemalloc demo test lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# jemalloc: `longdoc serve` runs Triton on it when installed, so memory that huge requests
# took goes back to the kernel (RELIABILITY.md). Installed here when apt-get can (as root);
# otherwise serving falls back to glibc malloc and the jemalloc memory test skips, saying so.
JEMALLOC_LIB := $(wildcard /usr/lib/*-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2)
jemalloc:
ifeq ($(JEMALLOC_LIB),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		echo "installing libjemalloc2 (apt-get)"; \
		timeout 300 apt-get install -y -q libjemalloc2 > /dev/null 2>&1 \
		|| { timeout 300 apt-get update -q > /dev/null 2>&1 \
		     && timeout 300 apt-get install -y -q libjemalloc2 > /dev/null 2>&1; } \
		|| echo "warning: could not install libjemalloc2; glibc malloc it is"; \
	else \
		echo "note: libjemalloc2 not installed (apt-get install libjemalloc2); glibc malloc it is"; \
	fi
endif

demo: $(STAMP) jemalloc
	$(BIN)/longdoc demo

test: $(STAMP) jemalloc
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q tests

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info
