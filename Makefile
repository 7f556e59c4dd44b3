# libkrun-sev: build, install and test.
#
#   make                 build the library (release)
#   make install         install the library, header, pkg-config file, guest bundle (also as
#                        libkrunfw-sev.so.4), krun-sev, krunfw_measurement and krun-kbs under
#                        $(DESTDIR)$(PREFIX)
#   make test            every test: format, lints, unit and integration tests, C API test,
#                        the install test (make install PREFIX=/usr into a DESTDIR),
#                        the guest bundle against its pins, fuzz smoke, the test host's KVM
#                        and guest-boot tests; ends with a summary
#   make demo            run a confidential workload end to end (TEE=snp|sev-es|sev,
#                        TEE_BACKEND=model|hardware; see README.md)
#   make pin-bundle      rewrite firmware/bundle.pins after a deliberate change to the guest
#                        init or kernel (every launch digest changes with it)
# make test and make demo first install the missing Debian packages of ci/packages.txt (as
# root; otherwise they stop and say what to run).

PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
PKGCONFIGDIR ?= $(LIBDIR)/pkgconfig
DESTDIR ?=
# Where the guest bundle is installed, and the built-in default of the library and of every
# binary that reads the bundle (krun-sev measure, mkcw --register, run): decided here only,
# exported to every cargo build this Makefile runs (build.rs bakes it in).
BUNDLE_INSTALL_DIR := $(LIBDIR)/krun-sev
export KRUN_SEV_BUNDLE_DEFAULT := $(BUNDLE_INSTALL_DIR)
CARGO ?= cargo
# Python test oracles (ci/test-requirements.txt: sev-snp-measure, pyca/cryptography, unicorn) live in
# a virtualenv outside the checkout.
KRUN_SEV_CACHE ?= $(HOME)/.cache/krun-sev
VENV ?= $(KRUN_SEV_CACHE)/venv
export KRUN_SEV_PYTHON ?= $(VENV)/bin/python
export KRUN_LUKS_PYTHON ?= $(KRUN_SEV_PYTHON)
export KRUN_RESETVEC_PYTHON ?= $(KRUN_SEV_PYTHON)
# Tests needing an oracle are ignored by a plain `cargo test` without one (build.rs); here
# they must run, and fail if the oracle is missing.
export KRUN_TEST_REQUIRE_ORACLES = 1

# Recipes that tee test output into logs must still fail when the tests fail.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c

VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
MAJOR := $(firstword $(subst ., ,$(VERSION)))
LIB_FILE := libkrun-sev.so.$(VERSION)
BUILD_DIR := build
# Test logs `make test` summarizes (ci/test-summary.sh).
TEST_LOGS := $(BUILD_DIR)/test-logs

.PHONY: all lib bundle bundle-pins pin-bundle krunfw krunfw-from-bundle install install-lib install-bundle install-krunfw install-bin install-test test test-packages test-deps check unit-tests c-api-test fuzz-smoke testhost-tests demo clean

all: lib

lib:
	$(CARGO) build --release -p krun-sev
	mkdir -p $(BUILD_DIR)
	cp target/release/libkrun_sev.so $(BUILD_DIR)/$(LIB_FILE)

install-lib: lib
	install -d $(DESTDIR)$(LIBDIR) $(DESTDIR)$(INCLUDEDIR) $(DESTDIR)$(PKGCONFIGDIR)
	install -m 0755 $(BUILD_DIR)/$(LIB_FILE) $(DESTDIR)$(LIBDIR)/$(LIB_FILE)
	ln -sfn $(LIB_FILE) $(DESTDIR)$(LIBDIR)/libkrun-sev.so.$(MAJOR)
	ln -sfn libkrun-sev.so.$(MAJOR) $(DESTDIR)$(LIBDIR)/libkrun-sev.so
	install -m 0644 include/libkrun.h $(DESTDIR)$(INCLUDEDIR)/libkrun.h
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@LIBDIR@|$(LIBDIR)|' \
	    -e 's|@INCLUDEDIR@|$(INCLUDEDIR)|' -e 's|@VERSION@|$(VERSION)|' \
	    include/libkrun-sev.pc.in > $(DESTDIR)$(PKGCONFIGDIR)/libkrun-sev.pc

# The guest bundle, where the library looks for it by default.
install-bundle: bundle
	install -d $(DESTDIR)$(BUNDLE_INSTALL_DIR)
	install -m 0644 $(BUILD_DIR)/bundle/bzImage $(BUILD_DIR)/bundle/initrd.cpio.zst \
	    $(BUILD_DIR)/bundle/manifest.json $(DESTDIR)$(BUNDLE_INSTALL_DIR)/

# The guest bundle as a library, libkrunfw-sev.so.4: buildah mkcw looks for it by that name
# and passes its path to krunfw_measurement (docs/compatibility.md).
KRUNFW_FILE := libkrunfw-sev.so.4
KRUNFW_BUNDLE ?= $(BUILD_DIR)/bundle
krunfw: bundle
	$(MAKE) --no-print-directory krunfw-from-bundle

# The library from an already built bundle in $(KRUNFW_BUNDLE) (ci/testhost-tests.sh).
krunfw-from-bundle:
	@mkdir -p $(BUILD_DIR)
	$(CC) -O2 -fPIC -shared -Wall -Wextra -Werror -Wa,-I,$(KRUNFW_BUNDLE) \
	    -Wl,-soname,$(KRUNFW_FILE) -Wl,-z,noexecstack \
	    -o $(BUILD_DIR)/$(KRUNFW_FILE) firmware/krunfw/krunfw.c

install-krunfw: krunfw
	install -d $(DESTDIR)$(LIBDIR)
	install -m 0644 $(BUILD_DIR)/$(KRUNFW_FILE) $(DESTDIR)$(LIBDIR)/$(KRUNFW_FILE)

# The krun-sev command, buildah's krunfw_measurement and the krun-kbs key broker, built with
# the library's default bundle directory (KRUN_SEV_BUNDLE_DEFAULT above; krun-sev measure
# and mkcw --register compute over it).
install-bin:
	$(CARGO) build --release -p krun-sev-cli -p krun-kbs
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 target/release/krun-sev target/release/krunfw_measurement \
	    target/release/krun-kbs $(DESTDIR)$(PREFIX)/bin/

install: install-lib install-bundle install-krunfw install-bin

check:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The Debian packages make test needs (ci/packages.txt): installed when missing as root,
# otherwise a stop with the command to run.
test-packages:
	ci/install-deps.sh test

# Python test oracles, pinned; installed once into $(VENV).
test-deps:
	@if ! "$(KRUN_SEV_PYTHON)" -c 'import sevsnpmeasure, cryptography, unicorn' 2>/dev/null; then \
	    echo "test-deps: creating $(VENV) from ci/test-requirements.txt"; \
	    python3 -m venv "$(VENV)" && "$(VENV)/bin/pip" install -q -r ci/test-requirements.txt; \
	fi

unit-tests: test-deps
	@mkdir -p $(TEST_LOGS)
	$(CARGO) test --workspace 2>&1 | tee $(TEST_LOGS)/unit-tests.log

c-api-test:
	tests/c/run.sh

# make install PREFIX=/usr into a DESTDIR; the installed binaries and library, in a chroot of
# it, find the bundle at their one built-in default (ci/install-test.sh; writes only there).
install-test:
	@mkdir -p $(TEST_LOGS)
	ci/install-test.sh 2>&1 | tee $(TEST_LOGS)/install-test.log

# Guest bundle: the cached guest kernel, the static init and the manifest (build/bundle).
bundle:
	firmware/build-bundle.sh $(BUILD_DIR)/bundle

# The bundle must match the SHA-256 pinned in firmware/bundle.pins (launch digests are computed
# in advance from it); pin-bundle rewrites the pins from this tree's bundle.
bundle-pins: bundle
	firmware/bundle-pins.sh check $(BUILD_DIR)/bundle

pin-bundle: bundle
	firmware/bundle-pins.sh update $(BUILD_DIR)/bundle

# Guest-boot tests in the nested-KVM test host (builds the bundle first).
testhost-tests:
	@mkdir -p $(TEST_LOGS)
	KRUN_SEV_BUNDLE_DIR=$(CURDIR)/$(BUILD_DIR)/bundle ci/testhost-tests.sh 2>&1 | tee $(TEST_LOGS)/testhost-tests.log

# The fuzz targets' logic over seeded random inputs and the saved corpora (fuzz/README.md;
# coverage-guided runs are separate).
fuzz-smoke:
	@mkdir -p $(TEST_LOGS)
	cd fuzz && $(CARGO) test --release 2>&1 | tee $(CURDIR)/$(TEST_LOGS)/fuzz-smoke.log

# In this order (the prerequisites run left to right): packages first, then the quick checks;
# the bundle pins before the long tests, so a changed bundle fails within minutes. Ends with a
# summary: tests run outside and inside the test host, and a check that every test a plain
# `cargo test` ignores passed in the test host (nothing skipped).
test: test-packages check bundle-pins unit-tests c-api-test install-test fuzz-smoke testhost-tests
	@ci/test-summary.sh $(TEST_LOGS)

# The main job (README.md): key broker, encrypted image, registration, confidential launch.
# TEE=snp|sev-es|sev; TEE_BACKEND=model (the PSP model; inside the test host when this machine
# cannot boot Linux guests with KVM) or hardware (real SEV, directly). scripts/demo.sh.
TEE ?= snp
TEE_BACKEND ?= model
demo:
	TEE=$(TEE) TEE_BACKEND=$(TEE_BACKEND) scripts/demo.sh

clean:
	$(CARGO) clean
	rm -rf $(BUILD_DIR)
