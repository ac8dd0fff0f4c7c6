package nfsroot

import (
	"bytes"
	"fmt"
	"sync"
	"testing"
)

// Two boards, several connections each, writing and reading their own files at once:
// every board sees exactly its own data.
func TestBoardsInParallel(t *testing.T) {
	f := newFixture(t)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for _, board := range []string{"pi-a", "pi-b"} {
		for worker := range 4 {
			c, root := f.client(board)
			wg.Add(1)
			go func() {
				defer wg.Done()
				tmp := c.walk(root, "tmp")
				name := fmt.Sprintf("%s-%d", board, worker)
				st, fh, _ := c.create(tmp, name, 0, mode(0o644))
				if st != 0 {
					errs <- fmt.Errorf("%s create: %d", name, st)
					return
				}
				want := bytes.Repeat([]byte(name), 20000)
				for off := 0; off < len(want); off += 64 << 10 {
					end := min(off+64<<10, len(want))
					if st, _ := c.write(fh, uint64(off), want[off:end], unstable); st != 0 {
						errs <- fmt.Errorf("%s write: %d", name, st)
						return
					}
				}
				if st, _ := c.commit(fh); st != 0 {
					errs <- fmt.Errorf("%s commit: %d", name, st)
					return
				}
				if st, got := c.read(fh, 0, 1<<20); st != 0 || !bytes.Equal(got, want) {
					errs <- fmt.Errorf("%s read back: %d, %d bytes", name, st, len(got))
				}
				host := c.walk(root, "etc", "hostname")
				if st, _ := c.write(host, 0, []byte(board+"\n"), fileSync); st != 0 {
					errs <- fmt.Errorf("%s hostname: %d", name, st)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for _, board := range []string{"pi-a", "pi-b"} {
		c, root := f.client(board)
		if st, data := c.readAll(c.walk(root, "etc", "hostname")); st != 0 || data != board+"\n" {
			t.Fatalf("%s hostname: %q", board, data)
		}
		st, ents := c.readdirplus(c.walk(root, "tmp"))
		if st != 0 || len(ents) != 4 {
			t.Fatalf("%s /tmp has %d entries", board, len(ents))
		}
		for _, e := range ents {
			if e.Name[:4] != board {
				t.Fatalf("%s sees %s", board, e.Name)
			}
		}
	}
}
