# segsync — the two commands a newcomer needs are `make demo` and `make test`.
# One debug build serves the tests, the demo and the stage targets.

CARGO    ?= cargo
# Ask cargo where it builds (CARGO_TARGET_DIR, .cargo/config.toml), never assume target/.
TARGET_DIR := $(shell $(CARGO) metadata --no-deps --format-version 1 2>/dev/null | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
BIN      := $(if $(TARGET_DIR),$(TARGET_DIR),target)/debug/segsync
DEMO_DIR := data/demo
PROFILES ?= 1000

.PHONY: build test lint bench simulate sandbox demo extract transform load status clean

build:
	$(CARGO) build

# Unit tests, then end-to-end tests that drive the binary against in-process
# sandboxes. Tests that need root (a tmpfs, chattr +i) are #[ignore]d and run
# here only as root; otherwise they are reported as ignored, never as passed.
test:
	$(CARGO) test --all-targets
	@if [ "$$(id -u)" = 0 ]; then $(CARGO) test --test chaos -- --ignored root_; \
	else echo "make test: not root: the 2 root-only tests (tests/chaos.rs root_*) were not run"; fi
	@if ! command -v mandoc >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  echo "installing mandoc, which lints the man pages"; \
	  (apt-get install -y -qq mandoc >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq mandoc >/dev/null)); fi
	@if command -v mandoc >/dev/null; then $(CARGO) test --test json_reports -- --ignored man_pages_; \
	else echo "make test: no mandoc (and not root to install it): the man-page lint (tests/json_reports.rs man_pages_*) was not run"; fi

# The simulation suite over seeds 1..WORLDS (CI runs 30 of them in `make test`).
# A failing world prints its seed and the command that replays it.
WORLDS ?= 100
FROM ?= 1
simulate:
	SEGSYNC_WORLDS=$(WORLDS) SEGSYNC_WORLDS_FROM=$(FROM) $(CARGO) test --test simulate many_worlds -- --ignored --nocapture

# Not part of `make test`: release build, then every stage against its ceiling.
bench:
	@command -v jq >/dev/null && test -x /usr/bin/time && command -v curl >/dev/null || \
	  { echo "installing jq, time and curl for the benchmarks"; apt-get update -qq && apt-get install -y -qq jq time curl; }
	$(CARGO) build --release --bin segsync --example parse_floor
	TARGET_DIR=$(TARGET_DIR) bash bench/run.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

# Serve the emulator in the foreground; its KEY=VALUE lines can be sourced.
sandbox: build
	$(BIN) sandbox --profiles $(PROFILES)

# The stages, one each. Phony on purpose: make never reruns an earlier stage,
# so a hand-edited customers.csv is never overwritten by make.
extract: build
	$(BIN) extract
transform: build
	$(BIN) transform
load: build
	$(BIN) load
status: build
	$(BIN) status

# Build, start the sandbox on a free port, run the three stages against it in
# their own data directory, show what the sandbox holds, stop the sandbox.
demo: build
	@rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR)
	@set -e; \
	$(BIN) sandbox --profiles $(PROFILES) > $(DEMO_DIR)/sandbox.env 2> $(DEMO_DIR)/sandbox.log & pid=$$!; \
	trap 'kill $$pid 2>/dev/null || true' EXIT; \
	for i in $$(seq 1 100); do grep -q VOUCHERIFY_SECRET_KEY $(DEMO_DIR)/sandbox.env 2>/dev/null && break; sleep 0.1; done; \
	set -a; . ./$(DEMO_DIR)/sandbox.env; set +a; \
	export SEGSYNC_DATA_DIR=$(DEMO_DIR); \
	echo "== sandbox at $$SEGMENT_API_URL with $(PROFILES) synthetic profiles"; \
	$(MAKE) --no-print-directory extract transform load; \
	echo "== status"; $(BIN) status; \
	echo "== the sandbox now holds:"; \
	if command -v curl >/dev/null; then curl -s "$$VOUCHERIFY_API_URL/_sandbox/stats"; echo; \
	else echo "(install curl to see $$VOUCHERIFY_API_URL/_sandbox/stats)"; fi; \
	echo "== files in $(DEMO_DIR): profiles.ndjson, customers.csv, rejected.csv, load-report.csv, ..."

clean:
	find data -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
	$(CARGO) clean
