# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages demo test test-fast lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# System packages used when present: libjemalloc2 (`longdoc serve` runs Triton on it, so
# memory that huge requests took goes back to the kernel) and nginx-light (the test of a
# request-size limit in front of Triton). RELIABILITY.md has both. Installed here with
# apt-get when run as root; otherwise serving uses glibc malloc and those tests skip,
# saying so.
NEED_JEMALLOC := $(if $(wildcard /usr/lib/*-linux-gnu/libjemalloc.so.2 /usr/lib64/libjemalloc.so.2),,libjemalloc2)
NEED_NGINX := $(if $(wildcard /usr/sbin/nginx /usr/bin/nginx /usr/local/sbin/nginx),,nginx-light)
SYSTEM_PACKAGES := $(strip $(NEED_JEMALLOC) $(NEED_NGINX))
system-packages:
ifneq ($(SYSTEM_PACKAGES),)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		echo "installing $(SYSTEM_PACKAGES) (apt-get)"; \
		{ timeout 300 apt-get install -y -q $(SYSTEM_PACKAGES) > /dev/null 2>&1 \
		  || { timeout 300 apt-get update -q > /dev/null 2>&1 \
		       && timeout 300 apt-get install -y -q $(SYSTEM_PACKAGES) > /dev/null 2>&1; }; } \
		|| echo "warning: could not install $(SYSTEM_PACKAGES); see RELIABILITY.md"; \
		if command -v service > /dev/null; then service nginx stop > /dev/null 2>&1 || true; fi; \
	else \
		echo "note: $(SYSTEM_PACKAGES) not installed (apt-get install $(SYSTEM_PACKAGES))"; \
	fi
endif

demo: $(STAMP) system-packages
	$(BIN)/longdoc demo

test: $(STAMP) system-packages
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests

# The fast layer: unit tests without a server or a real export, under a minute.
test-fast: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -m "not integration and not slow" --timeout 120 tests

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
