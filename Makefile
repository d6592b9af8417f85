# lowshell — common tasks. `make guest && cargo run -p host` starts the shell.

GUESTS   := invite-customer customer-projector invite-resolver
TARGET   := wasm32-wasip2
MODULES  := modules
CARGO    ?= cargo
# Honour a shared target dir (several worktrees, one build cache).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

.PHONY: all guest target run test http-test audit browser fmt lint check clean

all: guest

# The wasm32-wasip2 target, added once.
target:
	@rustup target list --installed 2>/dev/null | grep -qx $(TARGET) || rustup target add $(TARGET)

# Each guest is built on its own: a component exports one world, and building
# guests together would unify the features that pick it.
guest: target
	@mkdir -p $(MODULES)
	@for g in $(GUESTS); do \
		$(CARGO) build --quiet --release --target $(TARGET) -p $$g || exit 1; \
		cp $(TARGET_DIR)/$(TARGET)/release/$$(echo $$g | tr - _).wasm $(MODULES)/$$g.wasm; \
	done
	@echo "components in $(MODULES)/: $(GUESTS)"

run: guest
	$(CARGO) run -p host -- run

test: guest
	$(CARGO) test --workspace
	$(MAKE) http-test

# Against the shell binary on a free port (tests/http/run.sh): the
# GraphQL-over-HTTP audit (npm graphql-http) and GraphiQL in headless Chromium.
http-test: guest
	tests/http/run.sh all

audit: guest
	tests/http/run.sh audit

browser: guest
	tests/http/run.sh browser

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: lint test

clean:
	rm -rf $(MODULES)
	$(CARGO) clean
