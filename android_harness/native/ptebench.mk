# ptebench (the .pte runner) against the pinned executorch wheel's C++ runtime: `make host` builds
# build/host/ptebench (rpath to the virtualenv's wheel), `make android` cross-builds
# build/arm64/ptebench against the same release's aarch64 wheel for the bundle (android.mk).
PTEBENCH_VERSION := 0.1.0
PTE_SOURCES      := ptebench.cpp pte_plan.cpp pte_isolate.cpp
PTE_HEADERS      := pte_plan.h pte_isolate.h pte_profile.h json.h
HOST_CXX         ?= g++
ANDROID_CXX      ?= aarch64-linux-gnu-g++
PTE_CXXFLAGS     := -O2 -std=c++17 -Wall -Wextra -Wno-unused-parameter -Wno-deprecated-declarations \
                    -DC10_USING_CUSTOM_GENERATED_MACROS -DET_EVENT_TRACER_ENABLED \
                    -DPTEBENCH_VERSION='"$(PTEBENCH_VERSION)"' -DEXECUTORCH_VERSION='"$(EXECUTORCH_VERSION)"' \
                    -I$(ET_INCLUDE) -I$(ET_INCLUDE)/executorch/runtime/core/portable_type/c10
# The XNNPACK delegate and the kernels register themselves from static initialisers: keep every
# library NEEDED even though ptebench names none of their symbols.
PTE_LIBS         := -Wl,--push-state,--no-as-needed -lexecutorch -lexecutorch_backend_xnnpack \
                    -lexecutorch_threadpool -lexecutorch_kernels_optimized -Wl,--pop-state -lpthread

host: $(BUILD)/host/ptebench

$(BUILD)/host/pte_json.o: json.c json.h | executorch-host-check
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS) -c -o $@ json.c

$(BUILD)/host/ptebench: $(PTE_SOURCES) $(PTE_HEADERS) $(BUILD)/host/pte_json.o ptebench.mk | executorch-host-check
	$(HOST_CXX) $(PTE_CXXFLAGS) -o $@ $(PTE_SOURCES) $(BUILD)/host/pte_json.o \
	  -L$(ET_HOST_LIB) -Wl,-rpath,$(ET_HOST_LIB) $(PTE_LIBS)

$(BUILD)/arm64/pte_json.o: json.c json.h
	@mkdir -p $(dir $@)
	$(ANDROID_CC) $(CFLAGS) -c -o $@ json.c

$(BUILD)/arm64/ptebench: $(PTE_SOURCES) $(PTE_HEADERS) $(BUILD)/arm64/pte_json.o ptebench.mk $(ET_ARM64_STAMP) | executorch-host-check
	$(ANDROID_CXX) $(PTE_CXXFLAGS) -o $@ $(PTE_SOURCES) $(BUILD)/arm64/pte_json.o \
	  -L$(ET_ARM64_LIB) -Wl,-rpath-link,$(ET_ARM64_LIB) $(PTE_LIBS)
