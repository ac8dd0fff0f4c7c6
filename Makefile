# pifleet: `make run` serves the demo fleet, `make test` runs every test,
# `sudo make install` installs it as a systemd service.
GO      ?= go
BIN     ?= bin/pifleet
CONFIG  ?= fleet.yaml
# Go's default build cache lives in $HOME; keep the same one under sudo.
export GOFLAGS ?= -buildvcs=false

# A static binary: it runs on any Linux of its architecture, copied as one file.
CGO_ENABLED ?= 0
# -buildvcs=false (above) leaves Go's own VCS stamp out, so git supplies it: the release
# tag (v1.2.0, or v1.2.0-3-gabc1234 after it) and the commit. Untagged or outside a git
# checkout they are empty and `pifleet version` says (devel) / unknown.
VERSION  ?= $(shell git describe --tags --dirty 2>/dev/null)
REVISION ?= $(shell r=$$(git rev-parse HEAD 2>/dev/null) && { git diff --quiet HEAD 2>/dev/null && echo $$r || echo $$r-dirty; })
LDFLAGS  := -X main.version=$(VERSION) -X main.revision=$(REVISION)

# make install: PREFIX/DESTDIR as usual (DESTDIR for packaging: nothing is started then).
PREFIX     ?= /usr/local
BINDIR     ?= $(PREFIX)/bin
UNITDIR    ?= $(PREFIX)/lib/systemd/system
SYSCONFDIR ?= /etc
DESTDIR    ?=
# START=no installs without enabling and (re)starting the service.
START      ?= yes

.PHONY: build run demo test e2e bench bench-scale fmt vet clean need-root install uninstall

build:
	CGO_ENABLED=$(CGO_ENABLED) $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/pifleet

# The binary in BINDIR, the systemd unit in UNITDIR, fleet.yaml in SYSCONFDIR/pifleet
# (only if there is none: an admin's file is never overwritten), then systemctl enable
# and restart when systemd runs this machine.
install: build
	install -D -m 0755 $(BIN) $(DESTDIR)$(BINDIR)/pifleet
	install -d -m 0755 $(DESTDIR)$(UNITDIR)
	sed -e 's|@BINDIR@|$(BINDIR)|g' -e 's|@SYSCONFDIR@|$(SYSCONFDIR)|g' dist/pifleet.service.in > $(DESTDIR)$(UNITDIR)/pifleet.service
	chmod 0644 $(DESTDIR)$(UNITDIR)/pifleet.service
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/pifleet/fleet.yaml ]; then \
	  echo "kept $(DESTDIR)$(SYSCONFDIR)/pifleet/fleet.yaml"; \
	else \
	  install -D -m 0644 dist/fleet.yaml $(DESTDIR)$(SYSCONFDIR)/pifleet/fleet.yaml && \
	  echo "installed $(DESTDIR)$(SYSCONFDIR)/pifleet/fleet.yaml (no boards yet: edit it)"; \
	fi
	@if [ -n "$(DESTDIR)" ] || [ "$(START)" != yes ]; then \
	  echo "not starting the service (DESTDIR or START=no)"; \
	elif [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then \
	  systemctl daemon-reload && systemctl enable pifleet.service && systemctl restart pifleet.service && \
	  echo "pifleet.service enabled and started: journalctl -u pifleet -f"; \
	else \
	  echo "systemd does not run this machine (no /run/systemd/system): nothing started. On a systemd machine run:"; \
	  echo "  systemctl daemon-reload && systemctl enable --now pifleet.service"; \
	  echo "or run it in the foreground: $(BINDIR)/pifleet serve -c $(SYSCONFDIR)/pifleet/fleet.yaml"; \
	fi

# Removes the binary and the unit; keeps SYSCONFDIR/pifleet and the state dir (images,
# board roots).
uninstall:
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null; then \
	  systemctl disable --now pifleet.service || true; fi
	rm -f $(DESTDIR)$(BINDIR)/pifleet $(DESTDIR)$(UNITDIR)/pifleet.service
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
	@echo "kept $(SYSCONFDIR)/pifleet and /var/lib/pifleet"

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
# The e2e runs last and alone: its emulated boards want both cores. Its timeout covers a cold
# build of the Debian image TestDistroBookworm boots (~20 min, then cached in
# /var/cache/pifleet-test).
test:
	$(GO) vet ./...
	$(GO) test -count=1 -timeout 10m $$($(GO) list ./... | grep -v /test/e2e)
	$(GO) test -count=1 -timeout 55m ./test/e2e/

e2e:
	$(GO) test -count=1 -timeout 55m -v ./test/e2e/

# Benchmarks, side by side with peers (dnsmasq, tftpd-hpa, nfs-ganesha) where a
# package has them; figures go to the terminal.
bench:
	bash .ci/setup-apt.sh --bench
	$(GO) test -count=1 -run '^$$' -bench . -benchmem -timeout 60m ./...

# The fleet simulator (test/scale): 1, 50 and 200 simulated Pi 4 boards boot at once from
# bin/pifleet in a network namespace, in full and proxy DHCP mode, then from the peer stack
# (dnsmasq, tftpd-hpa, nfs-ganesha: setup-apt.sh --bench); prints the figures side by side.
# PIFLEET_SIM_BOARDS=1,50, PIFLEET_SIM_MODES=full, PIFLEET_SIM_SERVERS=pifleet narrow the run (root).
bench-scale: build
	PIFLEET_BIN=$(abspath $(BIN)) $(GO) test -count=1 -run '^$$' -bench Fleet -benchtime 1x -timeout 90m ./test/scale/

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf bin
