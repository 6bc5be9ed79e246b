# ExecGate — the one entry point.
#   make run    install what is needed, build, start the verifier (see README)
#   make test   install what is needed, fetch the real test inputs, run every test
SHELL := /bin/bash
SWIFT ?= swift
EXECGATE_RUN_DIR ?= $(CURDIR)/ServiceVM/run

.PHONY: all deps build release test test-data run bench clean

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@$(SWIFT) build -q

release: deps
	@$(SWIFT) build -q -c release

test-data: deps
	@bash scripts/fetch-test-data.sh

test: deps test-data
	@$(SWIFT) build -q --build-tests
	@$(SWIFT) test --skip-build --parallel --num-workers 2 2>&1 | tee .cache/test.log | grep -Ev '^\[[0-9]+/[0-9]+\]|Test Case .* (started|passed)' ; exit $${PIPESTATUS[0]}

run: release
	@mkdir -p $(EXECGATE_RUN_DIR)
	@$$($(SWIFT) build -c release --show-bin-path)/execgate serve --listen unix:$(EXECGATE_RUN_DIR)/execgate.sock

bench: release test-data
	@$$($(SWIFT) build -c release --show-bin-path)/execgate bench --kernel .cache/kernel/current

clean:
	rm -rf .build Images/out ServiceVM/run
