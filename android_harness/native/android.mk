# Android arm64 bundle: Debian's arm64 glibc/libgcc/libstdc++ fetched as .debs into a build sysroot,
# convbench and ptebench cross-compiled against the arm64 executorch wheel's libraries (executorch.mk),
# then binaries + loader + libraries + launchers in one directory (see README.md for why not static).
ANDROID_CC      ?= aarch64-linux-gnu-gcc
SYSROOT         := $(BUILD)/sysroot-arm64
DEBS            := $(BUILD)/debs-arm64
BUNDLE          := $(BUILD)/android-arm64
SUDO            := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Runtime closure of convbench and ptebench (readelf -d, re-checked below on every build): the executorch
# wheel's libraries ($(ET_RUNTIME_LIBS), from $(ET_ARM64_LIB); convbench's XNNPACK, pthreadpool and cpuinfo
# are the ones inside them), glibc (libc, libm, libpthread, libdl, the loader), libgcc_s and libstdc++,
# which the wheel's C++ libraries need. Debian's arm64 XNNPACK is no longer part of it.
ARM64_PACKAGES  := libc6 libgcc-s1 libstdc++6
BUNDLE_LIBS     := libc.so.6 libm.so.6 libpthread.so.0 libgcc_s.so.1 libstdc++.so.6 libdl.so.2
ARM64_LIBDIR    := $(SYSROOT)/usr/lib/aarch64-linux-gnu
ARM64_BASE_LIBDIR := $(SYSROOT)/lib/aarch64-linux-gnu

.PHONY: android sysroot-arm64
android: $(BUNDLE)/manifest.json

sysroot-arm64: $(SYSROOT)/.complete

$(SYSROOT)/.complete: android.mk
	@set -e; \
	if ! dpkg --print-foreign-architectures | grep -qx arm64; then \
	  echo "adding the arm64 architecture to dpkg (packages are only downloaded, never installed)"; \
	  $(SUDO) dpkg --add-architecture arm64; \
	  $(SUDO) apt-get update -qq; \
	elif ! apt-cache show libxnnpack0:arm64 >/dev/null 2>&1; then \
	  $(SUDO) apt-get update -qq; \
	fi
	rm -rf $(DEBS) $(SYSROOT) && mkdir -p $(DEBS) $(SYSROOT)
	@# A stale package index names versions the mirror no longer has: refresh once and retry.
	cd $(DEBS) && { apt-get -o APT::Sandbox::User=root download $(addsuffix :arm64,$(ARM64_PACKAGES)) || \
	  { $(SUDO) apt-get update -qq && apt-get -o APT::Sandbox::User=root download $(addsuffix :arm64,$(ARM64_PACKAGES)); }; }
	for deb in $(DEBS)/*.deb; do dpkg -x "$$deb" $(SYSROOT); done
	touch $@

# convbench on the arm64 wheel's XNNPACK (dense and sparse: its NCHW SpMM runs on arm64); the cross
# toolchain's glibc and libstdc++ resolve the wheel libraries' own needs at link time.
$(BUILD)/arm64/convbench: $(SOURCES) $(HEADERS) $(ET_ARM64_STAMP)
	@mkdir -p $(dir $@)
	$(ANDROID_CC) $(CFLAGS) $(CONVBENCH_DEFS) -o $@ $(SOURCES) \
	  -L$(ET_ARM64_LIB) -Wl,-rpath-link,$(ET_ARM64_LIB) $(LIBS)

$(BUNDLE)/manifest.json: $(BUILD)/arm64/convbench convbench.sh $(BUILD)/arm64/ptebench ptebench.sh $(ET_ARM64_STAMP) \
                         $(SYSROOT)/.complete
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)
	cp $(BUILD)/arm64/convbench $(BUILD)/arm64/ptebench convbench.sh ptebench.sh $(BUNDLE)/
	cp -L $(SYSROOT)/lib/ld-linux-aarch64.so.1 $(BUNDLE)/ld-linux-aarch64.so.1
	for lib in $(BUNDLE_LIBS); do \
	  if [ -e $(ARM64_LIBDIR)/$$lib ]; then cp -L $(ARM64_LIBDIR)/$$lib $(BUNDLE)/; \
	  else cp -L $(ARM64_BASE_LIBDIR)/$$lib $(BUNDLE)/; fi; done
	for lib in $(ET_RUNTIME_LIBS); do cp -L $(ET_ARM64_LIB)/$$lib $(BUNDLE)/; done
	chmod 755 $(BUNDLE)/convbench $(BUNDLE)/convbench.sh $(BUNDLE)/ptebench $(BUNDLE)/ptebench.sh \
	  $(BUNDLE)/ld-linux-aarch64.so.1
	@# The bundle must be closed: every NEEDED library of every file is in it.
	@set -e; for f in $(BUNDLE)/convbench $(BUNDLE)/ptebench $(BUNDLE)/*.so*; do \
	  for need in $$(readelf -d "$$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do \
	    [ -e "$(BUNDLE)/$$need" ] || { echo "bundle is missing $$need (needed by $$f)"; exit 1; }; \
	  done; done
	cd $(BUNDLE) && { printf '{"version": "%s", "files": {' "$(VERSION)"; sep=; \
	  for f in $$(ls | grep -v '^manifest.json$$'); do \
	    printf '%s"%s": "%s"' "$$sep" "$$f" "$$(sha256sum "$$f" | cut -d' ' -f1)"; sep=', '; \
	  done; printf '}}\n'; } > ../manifest.json.tmp && mv ../manifest.json.tmp manifest.json
	@echo "android bundle ready in $(BUNDLE)"
