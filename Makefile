# jcw — one entry point for setting up, testing, demoing and benchmarking the kit.
# `make setup` is idempotent: apt packages (sudo when not root), a virtualenv, the kit in
# editable mode, the host runner and the Android arm64 runner bundle.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
APT_PACKAGES := build-essential pkg-config libxnnpack-dev libpthreadpool-dev libcpuinfo-dev \
                gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static adb libusb-1.0-0 dpkg-dev
NATIVE := android_harness/native

.PHONY: setup apt venv lock lint runner runner-android demo test test-fast bench clean

setup: apt venv runner runner-android

apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

# The exact versions of requirements.lock, then the kit itself (editable, with no resolving of its ranges);
# `pip check` fails if the lock misses a requirement of an installed package (tests/test_packaging.py
# checks the extras against the lock too).
$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e '.[search,dev,lab]'
	$(PY) -m pip check
	touch $@

venv: $(VENV)/.installed

# After changing a range in pyproject.toml: resolve it into the virtualenv, then write its exact versions.
lock:
	$(PY) -m pip install -q -e '.[search,dev,lab]'
	$(PY) tools/write_lock.py

# ruff (rules in pyproject.toml) and the stage-order import contract (.importlinter).
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

runner:
	$(MAKE) -C $(NATIVE) host

runner-android:
	$(MAKE) -C $(NATIVE) android

demo: setup
	$(VENV)/bin/jcw demo

test: setup lint
	$(PY) -m pytest -q -ra

test-fast: venv runner
	$(PY) -m pytest -q -ra -m "not slow and not device"

bench: setup
	$(PY) benchmarks/run_all.py

clean:
	$(MAKE) -C $(NATIVE) clean
	rm -rf $(VENV) .pytest_cache
