package nfsroot

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
)

func FuzzReadRecord(f *testing.F) {
	f.Add([]byte{0x80, 0, 0, 4, 1, 2, 3, 4})
	f.Add([]byte{0, 0, 0, 2, 1, 2, 0x80, 0, 0, 2, 3, 4})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0x80, 0, 0, 0})
	f.Add([]byte{0x80, 0x10, 0, 0, 1})
	f.Add(append([]byte{0x80, 0x01, 0x00, 0x00}, make([]byte, 64<<10)...)) // grows past a pooled buffer
	f.Fuzz(func(t *testing.T, data []byte) {
		// The pooled reader (as connections use it, reusing each record's buffer for the
		// next) reads the same records as the plain one.
		var pool bufPool
		r, pr := bytes.NewReader(data), bytes.NewReader(data)
		for range 100 { // every call consumes input or fails
			rec, err := readRecord(r, nil, maxRecord)
			prec, perr := readRecordGrow(pr, pool.get(0), maxRecord, &pool)
			if (err == nil) != (perr == nil) || !bytes.Equal(rec, prec) {
				t.Fatalf("pooled reader: %d bytes, %v; plain: %d bytes, %v", len(prec), perr, len(rec), err)
			}
			if err != nil {
				return
			}
			pool.put(prec)
			if len(rec) > maxRecord {
				t.Fatalf("record of %d bytes accepted", len(rec))
			}
		}
	})
}

func FuzzParseCall(f *testing.F) {
	c := &client{t: f, uid: 1000, gid: 1000, gids: []uint32{1000, 42}}
	for _, m := range [][]byte{
		c.callMsg(progNFS, 3, 1, make([]byte, fhSize)),
		c.callMsg(progMount, 3, 1, "/boards/pi-a"),
		c.callMsg(progNFSACL, 3, 0),
	} {
		f.Add(m[4:])
	}
	f.Fuzz(func(t *testing.T, rec []byte) {
		h, cerr := parseCall(rec)
		if h == nil {
			return
		}
		if cerr == nil {
			if len(h.cred.gids) > maxGroups || len(h.cred.machine) > maxMachine {
				t.Fatalf("credential over the limits: %+v", h.cred)
			}
			if len(h.args) > len(rec) {
				t.Fatal("args longer than the record")
			}
		}
		w := replyBuf(nil, h.xid)
		if cerr != nil {
			w.callError(cerr, 3, 3)
		}
		w.finish()
	})
}

// FuzzNFSArgs feeds arbitrary argument bytes to every NFS and MOUNT procedure of a live
// export, with a valid root handle in the seeds so the fuzzer reaches the file system.
func FuzzNFSArgs(f *testing.F) {
	fx := newFixture(f)
	cl, root := fx.client("pi-a")
	var b bytes.Buffer
	seed := func(prog uint32, proc uint32, parts ...any) {
		b.Reset()
		m := cl.callMsg(prog, 3, proc, parts...)
		h, _ := parseCall(m[4:])
		f.Add(prog == progMount, uint8(proc), append([]byte(nil), h.args...))
	}
	name := "fuzzname"
	for proc := uint32(0); proc <= 22; proc++ {
		seed(progNFS, proc, root)
		seed(progNFS, proc, root, name)
		seed(progNFS, proc, root, name, uint32(0), uint32(1), uint32(0o644))
		seed(progNFS, proc, root, uint64(0), uint32(100), uint32(2), []byte("data"))
	}
	for proc := uint32(0); proc <= 5; proc++ {
		seed(progMount, proc, "/boards/pi-a")
	}
	s := fx.srv
	cc := &conn{s: s, addr: addrA, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	f.Fuzz(func(t *testing.T, mount bool, proc uint8, args []byte) {
		h := &rpcCallHdr{xid: 1, prog: progNFS, vers: 3, proc: uint32(proc), cred: cred{flavor: authSys}, args: args}
		if mount {
			h.prog = progMount
		}
		rec := s.dispatch(cc, h, nil).rec
		if n := binary.BigEndian.Uint32(rec) & 0x7fffffff; int(n) != len(rec)-4 {
			t.Fatalf("record mark %d for %d bytes", n, len(rec)-4)
		}
		if len(rec) > maxRecord+4096 {
			t.Fatalf("reply of %d bytes", len(rec))
		}
	})
}

// FuzzHandleTableReplay opens a handle table log of arbitrary bytes (a disk error or a
// torn write): it must load what is whole, skip the rest, and never hang resolving.
func FuzzHandleTableReplay(f *testing.F) {
	f.Add([]byte{})
	f.Add(appendRecord(appendRecord([]byte(tableMagic), opAddLink, 5, link{1, "a"}), opOnlyLink, 6, link{5, "b"}))
	f.Add(appendRecord(appendRecord([]byte(tableMagic), opOnlyLink, 5, link{6, "a"}), opOnlyLink, 6, link{5, "b"}))
	f.Add([]byte(tableMagic + "\xf7\x5a\x00\x13garbage"))
	f.Add([]byte{1, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1, 1, 'a'}) // format 1
	f.Add([]byte{9, 9, 9})
	f.Fuzz(func(t *testing.T, log []byte) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, tableFile), log, 0o600); err != nil {
			t.Fatal(err)
		}
		// An instance id already there: its first creation fsyncs, which would make the
		// fuzzer run a few inputs a second.
		if err := os.WriteFile(filepath.Join(dir, instanceFile), []byte("01234567"), 0o600); err != nil {
			t.Fatal(err)
		}
		tbl, _, err := openTable(dir)
		if err != nil {
			return
		}
		defer tbl.close()
		for id := uint64(0); id < 8; id++ {
			tbl.candidates(id, 1)
		}
	})
}
