package nfsroot

import (
	"bufio"
	"context"
	"net"
	"os"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// TestAcceptOutOfDescriptors runs the server out of file descriptors while a board
// connects: Accept fails with EMFILE, and once descriptors are free again the waiting
// connection is served (it used to stop NFS for good without a word).
func TestAcceptOutOfDescriptors(t *testing.T) {
	f := newFixture(t)
	var lim syscall.Rlimit
	must(t, syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim))
	ents, err := os.ReadDir("/proc/self/fd")
	must(t, err)
	highest := 0
	for _, e := range ents {
		if n, err := strconv.Atoi(e.Name()); err == nil {
			highest = max(highest, n)
		}
	}
	low := lim
	low.Cur = uint64(highest + 64)
	must(t, syscall.Setrlimit(syscall.RLIMIT_NOFILE, &low))
	var fill []int
	restore := func() {
		for _, fd := range fill {
			syscall.Close(fd)
		}
		fill = nil
		_ = syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	defer restore()
	for {
		fd, err := syscall.Open("/dev/null", syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			if err != syscall.EMFILE {
				t.Fatalf("filling the descriptor table: %v", err)
			}
			break
		}
		fill = append(fill, fd)
	}
	// One descriptor for the client's socket; the server's accept finds none.
	syscall.Close(fill[len(fill)-1])
	fill = fill[:len(fill)-1]
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: addrA.AsSlice()}}
	c, err := d.Dial("tcp", f.nfs.String())
	if err != nil {
		t.Fatalf("dial with the last descriptor: %v", err)
	}
	defer c.Close()
	for deadline := time.Now().Add(10 * time.Second); f.srv.Stats().AcceptErrors == 0; {
		if time.Now().After(deadline) {
			t.Fatal("the server's accept never failed")
		}
		time.Sleep(5 * time.Millisecond)
	}
	restore()
	cl := &client{t: t, c: c, br: bufio.NewReader(c), xid: 1}
	if st, _ := cl.mnt(exportPath("pi-a")); st != 0 {
		t.Fatalf("mount after descriptors came back: status %d", st)
	}
	if st, _ := dialFrom(t, addrB, f.nfs).mnt(exportPath("pi-b")); st != 0 {
		t.Fatalf("a new connection after descriptors came back: status %d", st)
	}
}

// TestListenerDiesServeFails closes the listener under a running server: ServeNFS must
// return an error (so `pifleet serve` ends and a supervisor restarts it), not hang.
func TestListenerDiesServeFails(t *testing.T) {
	needRoot(t)
	s := New(Options{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(t, err)
	errc := make(chan error, 1)
	go func() { errc <- s.ServeNFS(context.Background(), ln) }()
	c, err := net.Dial("tcp", ln.Addr().String()) // a connection stays open meanwhile
	must(t, err)
	defer c.Close()
	ln.Close()
	select {
	case err := <-errc:
		if err == nil {
			t.Fatal("ServeNFS returned nil after its listener died")
		}
		t.Logf("ServeNFS: %v", err)
	case <-time.After(20 * time.Second):
		t.Fatal("ServeNFS did not return after its listener died")
	}
}
