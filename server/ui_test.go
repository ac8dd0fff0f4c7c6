package server

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pifleet/pifleet/boot"
)

// TestDeriveState: a board's state (off / booting at a step / stalled at a step for how
// long / up) follows from its last boot's events and its mount.
func TestDeriveState(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	dhcp := boot.Event{Time: t0, Stage: boot.StageDHCP, What: "ack"}
	start4 := boot.Event{Time: t0.Add(time.Second), Stage: boot.StageTFTP, What: "read", File: "start4.elf", Bytes: 2000, Duration: time.Second}
	missing := boot.Event{Time: t0.Add(3 * time.Second), Stage: boot.StageTFTP, What: "read", File: "kernel8.img", Err: "file not found"}
	mount := boot.Event{Time: t0.Add(20 * time.Second), Stage: boot.StageNFS, What: "mount"}
	reset := boot.Event{Time: t0.Add(30 * time.Second), Stage: boot.StageReset, What: "reset"}
	for _, c := range []struct {
		name    string
		evs     []boot.Event
		mounted bool
		now     time.Time
		want    BoardState
	}{
		{"never booted", nil, false, t0, BoardState{Kind: "off"}},
		{"mounted", []boot.Event{dhcp, start4, mount}, true, t0.Add(time.Hour), BoardState{Kind: "up", Step: "NFS root mounted"}},
		{"mounted after a restart", nil, true, t0, BoardState{Kind: "up", Step: "NFS root mounted"}},
		{"at DHCP", []boot.Event{dhcp}, false, t0.Add(time.Second), BoardState{Kind: "booting", Step: "DHCP ack"}},
		{"at TFTP", []boot.Event{dhcp, start4}, false, t0.Add(5 * time.Second), BoardState{Kind: "booting", Step: "TFTP start4.elf"}},
		{"stalled after TFTP", []boot.Event{dhcp, start4}, false, t0.Add(2*time.Second + 90*time.Second), BoardState{Kind: "stalled", Step: "TFTP start4.elf", For: 90 * time.Second}},
		{"stalled on a missing file", []boot.Event{dhcp, start4, missing}, false, t0.Add(3*time.Second + stallAfter), BoardState{Kind: "stalled", Step: "TFTP kernel8.img", For: stallAfter, Err: "file not found"}},
		{"was up, unmounted", []boot.Event{dhcp, start4, mount}, false, t0.Add(time.Hour), BoardState{Kind: "off", Step: "NFS root no longer mounted"}},
		{"reset", []boot.Event{dhcp, reset}, false, t0.Add(time.Hour), BoardState{Kind: "off", Step: "reset"}},
	} {
		if got := deriveState(c.evs, c.mounted, c.now); got != c.want {
			t.Errorf("%s: %+v, want %+v", c.name, got, c.want)
		}
	}
}

// TestHints: what the board page says to check follows where the boot stopped.
func TestHints(t *testing.T) {
	t0 := time.Date(2026, 12, 4, 12, 0, 0, 0, time.UTC)
	dhcp := []boot.Event{{Time: t0, Stage: boot.StageDHCP, What: "offer"}}
	tftp := append(dhcp, boot.Event{Time: t0.Add(time.Second), Stage: boot.StageTFTP, What: "read", File: "1234abcd/start4.elf"})
	noKernel := append(tftp, boot.Event{Time: t0.Add(2 * time.Second), Stage: boot.StageTFTP, What: "missing", File: "1234abcd/kernel8.img", Err: "no such file"})
	probe := append(tftp, boot.Event{Time: t0.Add(2 * time.Second), Stage: boot.StageTFTP, What: "missing", File: "1234abcd/bootsig.bin", Err: "no such file"})
	later := t0.Add(time.Hour)
	for _, c := range []struct {
		name  string
		evs   []boot.Event
		proxy bool
		now   time.Time
		want  []string // substrings, one per hint, in order
	}{
		{"never seen", nil, false, later, []string{"BOOT_ORDER", "MAC and serial"}},
		{"DHCP, then nothing (proxy)", dhcp, true, later, []string{"wrong serial", "U-Boot"}},
		{"DHCP, then nothing (full)", dhcp, false, later, []string{"wrong serial"}},
		{"DHCP just now", dhcp, true, t0.Add(time.Second), nil},
		{"missing kernel", noKernel, false, t0.Add(3 * time.Second), []string{"Missing firmware: the board asked for 1234abcd/kernel8.img"}},
		{"an optional file missing", probe, false, t0.Add(3 * time.Second), nil},
		{"stalled after TFTP", probe, false, later, []string{"did not mount its root"}},
	} {
		got := hints(deriveState(c.evs, false, c.now), c.evs, c.proxy)
		ok := len(got) == len(c.want)
		for i := 0; ok && i < len(got); i++ {
			ok = strings.Contains(got[i], c.want[i])
		}
		if !ok {
			t.Errorf("%s: hints %q, want ones saying %q", c.name, got, c.want)
		}
	}
	if i := failingStep(noKernel, deriveState(noKernel, false, later)); i != 2 {
		t.Errorf("failing step of a boot missing its kernel: %d, want 2", i)
	}
	if i := failingStep(probe, deriveState(probe, false, t0.Add(3*time.Second))); i != -1 {
		t.Errorf("a booting board that probed an optional file has failing step %d, want none", i)
	}
}

// TestUIHubBounded: the live-update hub admits a bounded number of streams and drops one
// whose buffer is full instead of blocking the publisher (the boot services).
func TestUIHubBounded(t *testing.T) {
	h := newUIHub(3, 2, 3)
	one, other := netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2")
	a, ok1 := h.subscribe(one)
	b, ok2 := h.subscribe(one)
	if _, ok := h.subscribe(one); !ok1 || !ok2 || ok {
		t.Fatalf("subscribe from one address: %v %v, third %v; want two admitted, the third refused", ok1, ok2, ok)
	}
	c, ok := h.subscribe(other)
	if !ok {
		t.Fatal("another address refused")
	}
	if _, ok := h.subscribe(netip.MustParseAddr("192.0.2.3")); ok {
		t.Fatal("a fourth stream admitted past the total bound")
	}
	h.unsubscribe(c)
	for i := 0; i < 3; i++ {
		h.publish(boot.Event{What: "x"})
		<-a.ch // a keeps up, b does not
	}
	h.publish(boot.Event{What: "one too many for b"})
	if h.count() != 1 {
		t.Fatalf("after b fell behind: %d subscribers, want 1", h.count())
	}
	n := 0
	for range b.ch { // closed after what it had buffered
		n++
	}
	if n != 3 {
		t.Errorf("b got %d buffered events before the close, want 3", n)
	}
	if _, ok := h.subscribe(one); !ok {
		t.Error("a dropped subscriber's slot is not free again")
	}
	h.unsubscribe(a)
	h.shutdown()
	if _, ok := h.subscribe(other); ok {
		t.Error("subscribe after shutdown succeeded")
	}
}

func getPage(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestUIPages: the overview shows each board's state as its boot goes (off, then booting
// at the TFTP file it asked), the board's page its timeline and diff, the images page
// which boards use an image; strings from the network are escaped.
func TestUIPages(t *testing.T) {
	needRoot(t)
	// gamma has no fixed IP (proxy mode): the overview shows the address it boots from.
	ts := startServer(t, boardYAML("alpha", "beta")+"  - {name: gamma, mac: '02:00:00:00:00:03', serial: '000abc02'}\n")
	hostile := `<script>alert("x")</script>`
	mac, _ := net.ParseMAC("02:00:00:00:00:99")
	ts.srv.timeline.SeenUnknown(mac, `"><img src=x onerror=alert(1)>`, hostile)

	code, page := getPage(t, ts.http+"/")
	if code != http.StatusOK {
		t.Fatalf("GET /: HTTP %d", code)
	}
	for _, want := range []string{`href="/boards/alpha"`, `<span class="state off">off</span>`, "0 / 3", "02:00:00:00:00:99",
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;", "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;", `data-live="view=fleet"`, "<noscript>"} {
		if !strings.Contains(page, want) {
			t.Errorf("overview lacks %q:\n%s", want, page)
		}
	}
	if v, img := ts.srv.ui.fleetView(time.Now()), ts.srv.imageBytes(ts.srv.config(), "img"); img <= 0 || v.FullBytes != 3*img || v.UpperBytes <= 0 {
		t.Errorf("totals: uppers %d, full copies %d; want 3 × the image's %d", v.UpperBytes, v.FullBytes, img)
	}
	if strings.Contains(page, hostile) || strings.Contains(page, "<img src=x") {
		t.Errorf("overview carries a client-reported string unescaped:\n%s", page)
	}

	// alpha starts booting: its firmware reads config.txt over TFTP.
	if out, err := tftpGet(t, "127.0.0.2", ts.tftp, "000abc00/config.txt"); err != nil {
		t.Fatalf("tftp: %v %s", err, out)
	}
	waitFor(t, "alpha to show as booting", func() bool {
		_, page = getPage(t, ts.http+"/")
		return strings.Contains(page, `<span class="state booting">booting</span> <span class="muted">at TFTP 000abc00/config.txt</span>`)
	})

	// It asks for a kernel the image lacks: the board's page highlights that step and
	// says what to check.
	if out, err := tftpGet(t, "127.0.0.2", ts.tftp, "000abc00/kernel8.img"); err == nil {
		t.Fatalf("tftp of a missing kernel succeeded: %s", out)
	}
	waitFor(t, "the missing kernel in alpha's timeline", func() bool {
		return slices.ContainsFunc(ts.srv.timeline.LastBoot("alpha"), func(e boot.Event) bool { return e.What == "missing" })
	})
	// gamma's address: remembered from before a restart, then bound on neighbour
	// evidence (which loopback cannot give: set as liveFleet.Bind would).
	ts.srv.fleet.restore("gamma", netip.MustParseAddr("10.0.0.9"))
	if _, page = getPage(t, ts.http+"/"); !strings.Contains(page, `<td class="mono">10.0.0.9 <span class="muted">(remembered, unconfirmed)</span></td>`) {
		t.Errorf("overview lacks gamma's remembered address:\n%s", page)
	}
	ts.srv.fleet.bind("gamma", netip.MustParseAddr("10.0.0.9"))
	if _, page = getPage(t, ts.http+"/"); !strings.Contains(page, `<td class="mono">10.0.0.9 <span class="muted">(learned)</span></td>`) {
		t.Errorf("overview lacks gamma's learned address:\n%s", page)
	}
	fs := ts.srv.fleet.cur.Load().boards["alpha"].fs
	f, err := fs.Create("/etc/<b>added<b>.conf")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	code, page = getPage(t, ts.http+"/boards/alpha")
	if code != http.StatusOK {
		t.Fatalf("board page: HTTP %d", code)
	}
	for _, want := range []string{"<h1>alpha</h1>", "tftp read", "config.txt", `<td class="kind-A">A</td><td class="mono">/etc/&lt;b&gt;added&lt;b&gt;.conf</td>`,
		`name="csrf"`, `action="/boards/alpha/reset"`,
		`<div class="hint">Missing firmware: the board asked for 000abc00/kernel8.img`} {
		if !strings.Contains(page, want) {
			t.Errorf("board page lacks %q:\n%s", want, page)
		}
	}
	if fail := regexp.MustCompile(`<tr class="fail">.*</tr>`).FindAllString(page, -1); len(fail) != 1 || !strings.Contains(fail[0], "000abc00/kernel8.img") {
		t.Errorf("highlighted steps: %q, want the missing kernel's only", fail)
	}
	// It powers on again: the failed boot is an earlier one, summarised with its failure.
	ts.srv.timeline.Record(boot.Event{Board: "alpha", Stage: boot.StageDHCP, What: "discover", Agent: boot.AgentPi})
	_, page = getPage(t, ts.http+"/boards/alpha")
	if !regexp.MustCompile(`<h2>Earlier boots</h2>\n<details><summary>[^<]* · 2 steps · reached tftp · <span class="kind-D">failed at tftp 000abc00/kernel8.img</span></summary>`).MatchString(page) {
		t.Errorf("board page after a second boot lacks the earlier, failed one:\n%s", page)
	}
	if code, _ := getPage(t, ts.http+"/boards/nope"); code != http.StatusNotFound {
		t.Errorf("page of a board not in the fleet: HTTP %d", code)
	}
	code, page = getPage(t, ts.http+"/images")
	if code != http.StatusOK || !regexp.MustCompile(`<td>img</td>.*\n.*<a href="/boards/alpha">alpha</a>, <a href="/boards/beta">beta</a>, <a href="/boards/gamma">gamma</a>`).MatchString(page) {
		t.Errorf("images page: HTTP %d\n%s", code, page)
	}
}

// TestUIResetForm: the reset form needs this origin, the page's CSRF token and a second,
// confirming POST; only then is the board reset.
func TestUIResetForm(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	fs := ts.srv.fleet.cur.Load().boards["alpha"].fs
	f, err := fs.Create("/etc/mine")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	_, page := getPage(t, ts.http+"/boards/alpha")
	m := regexp.MustCompile(`name="csrf" value="([0-9a-f]+)"`).FindStringSubmatch(page)
	if m == nil {
		t.Fatalf("no CSRF token in the board page:\n%s", page)
	}
	noRedirect := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	post := func(form url.Values, hdr map[string]string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest("POST", ts.http+"/boards/alpha/reset", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := noRedirect.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Location") + string(body)
	}
	same := map[string]string{"Origin": ts.http}
	stillThere := func() bool { _, err := fs.Stat("/etc/mine"); return err == nil }
	for _, c := range []struct {
		name string
		form url.Values
		hdr  map[string]string
	}{
		{"no Origin", url.Values{"csrf": {m[1]}, "confirm": {"yes"}}, nil},
		{"another origin", url.Values{"csrf": {m[1]}, "confirm": {"yes"}}, map[string]string{"Origin": "http://evil.example"}},
		{"cross-site fetch", url.Values{"csrf": {m[1]}, "confirm": {"yes"}}, map[string]string{"Origin": ts.http, "Sec-Fetch-Site": "cross-site"}},
		{"no token", url.Values{"confirm": {"yes"}}, same},
		{"wrong token", url.Values{"csrf": {strings.Repeat("0", 64)}, "confirm": {"yes"}}, same},
	} {
		if code, body := post(c.form, c.hdr); code != http.StatusForbidden || !stillThere() {
			t.Errorf("%s: HTTP %d (want 403), board changes kept: %v\n%s", c.name, code, stillThere(), body)
		}
	}
	code, body := post(url.Values{"csrf": {m[1]}}, same)
	if code != http.StatusOK || !strings.Contains(body, `name="confirm" value="yes"`) || !stillThere() {
		t.Fatalf("first POST: HTTP %d, changes kept: %v; want the confirmation page and nothing reset\n%s", code, stillThere(), body)
	}
	code, body = post(url.Values{"csrf": {m[1]}, "confirm": {"yes"}}, same)
	if code != http.StatusSeeOther || !strings.HasPrefix(body, "/boards/alpha?done=reset") {
		t.Fatalf("confirmed POST: HTTP %d %s, want 303 to the board page", code, body)
	}
	fs = ts.srv.fleet.cur.Load().boards["alpha"].fs
	if _, err := fs.Stat("/etc/mine"); err == nil {
		t.Error("confirmed reset kept the board's file")
	}
}

// TestUIEventsLive: the /events stream sends the overview's live part again when a board
// boots, without a reload.
func TestUIEventsLive(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(ts.http + "/events?view=fleet")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); resp.StatusCode != 200 || ct != "text/event-stream" {
		t.Fatalf("events: HTTP %d %s", resp.StatusCode, ct)
	}
	waitFor(t, "the stream to subscribe", func() bool { return ts.srv.ui.hub.count() == 1 })
	if out, err := tftpGet(t, "127.0.0.2", ts.tftp, "000abc00/config.txt"); err != nil {
		t.Fatalf("tftp: %v %s", err, out)
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for lines := 0; sc.Scan() && lines < 10000; lines++ {
		if strings.Contains(sc.Text(), "at TFTP 000abc00/config.txt") {
			if !strings.HasPrefix(sc.Text(), "data: ") {
				t.Errorf("update line %q is not an SSE data line", sc.Text())
			}
			return
		}
	}
	t.Fatalf("no update showed alpha booting: %v", sc.Err())
}

// TestUIEventsRefusesBeyondBound: past uiMaxPerPeer streams from one address, or
// uiMaxSubscribers in all, a new one is refused.
func TestUIEventsRefusesBeyondBound(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	var subs []*uiSub
	for i := range uiMaxPerPeer {
		s, ok := ts.srv.ui.hub.subscribe(netip.MustParseAddr("127.0.0.1"))
		if !ok {
			t.Fatalf("stream %d of one address refused", i)
		}
		subs = append(subs, s)
	}
	if code, _ := getPage(t, ts.http+"/events?view=fleet"); code != http.StatusServiceUnavailable {
		t.Errorf("stream past the bound per address: HTTP %d, want 503", code)
	}
	ts.srv.ui.hub.unsubscribe(subs[0]) // 127.0.0.1 may open one again, but for the total
	subs = subs[1:]
	for i := 0; ts.srv.ui.hub.count() < uiMaxSubscribers; i++ {
		s, ok := ts.srv.ui.hub.subscribe(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
		if !ok {
			t.Fatal("hub full before its bound")
		}
		subs = append(subs, s)
	}
	if code, _ := getPage(t, ts.http+"/events?view=fleet"); code != http.StatusServiceUnavailable {
		t.Errorf("stream past the bound: HTTP %d, want 503", code)
	}
	for _, s := range subs {
		ts.srv.ui.hub.unsubscribe(s)
	}
}

// TestUIAdoptForm: the adopt form refuses what `pifleet check` would (a name already in
// the fleet, a bad MAC) with the reason, leaving fleet.yaml alone, and echoes what it
// was sent escaped.
func TestUIAdoptForm(t *testing.T) {
	needRoot(t)
	ts := startServer(t, boardYAML("alpha"))
	before, _ := os.ReadFile(ts.cfgPath)
	post := func(form url.Values, hdr map[string]string) (int, string) {
		t.Helper()
		form.Set("csrf", ts.srv.ui.csrf("/adopt"))
		req, _ := http.NewRequest("POST", ts.http+"/adopt", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	same := map[string]string{"Origin": ts.http}
	if code, _ := post(url.Values{"name": {"gamma"}, "mac": {"02:00:00:00:00:09"}, "confirm": {"yes"}}, nil); code != http.StatusForbidden {
		t.Errorf("adopt without Origin: HTTP %d, want 403", code)
	}
	code, body := post(url.Values{"mac": {`"><script>x</script>`}, "serial": {"1234abcd"}}, same)
	if code != http.StatusOK || !strings.Contains(body, `value="pi-1234abcd"`) || !strings.Contains(body, `value="&#34;&gt;&lt;script&gt;x&lt;/script&gt;"`) {
		t.Errorf("adopt form: HTTP %d\n%s", code, body)
	}
	for _, c := range []struct{ name, mac, want string }{
		{"alpha", "02:00:00:00:00:09", "alpha"},
		{"gamma", "02:00:00:00:00:01", "02:00:00:00:00:01"},
		{"gamma", "zz", "not a MAC address"},
		{"Not_A_Name", "02:00:00:00:00:09", "not a valid hostname"},
	} {
		code, body := post(url.Values{"name": {c.name}, "mac": {c.mac}, "confirm": {"yes"}}, same)
		if code != http.StatusUnprocessableEntity || !strings.Contains(body, `<div class="err">`) || !strings.Contains(body, c.want) {
			t.Errorf("adopt %s %s: HTTP %d, want 422 saying %q\n%s", c.name, c.mac, code, c.want, body)
		}
	}
	if after, _ := os.ReadFile(ts.cfgPath); string(after) != string(before) {
		t.Errorf("refused adopts changed fleet.yaml:\n%s", after)
	}
}
