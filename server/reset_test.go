package server

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"

	nfsc "github.com/willscott/go-nfs-client/nfs"
	"github.com/willscott/go-nfs-client/nfs/rpc"
)

// dialMount connects go-nfs-client to the MOUNT port, on the test servers' boot address
// 127.0.0.100 (the kernel picks 127.0.0.1 as the source). The library binds a
// random source port (a reserved one, as root) and retries only some bind failures, so
// a dial can fail for reasons that have nothing to do with the server: try a few times.
func dialMount(port int) (*rpc.Client, error) {
	var err error
	for try := 0; try < 5; try++ {
		var c *rpc.Client
		if c, err = nfsc.DialServiceAtPort("127.0.0.100", port); err == nil {
			return c, nil
		}
	}
	return nil, fmt.Errorf("dial MOUNT at 127.0.0.100:%d: %w", port, err)
}

// TestResetWhileMounted: a board that has its root mounted is not reset unless forced;
// a forced reset makes the handles it held STALE (never another file), and the board
// can mount its fresh root again.
func TestResetWhileMounted(t *testing.T) {
	needRoot(t)
	// The board's fixed IP is 127.0.0.1, the address go-nfs-client dials from.
	ts := startServer(t, "  - {name: alpha, mac: '02:00:00:00:00:01', serial: '000abc00', ip: 127.0.0.1}\n  - {name: beta, mac: '02:00:00:00:00:02', ip: 127.0.0.3}\n")
	mc, err := dialMount(ts.srv.cfg.Server.Ports.Mount)
	if err != nil {
		t.Fatal(err)
	}
	defer mc.Close()
	m := &nfsc.Mount{Client: mc}
	auth := rpc.AuthUnix{Machinename: "alpha", GidLen: 1}
	if _, err := m.Mount("/boards/beta", auth.Auth()); err == nil {
		t.Fatal("alpha's address mounted beta's export")
	}
	v, err := m.Mount("/boards/alpha", auth.Auth())
	if err != nil {
		t.Fatalf("mount: %v", err)
	}
	w, err := v.OpenFile("etc/mine", 0o644)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprint(w, "board data")
	w.Close()
	if !ts.srv.nfs.Mounted("alpha") {
		t.Fatal("server does not see alpha's mount")
	}

	post := func(q string) (int, string) {
		resp, err := ts.post("/api/boards/alpha/reset"+q, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := post(""); code != http.StatusConflict {
		t.Fatalf("reset of a mounted board: HTTP %d %s, want 409", code, body)
	}
	if _, _, err := v.Lookup("etc/mine"); err != nil {
		t.Fatalf("a refused reset disturbed the board: %v", err)
	}
	if code, body := post("?force=1"); code != http.StatusOK {
		t.Fatalf("forced reset: HTTP %d %s", code, body)
	}
	_, _, err = v.Lookup("etc/os-release")
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "stale") {
		t.Fatalf("old root handle after reset: err = %v, want STALE", err)
	}
	// The board reboots: a fresh mount sees the image's pristine state.
	v2, err := m.Mount("/boards/alpha", auth.Auth())
	if err != nil {
		t.Fatalf("mount after reset: %v", err)
	}
	if _, _, err := v2.Lookup("etc/mine"); err == nil {
		t.Error("the board's file survived the reset")
	}
	if _, _, err := v2.Lookup("etc/os-release"); err != nil {
		t.Errorf("image file missing after reset: %v", err)
	}
}
