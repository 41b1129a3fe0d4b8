# xray-daemon: build, test and package. `make help` lists the targets and what each one needs.
#
# The targets mirror the Go daemon's makefile where they make sense (build, test, packaging,
# docker). Packaging tools (cargo-deb, cargo-generate-rpm, zip, gpg, rpm, ...) are installed by
# `make tools` (scripts/install-packaging-tools.sh); the cargo tools go to .tools/bin, which
# this Makefile puts first on PATH.
#
# Variables (override on the command line, e.g. `make dist ARCHS="..." GPG_KEY_ID=...`):
#   ARCHS          Rust target triples that `make dist` builds (default: the host's)
#   RUST_TARGET    Rust target triple for `make deb` / `make rpm` (default: the host's)
#   SKIP_BUILD=1   dist/deb/rpm package the release binary already built instead of running
#                  cargo (fails with a message when it is missing)
#   DIST_DIR       where archives and packages go (default: dist/)
#   GPG_KEY_ID     sign each dist archive with this key (detached, ASCII-armoured .zip.asc)
#   GPG_HOMEDIR    gpg home directory holding the key (default: $GNUPGHOME or ~/.gnupg)
#   GPG_PASSPHRASE_FILE  the key's passphrase, for unattended signing
#   IMAGE          tag of `make docker` (default: xray-daemon:<version>)
#   CARGO_BUILD_FLAGS    extra `cargo build` flags (default: --locked)

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

REPO := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
TOOLS_ROOT ?= $(or $(XRAY_TOOLS_ROOT),$(REPO)/.tools)
export PATH := $(TOOLS_ROOT)/bin:$(PATH)

CARGO ?= cargo
CARGO_BUILD_FLAGS ?= --locked
DOCKER ?= docker
# strip for the binary in the .rpm (cross builds: e.g. STRIP=aarch64-linux-gnu-strip)
STRIP ?= strip
VERSION := $(shell awk -F'"' '/^\[/ { p = ($$0 == "[package]") } p && /^version *=/ { print $$2; exit }' '$(REPO)/Cargo.toml')
HOST_TRIPLE := $(shell rustc -vV 2>/dev/null | sed -n 's/^host: //p')
ARCHS ?= $(HOST_TRIPLE)
RUST_TARGET ?=
DIST_DIR ?= $(REPO)/dist
SKIP_BUILD ?=
IMAGE ?= xray-daemon:$(VERSION)
GPG_KEY_ID ?=
GPG_HOMEDIR ?=
GPG_PASSPHRASE_FILE ?=

# cargo's own target directory (CARGO_TARGET_DIR honoured, as cargo does).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),$(REPO)/target)
# The release binary the packages take: target/release/xray for the host, else
# target/<triple>/release/xray.
RELEASE_BIN := $(TARGET_DIR)/$(if $(RUST_TARGET),$(RUST_TARGET)/)release/xray
TARGET_FLAG := $(if $(RUST_TARGET),--target $(RUST_TARGET))

TOOLS_HINT := run 'make tools' (bash scripts/install-packaging-tools.sh)

# $(call require,COMMAND,HOW TO GET IT): fail with a readable message when COMMAND is missing.
define require
command -v $(1) >/dev/null 2>&1 || { printf 'make %s: needs "%s", which is not on PATH: %s\n' '$@' '$(1)' '$(2)' >&2; exit 127; }
endef

# Builds the release binary unless SKIP_BUILD=1, which only checks that it exists.
define release_binary
if [ "$(SKIP_BUILD)" = "1" ]; then \
    [ -x '$(RELEASE_BIN)' ] || { printf 'make %s: SKIP_BUILD=1 but %s does not exist: run "make build%s" first\n' '$@' '$(RELEASE_BIN)' '$(if $(RUST_TARGET), RUST_TARGET=$(RUST_TARGET))' >&2; exit 1; }; \
else \
    $(call require,$(CARGO),install a Rust toolchain with rustup); \
    echo "+ $(CARGO) build --release $(CARGO_BUILD_FLAGS) --bin xray $(TARGET_FLAG)"; \
    $(CARGO) build --release $(CARGO_BUILD_FLAGS) --bin xray $(TARGET_FLAG); \
fi
endef

.PHONY: help
help: ## list the targets
	@echo "xray-daemon $(VERSION): make <target> [VAR=value ...]"
	@echo
	@awk -F':.*## ' '/^[a-z][a-z-]*:.*## / { printf "  %-10s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
	@echo
	@echo "Variables: ARCHS, RUST_TARGET, SKIP_BUILD=1, DIST_DIR, GPG_KEY_ID, GPG_HOMEDIR,"
	@echo "GPG_PASSPHRASE_FILE, IMAGE, CARGO_BUILD_FLAGS (see the top of the Makefile and docs/install.md)."

.PHONY: build
build: ## release binary target/release/xray (needs: cargo)
	@$(call require,$(CARGO),install a Rust toolchain with rustup)
	XRAY_SYMBOL_ORDER=on $(CARGO) build --release $(CARGO_BUILD_FLAGS) --bin xray $(TARGET_FLAG)
	@'$(RELEASE_BIN)' -v 2>/dev/null || true

.PHONY: test
test: ## the project's test command, bash scripts/test.sh (installs its own dependencies)
	bash '$(REPO)/scripts/test.sh'

.PHONY: bench
bench: ## benchmarks, bash scripts/bench.sh
	@[ -f '$(REPO)/scripts/bench.sh' ] || { echo "make bench: scripts/bench.sh does not exist yet" >&2; exit 1; }
	bash '$(REPO)/scripts/bench.sh'

.PHONY: dist
dist: ## zip archives + .sha256 (+ .zip.asc with GPG_KEY_ID) in dist/ (needs: cargo, zip; gpg to sign)
	@$(call require,zip,$(TOOLS_HINT) or apt-get install zip)
	@$(call require,sha256sum,part of coreutils)
	@$(if $(GPG_KEY_ID),$(call require,gpg,$(TOOLS_HINT) or apt-get install gnupg; or leave GPG_KEY_ID empty to skip signing))
	ARCHS='$(ARCHS)' DIST_DIR='$(DIST_DIR)' SKIP_BUILD='$(SKIP_BUILD)' CARGO='$(CARGO)' \
	CARGO_BUILD_FLAGS='$(CARGO_BUILD_FLAGS)' GPG_KEY_ID='$(GPG_KEY_ID)' GPG_HOMEDIR='$(GPG_HOMEDIR)' \
	GPG_PASSPHRASE_FILE='$(GPG_PASSPHRASE_FILE)' bash '$(REPO)/scripts/dist.sh'

.PHONY: deb
deb: ## Debian package dist/xray-daemon_<version>-1_<arch>.deb (needs: cargo-deb, dpkg-dev, strip)
	@$(call require,cargo-deb,$(TOOLS_HINT))
	@$(call require,dpkg-shlibdeps,$(TOOLS_HINT) or apt-get install dpkg-dev)
	@$(call require,strip,$(TOOLS_HINT) or apt-get install binutils)
	@$(release_binary)
	@mkdir -p '$(DIST_DIR)'
	$(CARGO) deb --no-build $(TARGET_FLAG) --output '$(DIST_DIR)/'

.PHONY: rpm
# cargo-generate-rpm packs binaries as they are: it gets a stripped copy (the shared
# target/release/xray stays untouched) through a target dir that holds only that copy.
rpm: ## RPM package dist/xray-daemon-<version>-1.<arch>.rpm (needs: cargo-generate-rpm, strip)
	@$(call require,cargo-generate-rpm,$(TOOLS_HINT))
	@$(call require,$(STRIP),$(TOOLS_HINT) or apt-get install binutils)
	@$(release_binary)
	@mkdir -p '$(DIST_DIR)' '$(TARGET_DIR)/rpm-staging/$(if $(RUST_TARGET),$(RUST_TARGET)/)release'
	cp '$(RELEASE_BIN)' '$(TARGET_DIR)/rpm-staging/$(if $(RUST_TARGET),$(RUST_TARGET)/)release/xray'
	$(if $(RUST_TARGET),-)$(STRIP) '$(TARGET_DIR)/rpm-staging/$(if $(RUST_TARGET),$(RUST_TARGET)/)release/xray'
	$(CARGO) generate-rpm --target-dir '$(TARGET_DIR)/rpm-staging' $(TARGET_FLAG) --output '$(DIST_DIR)/'

.PHONY: packages
packages: deb rpm ## both Linux packages

.PHONY: docker
docker: ## container image xray-daemon:<version> (IMAGE=...) with docker build (needs: a reachable Docker engine)
	@$(call require,$(DOCKER),install Docker (docker build needs a running engine))
	@$(DOCKER) info >/dev/null 2>&1 || { echo "make docker: no Docker engine reachable ('$(DOCKER) info' failed): 'docker build' needs a running engine. The Dockerfile can still be linted offline with hadolint." >&2; exit 1; }
	@# .dockerignore keeps .git out of the build context: hand the commit over for `xray -v`.
	DOCKER_BUILDKIT=1 $(DOCKER) build --build-arg XRAY_GIT_COMMIT="$$(git -C '$(REPO)' rev-parse --short=12 HEAD 2>/dev/null || echo unknown)" -t '$(IMAGE)' '$(REPO)'

.PHONY: tools
tools: ## install the packaging tools (apt packages; cargo-deb, cargo-generate-rpm into .tools/)
	bash '$(REPO)/scripts/install-packaging-tools.sh'

.PHONY: version
version: ## print the package version
	@echo '$(VERSION)'

.PHONY: clean
clean: ## remove dist/ and packaging scratch (never cargo's build output)
	rm -rf '$(DIST_DIR)' '$(TARGET_DIR)/debian' '$(TARGET_DIR)/xray-daemon' '$(TARGET_DIR)/generate-rpm' '$(TARGET_DIR)/rpm-staging'
