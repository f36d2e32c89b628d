# Two entry points for a fresh machine:  `make demo` (the explorer on the embedded organism)
# and `make test` (the full test suite). Both create .venv and install everything first.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
PORT   ?= 5006
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install --upgrade pip
	# torch: the CPU wheel on this machine's disk when no torch is present (an unpinned torch pulls CUDA)
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install torch==2.13.0
	$(PIP) install -e '.[all]'
	# lmms-eval pins torchvision (-> a CUDA torch): install it without deps, plus the deps it uses
	$(PIP) install --no-deps lmms-eval==0.7.3
	$(PIP) install loguru jsonlines tenacity zss sqlitedict pytablewriter evaluate
	# a real headless browser for the UI tests (Debian package, not a downloaded build)
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	touch $(STAMP)

demo: install
	$(VENV)/bin/panel serve apps/explorer.py --address 127.0.0.1 --port $(PORT) --allow-websocket-origin 127.0.0.1:$(PORT) --allow-websocket-origin localhost:$(PORT)

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not browser"

bench: install
	$(PY) benchmarks/merge_speed.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
