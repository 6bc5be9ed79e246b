# ExecGate — the one entry point.
#   make run    install what is needed, build, start the verifier (see README)
#   make test   install what is needed, fetch the real test inputs, run every test
SHELL := /bin/bash
SWIFT ?= swift
EXECGATE_RUN_DIR ?= $(CURDIR)/ServiceVM/run

.PHONY: all deps build release test test-static check test-data run stop serve bench bench-scale clean image vm-test

all: build

deps:
	@bash scripts/install-deps.sh

build: deps
	@$(SWIFT) build -q

release: deps
	@$(SWIFT) build -q -c release

test-data: deps
	@bash scripts/fetch-test-data.sh

# Every test, then one summary line; tests that boot a guest under QEMU (classes named *BootTests)
# run in a second phase with EXECGATE_VM_TEST=1 (see scripts/run-tests.sh).
test: deps test-data image
	@$(SWIFT) build -q --build-tests
	@SWIFT=$(SWIFT) bash scripts/run-tests.sh

# Unit tests only (phase 1 of make test: no image build, no guest boots), in minutes.
check: deps test-data
	@$(SWIFT) build -q --build-tests
	@SWIFT=$(SWIFT) bash scripts/run-tests.sh --unit

# The CLI and service suites again, against the static execgate (`make run`'s host binary and the
# guest's /init) instead of the dynamic debug build (scripts/run-tests.sh --static).
test-static: deps test-data image
	@$(SWIFT) build -q --build-tests
	@SWIFT=$(SWIFT) bash scripts/run-tests.sh --static

# The main job: build the service VM image if needed, boot the sidecar VM and report it ready
# (with the addresses a host client uses: the verifier, and the admin port for policy swaps).
# Stop it with `make stop`.
run: image
	@$(STATIC_BUILD)/release/execgate vm start --name sidecar
	@echo "execgate: policy swap: $(STATIC_BUILD)/release/execgate policy sign POLICY --key $(EXECGATE_ADMIN_DIR)/key.pem --cert $(EXECGATE_ADMIN_DIR)/cert.pem -o B.bundle   (POLICY: version >= 2)"
	@echo "execgate:              $(STATIC_BUILD)/release/execgate policy push B.bundle --connect <the admin address above>   (README: 'Swap the policy')"
	@echo "execgate: stop it with: make stop   (status: $(STATIC_BUILD)/release/execgate vm status --name sidecar)"

stop:
	@$(STATIC_BUILD)/release/execgate vm stop --name sidecar

# The verifier directly on a Unix socket (no VM), trusting exactly what the Debian guest kernel
# trusts: its builtin certificates are extracted from its vmlinuz first (execgate keys extract).
serve: release test-data
	@mkdir -p $(EXECGATE_RUN_DIR)/keys
	@bin=$$($(SWIFT) build -c release --show-bin-path)/execgate; \
	  $$bin keys extract --kernel $$(ls .cache/kernel/current/boot/vmlinuz-* | head -1) --out $(EXECGATE_RUN_DIR)/keys >/dev/null && \
	  exec $$bin serve --listen unix:$(EXECGATE_RUN_DIR)/execgate.sock $$(for c in $(EXECGATE_RUN_DIR)/keys/*.pem; do echo --trust $$c; done)

bench: release test-data
	@$$($(SWIFT) build -c release --show-bin-path)/execgate bench --kernel .cache/kernel/current

# Many guests of one kernel and a boot storm. The capture: EXECGATE_CAPTURE, else the shared corpus's
# nokaslr-a and kaslr boots when present (EXECGATE_CORPUS; guests alternate between the two real
# slides), else the committed 9-module fixture.
EXECGATE_CORPUS ?= /work/shared/corpus
bench-scale: release test-data
	@cap=$${EXECGATE_CAPTURE:-$$(test -f $(EXECGATE_CORPUS)/kaslr/kallsyms.txt && echo $(EXECGATE_CORPUS)/nokaslr-a,$(EXECGATE_CORPUS)/kaslr || echo Tests/ExecGateExplainTests/Fixtures/corpus/nokaslr-a)}; \
	  $$($(SWIFT) build -c release --show-bin-path)/execgate bench --scale --kernel .cache/kernel/current --capture $$cap

# The service VM: a static execgate as the guest's /init (own scratch path: static flags differ),
# then kernel + initramfs into Images/out (skipped when inputs are unchanged).
# /init is built with -O, not -Osize: -Osize made it 0.66 MB smaller (12,468,728 B against 13,128,184 B
# on 31a5dcb) but its explainer 6% slower (paired runs, scripts/explain-ab.py: 0.939, every round below
# 1; docs/performance.md, sixteenth session), and /init is the sidecar's judge.
# SwiftPM already links with --gc-sections, but Swift marks every public function SHF_GNU_RETAIN, so
# the linker kept all public API of every module:
# -internalize-at-link (one link unit: nothing outside /init calls it) with -function-sections lets
# --gc-sections drop what nothing reaches (another 1.07 MB).
# GUEST_KERNEL=minimal (default): the service VM boots its own kernel, built once per input hash by
# scripts/build-kernel.sh from Images/kernel/execgate.config (cached in .cache/guest-kernel/).
# GUEST_KERNEL=debian: it boots the Debian distribution kernel and loads its signed modules.
# Either way the trust anchors are the Debian (protected guest's) kernel's certificates.
# The operator's admin key signs policy bundles for the sidecar's admin port (VMM port + 1). It is
# created once, on the host, and never enters the image: only its certificate does
# (`image build --admin-cert`). It lives in $(EXECGATE_ADMIN_DIR) (git-ignored, kept by `make
# clean`; directory 0700, key.pem 0600). Point EXECGATE_ADMIN_DIR elsewhere to use another key.
STATIC_BUILD ?= .build-static
# lld, and the unwind tables dropped at link (Images/link/no-unwind-tables.ld; ServiceVM/README.md,
# "Unwind tables"): 2.3 MB less /init. gold, the default, cannot discard .eh_frame.
# The standard library's Unicode name, alias, age and script lookups are wrapped with stand-ins that
# answer "none" (Sources/CExecGateSys/UnicodeDataStubs.c says why nothing in /init asks): their
# tables, 0.58 MB, are then unreferenced and --gc-sections drops them (README, "What `/init` is made of").
UNICODE_WRAPPED = _swift_stdlib_getScalarName _swift_stdlib_getNameAlias _swift_stdlib_getAge _swift_stdlib_getScript _swift_stdlib_getScriptExtensions
STATIC_LINK = -Xswiftc -Xclang-linker -Xswiftc -fuse-ld=lld -Xlinker -T -Xlinker $(CURDIR)/Images/link/no-unwind-tables.ld \
  $(foreach s,$(UNICODE_WRAPPED),-Xlinker --wrap=$(s))
GUEST_KERNEL ?= minimal
EXECGATE_ADMIN_DIR ?= $(CURDIR)/.cache/admin
# libcrypto: the minimal one of scripts/build-openssl.sh (Images/openssl/execgate.options, built once per
# input hash into .cache/guest-openssl/<key>/): its headers (-Xcc -I) and its libcrypto.a (-Xlinker -L)
# come before the system's, so the shim compiles against exactly this configuration and the static
# link takes this archive. The host build (make build) keeps the system's libcrypto.
image: deps test-data
	@set -o pipefail; ossl=$$(bash scripts/build-openssl.sh) && \
	  $(SWIFT) build -q -c release --static-swift-stdlib -Xswiftc -static-executable -Xswiftc -O -Xswiftc -Xfrontend -Xswiftc -internalize-at-link -Xswiftc -Xfrontend -Xswiftc -function-sections -Xcc -I$$ossl/include -Xlinker -L$$ossl/lib $(STATIC_LINK) -Xlinker -s --scratch-path $(STATIC_BUILD) --product execgate 2>&1 | { grep -v 'in statically linked applications requires at runtime' || true; }
	@# /init links no Foundation (ServiceVM/README.md, "Attack surface"): its module names would show in the binary's strings.
	@if strings $(STATIC_BUILD)/release/execgate | grep -qE 'FoundationEssentials|FoundationInternationalization|_FoundationICU'; then \
	  echo "image: Foundation is linked into the static execgate (/init must not link it)" >&2; exit 1; fi
	@# Nor the regex engine (1.2 MB of /init): String.contains(String), firstRange(of:), split(separator: "ab")
	@# and the like come from _StringProcessing; use _ExecGateInternals' containsUTF8/utf8Range(of:).
	@if strings $(STATIC_BUILD)/release/execgate | grep -q '17_StringProcessing'; then \
	  echo "image: _StringProcessing (the regex engine) is linked into the static execgate: a String.contains(String)-style call crept in (use _ExecGateInternals' containsUTF8)" >&2; exit 1; fi
	@if [ ! -f $(EXECGATE_ADMIN_DIR)/key.pem ]; then \
	  mkdir -p $(EXECGATE_ADMIN_DIR) && chmod 0700 $(EXECGATE_ADMIN_DIR) && \
	  $(STATIC_BUILD)/release/execgate keys generate --out $(EXECGATE_ADMIN_DIR) --cn "ExecGate admin (policy bundles)" >/dev/null && \
	  echo "execgate: created the admin key $(EXECGATE_ADMIN_DIR)/key.pem (keep it on this host; only cert.pem goes into the image)"; fi
	@case "$(GUEST_KERNEL)" in \
	  minimal) k=$$(bash scripts/build-kernel.sh) && $(STATIC_BUILD)/release/execgate image build --init $(STATIC_BUILD)/release/execgate --admin-cert $(EXECGATE_ADMIN_DIR)/cert.pem --service-kernel "$$k" ;; \
	  debian) $(STATIC_BUILD)/release/execgate image build --init $(STATIC_BUILD)/release/execgate --admin-cert $(EXECGATE_ADMIN_DIR)/cert.pem ;; \
	  *) echo "GUEST_KERNEL must be minimal or debian" >&2; exit 2 ;; \
	esac

vm-test: image
	@$(STATIC_BUILD)/release/execgate vm selftest

clean:
	rm -rf .build $(STATIC_BUILD) Images/out ServiceVM/run
