# pifleet: `make run` serves the demo fleet, `make test` runs every test.
GO      ?= go
BIN     := bin/pifleet
CONFIG  ?= fleet.yaml
# Go's default build cache lives in $HOME; keep the same one under sudo.
export GOFLAGS ?= -buildvcs=false

.PHONY: build run demo test e2e bench fmt vet clean need-root

build:
	$(GO) build -o $(BIN) ./cmd/pifleet

need-root:
	@if [ "$$(id -u)" != 0 ]; then \
	  echo "pifleet serves DHCP (port 67), TFTP (69) and NFS (2049) and keeps board files with their real"; \
	  echo "owners and device nodes: it needs root. Run: sudo make run"; exit 1; fi

# The demo image: busybox + Debian's arm64 kernel + Pi firmware, from apt, built once
# into the state dir (fleet.yaml server.state) and reused after.
demo: build need-root
	./$(BIN) image demo -c $(CONFIG)

run: build need-root demo
	./$(BIN) check -c $(CONFIG)
	./$(BIN) serve -c $(CONFIG)

# Every test: unit, protocol tests with real clients in private network namespaces,
# the kernel-overlayfs differential test, and the QEMU end-to-end boot (as root).
# The e2e runs last and alone: its emulated boards want both cores.
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v /test/e2e)
	$(GO) test -count=1 -timeout 12m ./test/e2e/

e2e:
	$(GO) test -count=1 -timeout 15m -v ./test/e2e/

# Benchmarks, side by side with peers (dnsmasq, tftpd-hpa, nfs-ganesha) where a
# package has them; figures go to the terminal.
bench:
	bash .ci/setup-apt.sh --bench
	$(GO) test -count=1 -run '^$$' -bench . -benchmem -timeout 60m ./...

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf bin
