# Two entry points for a fresh machine:  `make demo` (the explorer on the embedded organism; open the URL it prints)
# and `make test` (the full test suite). Both create .venv and install everything first, from the lock.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip -q --disable-pip-version-check
PORT   ?= 5006
LAB_PORT ?= 8888
NODEPS := requirements/no-deps.txt
# Which torch build the venv gets: cpu (default: requirements/lock.txt, torch 2.13.0+cpu) or cuda
# (requirements/lock-cuda.txt: the same pins with PyPI's torch 2.13.0, a CUDA 13 build, and the nvidia-*
# libraries it pulls in). `make lock` writes both; tests/test_install.py checks they differ only there.
TORCH ?= cpu
LOCK_cpu  := requirements/lock.txt
LOCK_cuda := requirements/lock-cuda.txt
LOCK   := $(or $(LOCK_$(TORCH)),$(error TORCH=$(TORCH): choose TORCH=cpu or TORCH=cuda))
STAMP  := $(VENV)/.installed-$(TORCH)
# Tools of the install itself, pinned here (not in the lock: they install the lock).
PIP_VERSION := 26.3
UV_VERSION  := 0.13.9
# The CPU torch (2.13.0+cpu) is not on PyPI: it comes from a local wheel directory when there is one (this
# project's machines keep it in /opt/wheels), else from PyTorch's CPU wheel index. Override either, or the
# whole source: make install TORCH_WHEELS="--find-links DIR". PyPI's own torch is the CUDA build.
TORCH_WHEEL_DIR ?= /opt/wheels
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
CPU_TORCH_SOURCE := $(if $(wildcard $(TORCH_WHEEL_DIR)/torch-*.whl),--find-links $(TORCH_WHEEL_DIR),--extra-index-url $(TORCH_CPU_INDEX))
TORCH_WHEELS ?= $(if $(filter cpu,$(TORCH)),$(CPU_TORCH_SOURCE))
UPGRADE ?=
# uv lives in its own venv, so that .venv holds exactly the lock
LOCK_VENV := .venv-lock

.PHONY: install lock demo lab notebooks test test-fast bench gpu-check gpu-wheels realpair realpair-study clean

install: $(STAMP)

# Exactly the packages of the lock (--no-deps: nothing resolved at install time), then lmms-eval without
# its deps (see requirements/no-deps.txt), then lfm itself, built with the lock's setuptools.
$(STAMP): pyproject.toml $(LOCK) $(NODEPS) Makefile
	test -x $(PY) || python3.11 -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install pip==$(PIP_VERSION)
	$(PIP) install --require-hashes --no-deps $(TORCH_WHEELS) -r $(LOCK)
	$(PIP) install --require-hashes --no-deps -r $(NODEPS)
	$(PIP) install --no-deps --no-build-isolation -e .
	$(PY) -m pip check | grep -v '^lmms-eval ' || true
	# a real headless browser for the UI tests (Debian package, not a downloaded build)
	command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	# real text for the real pair's items (lfm/realpair/data.py): countries -> capitals, WordNet glosses
	test -e /usr/share/misc/countries.gz -a -e /usr/share/wordnet/data.noun || \
		(apt-get update -qq && apt-get install -y -qq miscfiles wordnet-base >/dev/null)
	touch $(STAMP)

# Re-resolve both locks from pyproject.toml's extras + requirements/extra.in. Pins already in a lock are kept;
# to upgrade one on purpose: make lock UPGRADE="--upgrade-package panel" (or UPGRADE=--upgrade for all).
# The CUDA lock is the CPU lock's pins (as constraints) with torch replaced by PyPI's (requirements/torch-cuda.txt);
# it needs only PyPI, the CPU lock also the CPU torch's source (CPU_TORCH_SOURCE).
COMPILE = $(LOCK_VENV)/bin/uv pip compile pyproject.toml requirements/extra.in --extra all --generate-hashes \
	--python-version 3.11 --python-platform x86_64-manylinux_2_28 $(UPGRADE) --quiet
lock:
	test -x $(LOCK_VENV)/bin/python || python3.11 -m venv $(LOCK_VENV) || python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip -q install uv==$(UV_VERSION)
	$(COMPILE) $(CPU_TORCH_SOURCE) --custom-compile-command "make lock" -o $(LOCK_cpu)
	grep -oE '^[A-Za-z0-9][A-Za-z0-9_.-]*==[^ ]+' $(LOCK_cpu) | grep -v '^torch==' > $(LOCK_VENV)/cpu-lock-pins.txt
	$(COMPILE) --overrides requirements/torch-cuda.txt -c $(LOCK_VENV)/cpu-lock-pins.txt \
		--custom-compile-command "make lock TORCH=cuda" -o $(LOCK_cuda)

# prints the URL to open, with this start's token (lfm.explorer.gate; `LFM_TOKEN=... make demo` for your own)
demo: install
	$(VENV)/bin/lfm explore --port $(PORT)

lab: install
	$(VENV)/bin/lfm lab notebooks --port $(LAB_PORT)

# run the four notebooks on the embedded organism and write them back executed, outputs and figures included
# (notebooks/execute.py; tests/test_notebooks.py re-runs them and compares). After editing a notebook: run this.
notebooks: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) notebooks/execute.py

test: install
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 $(PY) -m pytest -q

test-fast: install
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "not slow and not browser"

# SmolLM2-135M-Instruct (PyPI wheel) + the LLaVA tuned from it, cached in ~/.cache/lfm/realpair (REALPAIR_OUT);
# preset paper (default; REALPAIR_PRESET=replay or overshoot for the earlier recipes), then the regime checks, one line
# each (lfm/realpair/checks.py; exit 1 when one fails). ~4 GB RAM; see README for the time on 2 cores.
# Last two lines: base: DIR / tuned: DIR
REALPAIR_OUT ?=
REALPAIR_SEED ?= 0
REALPAIR_PRESET ?= paper
REALPAIR_ARGS = --preset $(REALPAIR_PRESET) --seed $(REALPAIR_SEED) $(if $(REALPAIR_OUT),--out $(REALPAIR_OUT))
realpair: install
	$(VENV)/bin/lfm realpair build $(REALPAIR_ARGS)

# the paper's study on it -> lfm/data/realpair/results.{json,md} (resumable; 39 min of 2 quiet cores at 200 items per
# task). A pair whose regime checks fail is studied too ('-': the build's FAIL lines are printed, and the report
# carries them): the study says what such a pair does
realpair-study: install
	-$(VENV)/bin/lfm realpair build $(REALPAIR_ARGS)
	HF_HUB_OFFLINE=1 $(VENV)/bin/lfm realpair study $(REALPAIR_ARGS)

bench: install
	$(PY) benchmarks/merge_speed.py

# The GPU check (docs/devices.md), for a GPU box's own Python (torch + transformers there; no .venv, no registry):
# the gpu tests, an 8B-shaped pair generated on the GPU, merges and ResidentPair timed; JSON into $OUT (or
# benchmarks/results). Missing packages come from GPU_WHEELS, prepared beforehand with `make gpu-wheels`.
GPU_PY     ?= python3
GPU_WHEELS ?= benchmarks/_wheels
GPU_SIZE   ?= 8b
gpu-check:
	test ! -d $(GPU_WHEELS) || $(GPU_PY) -m pip install -q --no-index --find-links $(GPU_WHEELS) \
		$$(ls $(GPU_WHEELS) | sed 's/-[0-9].*//' | tr '_' '-' | sort -u)
	HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=$(CURDIR) $(GPU_PY) benchmarks/gpu_check.py --device cuda \
		--size $(GPU_SIZE) --out $${OUT:-benchmarks/results}

gpu-wheels:
	benchmarks/gpu_wheels.sh $(GPU_WHEELS)

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts
