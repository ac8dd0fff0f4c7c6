package server

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"

	"github.com/pifleet/pifleet/overlay"
	"github.com/pifleet/pifleet/test/browser"
)

// TestUIInBrowser drives the web UI in headless Chromium: while a scripted board boots
// (TFTP reads, then an NFS mount), the overview follows it live, without a reload; a
// hostile client-reported string shows as text; a reset needs its confirmation.
// PIFLEET_UI_SCREENSHOTS=DIR saves a PNG of each page there.
func TestUIInBrowser(t *testing.T) {
	needRoot(t)
	// alpha's fixed IP is 127.0.0.1, the address the scripted clients send from.
	ts := startServer(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1}\n  - {name: beta, mac: '02:00:00:00:00:02', serial: '000abc01', ip: 127.0.0.3}\n")
	mac, _ := net.ParseMAC("02:00:00:00:00:99")
	ts.srv.timeline.SeenUnknown(mac, "1234abcd", `<img src=x onerror="window.hacked=1">Raspberry Pi 4`)
	shots := os.Getenv("PIFLEET_UI_SCREENSHOTS")
	shot := func(p *browser.Page, name string) {
		if shots != "" {
			p.Screenshot(filepath.Join(shots, name+".png"))
		}
	}

	p := browser.Start(t)
	p.Navigate(ts.http + "/")
	row := func(board string) string {
		return `((document.querySelector('tr[data-board="` + board + `"] td.st') || {}).innerText || "")`
	}
	if got := p.Text(row("alpha")); got != "off" {
		t.Errorf("alpha before booting: %q, want off", got)
	}
	p.WaitFor("the overview to open its live stream", `document.querySelector("main").dataset.stream === "open"`)
	p.Eval(`window.notReloaded = true`)

	// The board's firmware reads its files over TFTP.
	for _, f := range []string{"config.txt", "start4.elf", "cmdline.txt"} {
		if out, err := tftpGet(t, "127.0.0.1", ts.tftp, "000abc00/"+f); err != nil {
			t.Fatalf("tftp %s: %v %s", f, err, out)
		}
	}
	p.WaitFor("alpha to show booting at its last TFTP file", row("alpha")+`.includes("booting") && `+row("alpha")+`.includes("cmdline.txt")`)
	shot(p, "fleet-booting")

	if v, _ := p.Eval(`window.notReloaded === true && window.hacked === undefined && document.getElementById("unknown").innerText.includes('<img src=x onerror="window.hacked=1">Raspberry Pi 4')`); v != true {
		t.Errorf("a client-reported model was not shown as text: %q", p.Text(`document.getElementById("unknown").innerHTML`))
	}

	// On alpha's page, its kernel mounts the NFS root and writes: the page follows live.
	p.Navigate(ts.http + "/boards/alpha")
	p.WaitFor("alpha's page to open its live stream", `document.querySelector("main").dataset.stream === "open"`)
	waitFor(t, "the overview's stream to be given back", func() bool { return ts.srv.ui.hub.count() == 1 })
	p.Eval(`window.notReloaded = true`)
	mc, err := dialMount(ts.srv.cfg.Server.Ports.Mount)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	auth := rpc.AuthUnix{Machinename: "alpha", GidLen: 1}
	v, err := (&nfsc.Mount{Client: mc}).Mount("/boards/alpha", auth.Auth())
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	w, err := v.OpenFile("etc/written-by-alpha", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("hello"))
	w.Close()
	p.WaitFor("alpha's page to show it up, with its first write", `document.getElementById("state").innerText === "up" && document.getElementById("timeline").innerText.includes("nfs first write")`)
	if v, _ := p.Eval(`window.notReloaded === true`); v != true {
		t.Error("alpha's page reloaded instead of updating live")
	}
	tl := p.Text(`document.getElementById("timeline").innerText`)
	for _, want := range []string{"tftp read", "000abc00/start4.elf", "nfs mount", "nfs first write\tcreate"} {
		if !strings.Contains(tl, want) {
			t.Errorf("alpha's timeline lacks %q:\n%s", want, tl)
		}
	}
	p.Navigate(ts.http + "/boards/alpha") // the diff is not live
	if d := p.Text(`document.getElementById("diff").innerText`); !strings.Contains(d, "/etc/written-by-alpha") {
		t.Errorf("alpha's diff lacks its file:\n%s", d)
	}
	shot(p, "board-alpha")
	p.Navigate(ts.http + "/")
	if got := p.Text(row("alpha")); got != "up" || !strings.Contains(p.Text(`document.querySelector('.totals').innerText`), "1 / 2") {
		t.Errorf("overview after the mount: alpha %q, totals %q", got, p.Text(`document.querySelector('.totals').innerText`))
	}
	shot(p, "fleet-up")

	// Reset beta (not mounted) from its page: the first click only asks.
	fs := ts.srv.fleet.cur.Load().boards["beta"].fs
	mustCreate(t, fs, "/etc/beta-was-here")
	p.Navigate(ts.http + "/boards/beta")
	p.Eval(`document.getElementById("reset").click()`)
	p.WaitFor("the confirmation page", `!!document.getElementById("confirm")`)
	shot(p, "confirm-reset")
	if _, err := fs.Stat("/etc/beta-was-here"); err != nil {
		t.Fatalf("the reset ran before it was confirmed: %v", err)
	}
	p.Eval(`document.getElementById("confirm").click()`)
	p.WaitFor("the reset to be done", `document.body.innerText.includes("beta was reset")`)
	if _, err := ts.srv.fleet.cur.Load().boards["beta"].fs.Stat("/etc/beta-was-here"); err == nil {
		t.Error("the confirmed reset kept beta's file")
	}
	if d := p.Text(`document.body.innerText`); !strings.Contains(d, "No changes") {
		t.Errorf("beta's page after the reset:\n%s", d)
	}

	// Adopt the unknown Pi: fleet.yaml gains it, comments kept, and passes the check.
	before, err := os.ReadFile(ts.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ts.cfgPath, append([]byte("# the lab's boards\n"), before...), 0o644); err != nil {
		t.Fatal(err)
	}
	p.Navigate(ts.http + "/")
	p.Eval(`document.querySelector("#unknown button.adopt").click()`)
	p.WaitFor("the adopt form", `!!document.getElementById("adopt")`)
	if name := p.Text(`document.getElementById("name").value`); name != "pi-1234abcd" {
		t.Errorf("suggested name %q, want pi-1234abcd", name)
	}
	shot(p, "adopt")
	p.Eval(`document.getElementById("name").value = "gamma"; document.getElementById("adopt").click()`)
	p.WaitFor("gamma's page", `document.body.innerText.includes("gamma was added")`)
	if v, _ := p.Eval(`window.hacked === undefined`); v != true {
		t.Error("the client-reported model ran as HTML on the way through the adopt form")
	}
	y, err := os.ReadFile(ts.cfgPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(y), "# the lab's boards\n") || !strings.Contains(string(y), "gamma") || !strings.Contains(string(y), "02:00:00:00:00:99") || !strings.Contains(string(y), "1234abcd") {
		t.Errorf("fleet.yaml after adopt:\n%s", y)
	}
	if _, problems, err := Load(ts.cfgPath); err != nil || problems.Errors() > 0 {
		t.Errorf("fleet.yaml after adopt does not pass the check: %v %v", err, problems)
	}
	if _, ok := ts.srv.Board("gamma"); !ok {
		t.Error("the running server does not serve the adopted board")
	}
	if strings.Contains(p.Text(`document.body.innerText`), "not in the fleet") {
		t.Error("gamma's page says it is not in the fleet")
	}
}

func mustCreate(t *testing.T, fs *overlay.FS, name string) {
	t.Helper()
	f, err := fs.Create(name)
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
}
