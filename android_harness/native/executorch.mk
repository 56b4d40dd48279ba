# The pinned ExecuTorch wheel as a C++ SDK (runtime, XNNPACK delegate with the whole xnn_* API, thread
# pool): host libraries come from the kit's virtualenv, arm64 libraries from the same release's
# manylinux_2_28_aarch64 wheel, downloaded (never installed) into the build tree.
EXECUTORCH_VERSION ?= $(shell sed -n 's/.*"executorch\(==\|>=\)\([0-9.]*\).*/\2/p' ../../pyproject.toml | head -n 1)
VENV_PYTHON        ?= $(abspath ../../.venv/bin/python)
ET_HOST_ROOT       := $(shell $(VENV_PYTHON) -c 'import executorch, sys; sys.stdout.write(list(executorch.__path__)[0])' 2>/dev/null)
ET_INCLUDE         := $(ET_HOST_ROOT)/include
ET_HOST_LIB        := $(ET_HOST_ROOT)/lib
ET_ARM64_WHEEL_DIR := $(BUILD)/wheel-arm64
ET_ARM64_ROOT      := $(ET_ARM64_WHEEL_DIR)/executorch
ET_ARM64_LIB       := $(ET_ARM64_ROOT)/lib
ET_ARM64_STAMP     := $(ET_ARM64_WHEEL_DIR)/.complete
# The runtime libraries a runner needs at run time (closure checked when a bundle is assembled).
ET_RUNTIME_LIBS    := libexecutorch.so libexecutorch_backend_xnnpack.so libexecutorch_threadpool.so \
                      libexecutorch_kernels_optimized.so libexecutorch_etdump.so

.PHONY: executorch-host-check executorch-arm64
executorch-host-check:
	@test -n "$(ET_HOST_ROOT)" && test -f "$(ET_HOST_LIB)/libexecutorch.so" || \
	  { echo "the executorch wheel is not installed in the virtualenv ($(VENV_PYTHON)); run \`make venv\` first"; exit 1; }

executorch-arm64: $(ET_ARM64_STAMP)

$(ET_ARM64_STAMP): executorch.mk
	@test -n "$(EXECUTORCH_VERSION)" || { echo "cannot read the executorch pin from pyproject.toml"; exit 1; }
	rm -rf $(ET_ARM64_WHEEL_DIR) && mkdir -p $(ET_ARM64_WHEEL_DIR)
	@$(VENV_PYTHON) -m pip download -q --no-deps --only-binary=:all: --platform manylinux_2_28_aarch64 \
	  --python-version 3.11 executorch==$(EXECUTORCH_VERSION) -d $(ET_ARM64_WHEEL_DIR) 2>$(ET_ARM64_WHEEL_DIR)/pip.log || \
	  { echo "could not download the aarch64 executorch==$(EXECUTORCH_VERSION) wheel from PyPI (see $(ET_ARM64_WHEEL_DIR)/pip.log); the Android bundle needs its libraries"; exit 1; }
	cd $(ET_ARM64_WHEEL_DIR) && $(VENV_PYTHON) -c 'import sys, zipfile, glob; \
	  z = zipfile.ZipFile(glob.glob("executorch-*aarch64.whl")[0]); \
	  names = [n for n in z.namelist() if n.startswith("executorch/lib/lib") and n.endswith(".so")]; \
	  z.extractall(".", names); print("extracted", len(names), "arm64 executorch libraries")'
	touch $@
