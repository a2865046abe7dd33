# pullguard — see README.md. Every target works on a fresh Debian machine with Go.
SHELL := /bin/bash
GO ?= go
TOOLS_BIN := $(CURDIR)/.tools/bin
export PULLGUARD_TOOLS_BIN ?= $(TOOLS_BIN)
BIN := $(CURDIR)/bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.version=$(VERSION)
# Integration tests start real containerd, registry and pullguard processes.
INTEGRATION_TIMEOUT ?= 40m
UNIT_TIMEOUT ?= 15m
NODE_TIMEOUT ?= 30m

.PHONY: all build tools tools-core tools-kube tools-node generate test test-unit test-integration test-node fuzz bench demo lint image clean

all: build

# Two static binaries: pullguard, the node daemon (no Kubernetes client), and pullguard-agent, the
# DaemonSet's installer and sync agents. Both go into the image.
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/pullguard ./cmd/pullguard
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/pullguard-agent ./cmd/pullguard-agent

# Pinned containerd, runc, registry, crictl, notation, oras, crane, staticcheck,
# controller-gen, and kube-apiserver + etcd (for the policy CRD tests) into .tools/bin.
tools: tools-core tools-kube tools-node

# What the demo and the containerd tests need.
tools-core:
	bash integration/tools/install.sh

# kube-apiserver and etcd, for the policy CRD and running-workload tests, and
# kube-controller-manager, kube-scheduler and kubelet for the node tests (a long cold build).
tools-kube:
	bash integration/tools-kube/install.sh

# The node tests also need mmdebstrap, systemd-nspawn and the node's root filesystem
# (cached in .tools/node).
tools-node: tools-core tools-kube
	bash integration/tools-node/install.sh

# The CRDs in daemonset/crds, generated from the Go types (daemonset/api/v1beta1 and
# plugin/policy/v1beta1). A unit test fails while the committed ones differ. Only
# controller-gen is built here (pinned by integration/tools/go.mod), not every tool.
CONTROLLER_GEN := $(PULLGUARD_TOOLS_BIN)/controller-gen
generate: $(CONTROLLER_GEN)
	bash hack/generate-crds.sh

$(CONTROLLER_GEN): integration/tools/go.mod integration/tools/go.sum
	GOFLAGS=-buildvcs=false GOWORK=off $(GO) -C integration/tools build -trimpath -o $(PULLGUARD_TOOLS_BIN)/ sigs.k8s.io/controller-tools/cmd/controller-gen

test: tools lint test-unit test-integration test-node

test-unit:
	$(GO) test -race -short -timeout $(UNIT_TIMEOUT) ./...

# The daemon under test is built once, up front, rather than inside each test
# binary's TestMain (a cold -race build there can eat its start-up deadline).
test-integration: tools build
	PULLGUARD_BIN=$(BIN)/pullguard PULLGUARD_AGENT_BIN=$(BIN)/pullguard-agent $(GO) test -race -timeout $(INTEGRATION_TIMEOUT) -p 1 $$($(GO) list ./integration/... | grep -v /integration/node)

# A real node (systemd-nspawn, containerd, kubelet) and control plane, pullguard installed by
# its DaemonSet; see integration/node/README.md. Not under -race: the test process only drives
# real programs, and the daemons under test run on the node from their image.
test-node: tools-node
	$(GO) test -timeout $(NODE_TIMEOUT) -p 1 -v ./integration/node/...

# Short fuzzing runs of every parser; FUZZTIME=5m for a longer session.
FUZZTIME ?= 20s
fuzz:
	bash hack/fuzz.sh $(FUZZTIME)

# Go benchmarks of the packages, then pullguard against the same operation
# without it, each in one run: kubelet's CRI calls (image calls through
# pullguard, runtime calls beside it), creates through the NRI gate, verified
# pulls (cold, warm, with VA). See integration/bench/README.md.
bench: export PULLGUARD_BIN = $(BIN)/pullguard
bench: tools build
	$(GO) test -run '^$$' -bench . -benchmem ./plugin/...
	$(GO) run ./integration/bench
	$(GO) test -run '^$$' -bench . -benchtime 200x ./integration/bench/

# Builds only what the demo runs: the core tools (not kube-apiserver) and pullguard.
demo: tools-core build
	PULLGUARD_BIN=$(BIN)/pullguard $(GO) run ./integration/cmd/demo

lint:
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	$(GO) vet ./...
	@if command -v staticcheck >/dev/null 2>&1 || [ -x $(TOOLS_BIN)/staticcheck ]; then \
		PATH=$(TOOLS_BIN):$$PATH staticcheck ./... ; \
	else echo "staticcheck not installed (make tools installs it); skipped"; fi

image: build
	@test -n "$(REGISTRY)" || { echo "usage: make image REGISTRY=host:port/repo"; exit 2; }
	$(BIN)/pullguard-agent image --binary $(BIN)/pullguard --agent $(BIN)/pullguard-agent --ref $(REGISTRY)

clean:
	rm -rf $(BIN)
