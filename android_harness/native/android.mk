# Android arm64 bundle: Debian's arm64 XNNPACK/pthreadpool/cpuinfo/glibc fetched as .debs into a
# build sysroot, convbench cross-compiled against them, then binary + loader + libraries + launcher
# in one directory (see README.md for why not a static binary).
ANDROID_CC      ?= aarch64-linux-gnu-gcc
SYSROOT         := $(BUILD)/sysroot-arm64
DEBS            := $(BUILD)/debs-arm64
BUNDLE          := $(BUILD)/android-arm64
SUDO            := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Runtime closure of convbench (readelf -d, re-checked below on every build): the three
# libraries, glibc (libc, libm, libpthread, the loader) and libgcc_s, which libXNNPACK needs.
ARM64_PACKAGES  := libxnnpack0 libxnnpack-dev libpthreadpool0 libpthreadpool-dev libcpuinfo0 libcpuinfo-dev \
                   libc6 libgcc-s1
BUNDLE_LIBS     := libXNNPACK.so.0 libpthreadpool.so.0 libcpuinfo.so.0 \
                   libc.so.6 libm.so.6 libpthread.so.0 libgcc_s.so.1
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

$(BUILD)/arm64/convbench: $(SOURCES) $(HEADERS) $(SYSROOT)/.complete
	@mkdir -p $(dir $@)
	$(ANDROID_CC) $(CFLAGS) -DCONVBENCH_VERSION='"$(VERSION)"' \
	  -DXNNPACK_VERSION='"'"$$(dpkg-deb -f $(DEBS)/libxnnpack0_*_arm64.deb Version)"'"' \
	  -I$(SYSROOT)/usr/include -L$(ARM64_LIBDIR) -Wl,-rpath-link,$(ARM64_LIBDIR) \
	  -o $@ $(SOURCES) $(LIBS)

$(BUNDLE)/manifest.json: $(BUILD)/arm64/convbench convbench.sh
	rm -rf $(BUNDLE) && mkdir -p $(BUNDLE)
	cp $(BUILD)/arm64/convbench $(BUNDLE)/convbench
	cp convbench.sh $(BUNDLE)/convbench.sh
	cp -L $(SYSROOT)/lib/ld-linux-aarch64.so.1 $(BUNDLE)/ld-linux-aarch64.so.1
	for lib in $(BUNDLE_LIBS); do \
	  if [ -e $(ARM64_LIBDIR)/$$lib ]; then cp -L $(ARM64_LIBDIR)/$$lib $(BUNDLE)/; \
	  else cp -L $(ARM64_BASE_LIBDIR)/$$lib $(BUNDLE)/; fi; done
	chmod 755 $(BUNDLE)/convbench $(BUNDLE)/convbench.sh $(BUNDLE)/ld-linux-aarch64.so.1
	@# The bundle must be closed: every NEEDED library of every file is in it.
	@set -e; for f in $(BUNDLE)/convbench $(BUNDLE)/*.so*; do \
	  for need in $$(readelf -d "$$f" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do \
	    [ -e "$(BUNDLE)/$$need" ] || { echo "bundle is missing $$need (needed by $$f)"; exit 1; }; \
	  done; done
	cd $(BUNDLE) && { printf '{"version": "%s", "files": {' "$(VERSION)"; sep=; \
	  for f in $$(ls | grep -v '^manifest.json$$'); do \
	    printf '%s"%s": "%s"' "$$sep" "$$f" "$$(sha256sum "$$f" | cut -d' ' -f1)"; sep=', '; \
	  done; printf '}}\n'; } > ../manifest.json.tmp && mv ../manifest.json.tmp manifest.json
	@echo "android bundle ready in $(BUNDLE)"
