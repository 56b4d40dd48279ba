# ptebench (the .pte runner and the sparse network engine) against the pinned executorch wheel's C++
# runtime and XNNPACK: `make host` builds build/host/ptebench (rpath to the virtualenv's wheel), `make android`
# cross-builds build/arm64/ptebench against the same release's aarch64 wheel for the bundle (android.mk).
# The engine reuses convbench's builds.c (the wheel's XNNPACK, and on the host Debian's 2022 one through
# dlmopen for NCHW convolutions), tensors.c (im2col, layout helpers) and json.c, compiled as C.
PTEBENCH_VERSION := 0.3.1
PTE_SOURCES      := ptebench.cpp pte_plan.cpp pte_isolate.cpp net_file.cpp net_engine.cpp net_ops.cpp net_cluster.cpp
PTE_HEADERS      := pte_plan.h pte_isolate.h pte_profile.h net_file.h net_engine.h net_ops.h net_cluster.h json.h builds.h tensors.h \
                    plan.h xnn_api.h
PTE_C_SOURCES    := json.c builds.c tensors.c
HOST_CXX         ?= g++
ANDROID_CXX      ?= aarch64-linux-gnu-g++
PTE_CXXFLAGS     := -O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-deprecated-declarations \
                    -DC10_USING_CUSTOM_GENERATED_MACROS -DET_EVENT_TRACER_ENABLED \
                    -DPTEBENCH_VERSION='"$(PTEBENCH_VERSION)"' -DEXECUTORCH_VERSION='"$(EXECUTORCH_VERSION)"' \
                    -DXNNPACK_BUILD='"executorch-$(EXECUTORCH_VERSION)"' \
                    -I$(ET_INCLUDE) -I$(ET_INCLUDE)/executorch/runtime/core/portable_type/c10
# Only the host build knows Debian's XNNPACK (the arm64 wheel runs NCHW convolutions itself).
PTE_HOST_DEFS    := $(if $(XNNPACK_DEBIAN_VERSION),-DXNNPACK_DEBIAN_BUILD='"debian-$(XNNPACK_DEBIAN_VERSION)"')
# The XNNPACK delegate and the kernels register themselves from static initialisers: keep every
# library NEEDED even though ptebench names none of their symbols.
PTE_LIBS         := -Wl,--push-state,--no-as-needed -lexecutorch -lexecutorch_backend_xnnpack \
                    -lexecutorch_threadpool -lexecutorch_kernels_optimized -Wl,--pop-state -ldl -lpthread -lm

host: $(BUILD)/host/ptebench

$(BUILD)/host/pte_%.o: %.c $(PTE_HEADERS) | executorch-host-check
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/host/ptebench: $(PTE_SOURCES) $(PTE_HEADERS) $(PTE_C_SOURCES:%.c=$(BUILD)/host/pte_%.o) ptebench.mk | executorch-host-check
	$(HOST_CXX) $(PTE_CXXFLAGS) $(PTE_HOST_DEFS) -o $@ $(PTE_SOURCES) $(PTE_C_SOURCES:%.c=$(BUILD)/host/pte_%.o) \
	  -L$(ET_HOST_LIB) -Wl,-rpath,$(ET_HOST_LIB) $(PTE_LIBS)

$(BUILD)/arm64/pte_%.o: %.c $(PTE_HEADERS)
	@mkdir -p $(dir $@)
	$(ANDROID_CC) $(CFLAGS) -c -o $@ $<

$(BUILD)/arm64/ptebench: $(PTE_SOURCES) $(PTE_HEADERS) $(PTE_C_SOURCES:%.c=$(BUILD)/arm64/pte_%.o) ptebench.mk $(ET_ARM64_STAMP) | executorch-host-check
	$(ANDROID_CXX) $(PTE_CXXFLAGS) -o $@ $(PTE_SOURCES) $(PTE_C_SOURCES:%.c=$(BUILD)/arm64/pte_%.o) \
	  -L$(ET_ARM64_LIB) -Wl,-rpath-link,$(ET_ARM64_LIB) $(PTE_LIBS)
