# lowshell — common tasks. `make guest && cargo run -p host` starts the shell.

# The Rust functions: every crate in guest-functions/ built as a component
# (`crate-type = ["cdylib", ...]`), including those `host new` made.
GUESTS   := $(sort $(patsubst guest-functions/%/Cargo.toml,%,$(shell grep -l '"cdylib"' guest-functions/*/Cargo.toml 2>/dev/null)))
# Misbehaving guests for the shell's own tests.
FIXTURES := misbehave misbehave-resolver misbehave-projector lean-mismatch
TARGET   := wasm32-wasip2
MODULES  := modules
CARGO    ?= cargo
# Honour a shared target dir (several worktrees, one build cache).
TARGET_DIR := $(or $(CARGO_TARGET_DIR),target)

# Functions in Python and JavaScript (docs/writing-functions.md), built with
# componentize-py and componentize-js at pinned versions, which the build
# installs itself into $(TOOLS) (a venv, and node_modules from
# guest-functions/sdk/js/package-lock.json). They go to $(POLYGLOT)/ with a copy
# of the Rust handler: projects/polyglot.toml runs them; the Rust components
# stay the defaults. Rebuilt only when their sources, the SDK or the WIT change.
COMPONENTIZE_PY := 0.25.0
TOOLS    := $(TARGET_DIR)/polyglot-tools
POLYGLOT := $(MODULES)/polyglot
PY_TOOL  := $(TOOLS)/py/.componentize-py-$(COMPONENTIZE_PY)
# A Python function into $@: $(call componentize_py,WORLD,FOLDER,MODULE).
componentize_py = $(TOOLS)/py/bin/componentize-py -d wit -w $(1) componentize \
	-p $(2) -p guest-functions/sdk/python $(3) -o $@.tmp >/dev/null
JS_TOOL  := $(TOOLS)/js/node_modules/.lowshell-lock
WIT      := wit/functions.wit
# Each: folder in guest-functions/, then the scenarios `make scenarios` runs against it.
POLYGLOT_GUESTS := customer-projector-js invite-resolver-py
# The Python projector, built against the `function-lean` world into
# $(POLYGLOT)/python/ (beside the JavaScript one it can replace).
PY_PROJECTOR := $(POLYGLOT)/python/customer-projector.wasm
# Functions `host new` made in Python or JavaScript: a folder in guest-functions/
# whose function.py, resolver.py, function.js or resolver.js names the world it
# implements (a Python function.py: `function-lean`); each is built into
# $(MODULES)/<folder>.wasm.
NEW_PY     := $(patsubst guest-functions/%/resolver.py,%,$(wildcard guest-functions/*/resolver.py))
NEW_PY_FN  := $(patsubst guest-functions/%/function.py,%,$(wildcard guest-functions/*/function.py))
NEW_JS_FN  := $(patsubst guest-functions/%/function.js,%,$(wildcard guest-functions/*/function.js))
NEW_JS_RES := $(patsubst guest-functions/%/resolver.js,%,$(wildcard guest-functions/*/resolver.js))
NEW_POLYGLOT := $(NEW_PY) $(NEW_PY_FN) $(NEW_JS_FN) $(NEW_JS_RES)
JS_SDK     := $(wildcard guest-functions/sdk/js/*.js) guest-functions/sdk/js/componentize.mjs

.PHONY: all guest polyglot graphiql-assets target run test scenarios http-test audit browser bench fmt lint check clean pg

all: guest

# The wasm32-wasip2 target, added once.
target:
	@rustup target list --installed 2>/dev/null | grep -qx $(TARGET) || rustup target add $(TARGET)

# Each guest is built on its own: a component exports one world, and building
# guests together would unify the features that pick it.
guest: target
	@mkdir -p $(MODULES)
	@for g in $(GUESTS); do \
		$(CARGO) build --quiet --profile guest --target $(TARGET) -p $$g || exit 1; \
		cp $(TARGET_DIR)/$(TARGET)/guest/$$(echo $$g | tr - _).wasm $(MODULES)/$$g.wasm; \
	done
	@mkdir -p $(MODULES)/v2 $(MODULES)/fixtures
	@$(CARGO) build --quiet --profile guest --target $(TARGET) -p invite-customer --features v2
	@cp $(TARGET_DIR)/$(TARGET)/guest/invite_customer.wasm $(MODULES)/v2/invite-customer.wasm
	@# Versions of the misbehaving projector: fixed, and with other inputs.
	@for f in fixed wide; do \
		$(CARGO) build --quiet --profile guest --target $(TARGET) -p misbehave-projector --features $$f || exit 1; \
		cp $(TARGET_DIR)/$(TARGET)/guest/misbehave_projector.wasm $(MODULES)/fixtures/misbehave-projector-$$f.wasm; \
	done
	@for g in $(FIXTURES); do \
		$(CARGO) build --quiet --profile guest --target $(TARGET) -p $$g || exit 1; \
		cp $(TARGET_DIR)/$(TARGET)/guest/$$(echo $$g | tr - _).wasm $(MODULES)/fixtures/$$g.wasm; \
	done
	@$(CARGO) build --quiet --profile guest --target $(TARGET) -p misbehave --features meta-trap
	@cp $(TARGET_DIR)/$(TARGET)/guest/misbehave.wasm $(MODULES)/fixtures/meta-trap.wasm
	@$(CARGO) build --quiet --profile guest --target $(TARGET) -p misbehave --features schema-clash
	@cp $(TARGET_DIR)/$(TARGET)/guest/misbehave.wasm $(MODULES)/fixtures/schema-clash.wasm
	@# The plain build last, so the target folder holds the default versions.
	@$(CARGO) build --quiet --profile guest --target $(TARGET) -p invite-customer
	@$(MAKE) --no-print-directory polyglot
	@echo "components in $(MODULES)/: $(GUESTS); version 2 of invite-customer in $(MODULES)/v2/; test fixtures in $(MODULES)/fixtures/; Python and JavaScript functions in $(POLYGLOT)/"

# The Python and JavaScript functions, and the Rust handler they work with.
polyglot: $(POLYGLOT)/customer-projector.wasm $(POLYGLOT)/invite-resolver.wasm $(POLYGLOT)/invite-customer.wasm \
	$(PY_PROJECTOR) \
	$(foreach g,$(NEW_POLYGLOT),$(MODULES)/$(g).wasm)

$(POLYGLOT)/invite-customer.wasm: $(MODULES)/invite-customer.wasm
	@mkdir -p $(POLYGLOT)
	@cmp -s $< $@ || cp $< $@

$(MODULES)/invite-customer.wasm:
	@$(MAKE) --no-print-directory guest

$(PY_TOOL):
	@command -v python3 >/dev/null || { echo "error: python3 (with venv) is needed to build the Python functions" >&2; exit 1; }
	@rm -rf $(TOOLS)/py
	python3 -m venv $(TOOLS)/py
	$(TOOLS)/py/bin/pip install --quiet --disable-pip-version-check componentize-py==$(COMPONENTIZE_PY)
	@touch $@

$(JS_TOOL): guest-functions/sdk/js/package.json guest-functions/sdk/js/package-lock.json
	@command -v npm >/dev/null || { echo "error: node and npm are needed to build the JavaScript functions" >&2; exit 1; }
	@mkdir -p $(TOOLS)/js
	@cp guest-functions/sdk/js/package.json guest-functions/sdk/js/package-lock.json $(TOOLS)/js/
	cd $(TOOLS)/js && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

$(POLYGLOT)/invite-resolver.wasm: $(wildcard guest-functions/invite-resolver-py/*.py) guest-functions/sdk/python/low.py $(WIT) $(PY_TOOL)
	@mkdir -p $(POLYGLOT)
	$(call componentize_py,resolver,guest-functions/invite-resolver-py,invite_resolver)
	@mv $@.tmp $@

$(PY_PROJECTOR): $(wildcard guest-functions/customer-projector-py/*.py) guest-functions/sdk/python/low.py $(WIT) $(PY_TOOL)
	@mkdir -p $(dir $@)
	$(call componentize_py,function-lean,guest-functions/customer-projector-py,customer_projector)
	@mv $@.tmp $@

$(POLYGLOT)/customer-projector.wasm: $(wildcard guest-functions/customer-projector-js/*.js) $(wildcard guest-functions/sdk/js/*.js) guest-functions/sdk/js/componentize.mjs $(WIT) $(JS_TOOL)
	@mkdir -p $(POLYGLOT)
	node guest-functions/sdk/js/componentize.mjs $(TOOLS)/js guest-functions/customer-projector-js/customer-projector.js function $@.tmp
	@mv $@.tmp $@

# The functions `host new` made in Python and JavaScript (see NEW_PY above).
$(MODULES)/%.wasm: guest-functions/%/function.py guest-functions/sdk/python/low.py $(WIT) $(PY_TOOL)
	$(call componentize_py,function-lean,guest-functions/$*,function)
	@mv $@.tmp $@

$(MODULES)/%.wasm: guest-functions/%/resolver.py guest-functions/sdk/python/low.py $(WIT) $(PY_TOOL)
	$(call componentize_py,resolver,guest-functions/$*,resolver)
	@mv $@.tmp $@

$(MODULES)/%.wasm: guest-functions/%/function.js $(JS_SDK) $(WIT) $(JS_TOOL)
	node guest-functions/sdk/js/componentize.mjs $(TOOLS)/js $< function $@.tmp
	@mv $@.tmp $@

$(MODULES)/%.wasm: guest-functions/%/resolver.js $(JS_SDK) $(WIT) $(JS_TOOL)
	node guest-functions/sdk/js/componentize.mjs $(TOOLS)/js $< resolver $@.tmp
	@mv $@.tmp $@

run: guest
	$(CARGO) run -p host -- run

# Each guest's scenarios (guest-functions/<guest>/scenarios) against its
# component, in the stub host: no database, bus or server.
scenarios: guest
	@status=0; for g in $(GUESTS); do \
		$(CARGO) run --quiet -p host -- test $(MODULES)/$$g.wasm guest-functions/$$g/scenarios || status=1; \
	done; \
	for g in $(POLYGLOT_GUESTS); do \
		$(CARGO) run --quiet -p host -- test $(POLYGLOT)/$${g%-*}.wasm guest-functions/$$g/scenarios || status=1; \
	done; \
	$(CARGO) run --quiet -p host -- test $(PY_PROJECTOR) guest-functions/customer-projector-py/scenarios || status=1; \
	for g in $(NEW_POLYGLOT); do \
		$(CARGO) run --quiet -p host -- test $(MODULES)/$$g.wasm guest-functions/$$g/scenarios || status=1; \
	done; exit $$status

# Includes the Postgres tests: they start a throwaway cluster themselves
# (or use DATABASE_URL when it is set).
test: guest scenarios
	$(CARGO) test --workspace
	$(CARGO) test -p invite-customer --features v2
	$(CARGO) test -p host --features native-baseline --test native
	$(MAKE) http-test

# Against the shell binary on a free port (tests/http/run.sh): the
# GraphQL-over-HTTP audit (npm graphql-http) and GraphiQL in headless Chromium.
http-test: guest
	tests/http/run.sh all

audit: guest
	tests/http/run.sh audit

browser: guest
	tests/http/run.sh browser

# GraphiQL's files, embedded in the shell (host/src/http/graphiql/README.md),
# from the npm packages pinned by tests/http/package-lock.json.
graphiql-assets:
	cd tests/http && npm ci --no-audit --no-fund --loglevel=error
	cp tests/http/node_modules/graphiql/graphiql.min.js tests/http/node_modules/graphiql/graphiql.min.css \
		tests/http/node_modules/react/umd/react.production.min.js \
		tests/http/node_modules/react-dom/umd/react-dom.production.min.js host/src/http/graphiql/
	cp tests/http/node_modules/graphiql/LICENSE host/src/http/graphiql/LICENSE-graphiql
	cp tests/http/node_modules/react/LICENSE host/src/http/graphiql/LICENSE-react

# A throwaway local Postgres in the foreground; prints the DATABASE_URL. Ctrl-C deletes it.
pg:
	@scripts/pg.sh

# Benchmarks (release build): WebAssembly against the native baseline and the
# hand-written services (bench/handwritten, started by the e2e and postgres
# benches as a process of its own), side by side in one run; writes
# BENCHMARKS.md. LOWSHELL_BENCH_SECONDS=1 shortens each load level (a smoke run).
bench: guest
	$(CARGO) build --release -p handwritten-baseline
	CRITERION_HOME=$(abspath $(TARGET_DIR))/criterion \
		$(CARGO) bench -p host --features native-baseline --bench low_cycle -- --warm-up-time 1 --measurement-time 5
	$(CARGO) bench -p host --features native-baseline --bench e2e
	$(CARGO) bench -p host --features native-baseline --bench postgres
	python3 scripts/benchmarks.py > BENCHMARKS.md
	@echo "wrote BENCHMARKS.md"

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

check: lint test

clean:
	rm -rf $(MODULES)
	$(CARGO) clean
