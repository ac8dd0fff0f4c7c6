package server

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/pifleet/pifleet/nfsroot"
)

// TestNFSTrace checks the PIFLEET_NFS_TRACE record layout (test/scale's readRawTrace reads
// it): version, arrival, credential, and READ data cut while a LOOKUP's reply is kept whole.
func TestNFSTrace(t *testing.T) {
	p := filepath.Join(t.TempDir(), "nfs.trace")
	t.Setenv(nfsTraceEnv, p)
	tr, err := openNFSTrace()
	if err != nil || tr == nil {
		t.Fatalf("openNFSTrace: %v, %v", tr, err)
	}
	lookupReply := bytes.Repeat([]byte{7}, 300)
	arrived := time.Unix(1700000000, 123)
	tr.record(nfsroot.Call{Program: 100003, Proc: 3, Board: "b1", Args: []byte("args"), Reply: lookupReply,
		Arrived: arrived, UID: 1000, GID: 100, GIDs: []uint32{24, 27}})
	tr.record(nfsroot.Call{Program: 100003, Proc: 6, Board: "b1", Args: []byte("read"), Reply: make([]byte, 128<<10)})
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var got [][]byte // per record: board, args, reply
	for len(b) >= 4 {
		n := binary.BigEndian.Uint32(b)
		rec := b[4 : 4+n]
		b = b[4+n:]
		if v := binary.BigEndian.Uint32(rec); v != nfsTraceVersion {
			t.Fatalf("version %d", v)
		}
		at, replied := int64(binary.BigEndian.Uint64(rec[4:])), int64(binary.BigEndian.Uint64(rec[12:]))
		proc := binary.BigEndian.Uint32(rec[24:])
		uid, gid, ngids := binary.BigEndian.Uint32(rec[28:]), binary.BigEndian.Uint32(rec[32:]), binary.BigEndian.Uint32(rec[36:])
		switch {
		case proc == 3 && (at != arrived.UnixNano() || replied < at || uid != 1000 || gid != 100 || ngids != 2 ||
			binary.BigEndian.Uint32(rec[40:]) != 24 || binary.BigEndian.Uint32(rec[44:]) != 27):
			t.Fatalf("LOOKUP record: arrived %d replied %d uid %d gid %d groups %d", at, replied, uid, gid, ngids)
		case proc != 3 && proc != 6:
			t.Fatalf("procedure %d", proc)
		}
		rec = rec[40+4*ngids:]
		for range 3 {
			l := binary.BigEndian.Uint32(rec)
			got = append(got, rec[4:4+l])
			rec = rec[4+l:]
		}
		if len(rec) != 0 {
			t.Fatalf("%d bytes left in a record", len(rec))
		}
	}
	if len(got) != 6 || string(got[0]) != "b1" || string(got[1]) != "args" || !bytes.Equal(got[2], lookupReply) ||
		string(got[4]) != "read" || len(got[5]) != 160 {
		t.Fatalf("records: %q", got[:min(len(got), 5)])
	}
}
