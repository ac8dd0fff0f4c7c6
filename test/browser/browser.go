// Package browser drives a headless Chromium from tests over the DevTools protocol (a
// JSON-RPC over a websocket), with the standard library and x/net/websocket: enough to
// load pages, run JavaScript in them (click, read the DOM) and take screenshots.
package browser

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/net/websocket"

	"github.com/pifleet/pifleet/test/require"
)

// Page is one browser tab under test control.
type Page struct {
	t    testing.TB
	ws   *websocket.Conn
	mu   sync.Mutex
	next int
	wait map[int]chan reply
}

type reply struct {
	Result json.RawMessage `json:"result"`
	Error  *struct {
		Message string `json:"message"`
	} `json:"error"`
}

var listening = regexp.MustCompile(`DevTools listening on (ws://\S+)`)

// Start launches a headless Chromium with a fresh profile and returns its first tab. The
// browser is killed when the test ends. It ends t (see require.Missing) when chromium
// is not installed.
func Start(t testing.TB) *Page {
	t.Helper()
	bin := require.Tool(t, "chromium", "chromium")
	// The profile is not a t.TempDir: chromium's helper processes (zygote, renderer,
	// crash handler) outlive a kill of the browser process by a moment and may still be
	// writing into it when the test's own cleanup removes it.
	profile, err := os.MkdirTemp("", "pifleet-chromium-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, bin, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--remote-allow-origins=*", "--remote-debugging-port=0", "--window-size=1200,900",
		"--user-data-dir="+profile, "about:blank")
	// Its own process group, so that the whole browser, helpers included, is killed.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		os.RemoveAll(profile)
		t.Fatalf("chromium: %v", err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		// Bounded: wait for the group to be gone, then remove the profile.
		for i := 0; i < 100 && syscall.Kill(-cmd.Process.Pid, 0) == nil; i++ {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			time.Sleep(50 * time.Millisecond)
		}
		var err error
		for range 20 {
			if err = os.RemoveAll(profile); err == nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
		t.Logf("chromium profile %s left behind: %v", profile, err)
	})
	found := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			if m := listening.FindStringSubmatch(sc.Text()); m != nil {
				select {
				case found <- m[1]:
				default:
				}
			}
		}
	}()
	var browserURL string
	select {
	case browserURL = <-found:
	case <-time.After(30 * time.Second):
		t.Fatal("chromium did not print its DevTools address within 30s")
	}
	// ws://127.0.0.1:PORT/devtools/browser/ID -> the page target's websocket.
	host := strings.SplitN(strings.TrimPrefix(browserURL, "ws://"), "/", 2)[0]
	pageWS := ""
	for i := 0; i < 50 && pageWS == ""; i++ {
		var targets []struct {
			Type string `json:"type"`
			WS   string `json:"webSocketDebuggerUrl"`
		}
		if resp, err := http.Get("http://" + host + "/json/list"); err == nil {
			json.NewDecoder(resp.Body).Decode(&targets)
			resp.Body.Close()
		}
		for _, x := range targets {
			if x.Type == "page" && pageWS == "" {
				pageWS = x.WS
			}
		}
		if pageWS == "" {
			time.Sleep(100 * time.Millisecond)
		}
	}
	if pageWS == "" {
		t.Fatal("chromium has no page target")
	}
	ws, err := websocket.Dial(pageWS, "", "http://"+host)
	if err != nil {
		t.Fatalf("devtools websocket: %v", err)
	}
	t.Cleanup(func() { ws.Close() })
	p := &Page{t: t, ws: ws, wait: map[int]chan reply{}}
	go p.read()
	return p
}

// read dispatches replies to their callers; events are not used.
func (p *Page) read() {
	for {
		var msg struct {
			ID int `json:"id"`
			reply
		}
		if err := websocket.JSON.Receive(p.ws, &msg); err != nil {
			p.mu.Lock()
			for id, ch := range p.wait {
				close(ch)
				delete(p.wait, id)
			}
			p.mu.Unlock()
			return
		}
		p.mu.Lock()
		ch, ok := p.wait[msg.ID]
		delete(p.wait, msg.ID)
		p.mu.Unlock()
		if ok {
			ch <- msg.reply
		}
	}
}

// Call sends one DevTools method and decodes its result into out (if not nil).
func (p *Page) Call(method string, params, out any) error {
	p.mu.Lock()
	p.next++
	id := p.next
	ch := make(chan reply, 1)
	p.wait[id] = ch
	p.mu.Unlock()
	if err := websocket.JSON.Send(p.ws, map[string]any{"id": id, "method": method, "params": params}); err != nil {
		return fmt.Errorf("%s: %w", method, err)
	}
	select {
	case r, ok := <-ch:
		if !ok {
			return fmt.Errorf("%s: browser connection closed", method)
		}
		if r.Error != nil {
			return fmt.Errorf("%s: %s", method, r.Error.Message)
		}
		if out != nil {
			return json.Unmarshal(r.Result, out)
		}
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("%s: no answer in 30s", method)
	}
}

// Navigate loads url and waits until the document has loaded.
func (p *Page) Navigate(url string) {
	p.t.Helper()
	if err := p.Call("Page.navigate", map[string]any{"url": url}, nil); err != nil {
		p.t.Fatal(err)
	}
	p.WaitFor("the page "+url+" to load", `document.readyState === "complete" && location.href !== "about:blank"`)
}

// Eval runs a JavaScript expression in the page and returns its value as JSON-decoded Go.
func (p *Page) Eval(expr string) (any, error) {
	var res struct {
		Result struct {
			Value any `json:"value"`
		} `json:"result"`
		Exception *struct {
			Text string `json:"text"`
		} `json:"exceptionDetails"`
	}
	if err := p.Call("Runtime.evaluate", map[string]any{"expression": expr, "returnByValue": true}, &res); err != nil {
		return nil, err
	}
	if res.Exception != nil {
		return nil, fmt.Errorf("%s: %s", expr, res.Exception.Text)
	}
	return res.Result.Value, nil
}

// Text returns a string-valued expression, failing the test on an error.
func (p *Page) Text(expr string) string {
	p.t.Helper()
	v, err := p.Eval(expr)
	if err != nil {
		p.t.Fatal(err)
	}
	s, _ := v.(string)
	return s
}

// WaitFor polls a boolean JavaScript expression (bounded: 300 tries, 100 ms apart).
func (p *Page) WaitFor(what, expr string) {
	p.t.Helper()
	for i := 0; i < 300; i++ {
		if v, err := p.Eval(expr); err == nil && v == true {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	p.t.Fatalf("timed out waiting for %s (%s); page text:\n%s", what, expr, p.Text("document.body ? document.body.innerText : ''"))
}

// Screenshot saves the page as a PNG at path.
func (p *Page) Screenshot(path string) {
	p.t.Helper()
	var res struct {
		Data string `json:"data"`
	}
	if err := p.Call("Page.captureScreenshot", map[string]any{"format": "png", "captureBeyondViewport": true}, &res); err != nil {
		p.t.Fatal(err)
	}
	png, err := base64.StdEncoding.DecodeString(res.Data)
	if err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(path, png, 0o644); err != nil {
		p.t.Fatal(err)
	}
}
