package nfsroot

import "sync"

// bufPool keeps the buffers of received records and of replies for reuse, in size
// classes of 8 KiB to 1 MiB of data (plus room for headers), so a READ or WRITE does not
// allocate and zero a fresh buffer, and the collector does not run for them.
//
// What it holds is bounded by the byte budgets (limits.go): every buffer it hands out
// belongs to a call, and each call reserves the capacity of its record and of its reply
// buffer (callCost) before it runs, so the buffers of calls in flight and replies not yet
// sent never exceed what the budgets allow, and the pool only keeps buffers that were in
// use together. A sync.Pool is emptied by the collector: an idle server holds none of it
// after the runtime's periodic collections.
type bufPool struct {
	classes [poolClasses]sync.Pool
}

const (
	poolMin     = 8 << 10 // data of the smallest class
	poolSlack   = 4 << 10 // room for RPC and NFS headers over a class's data
	poolClasses = 8       // 8 KiB, 16 KiB, ..., 1 MiB (maxIO) of data
)

// classCap is the capacity of class i's buffers.
func classCap(i int) int { return poolMin<<i + poolSlack }

// poolClass returns the smallest class whose buffers hold n bytes, or -1 if none does.
func poolClass(n int) int {
	for i := range poolClasses {
		if n <= classCap(i) {
			return i
		}
	}
	return -1
}

// bufCap is the capacity get(n) returns.
func bufCap(n int) int {
	if i := poolClass(n); i >= 0 {
		return classCap(i)
	}
	return n
}

// get returns an empty buffer with room for n bytes.
func (p *bufPool) get(n int) []byte {
	i := poolClass(n)
	if i < 0 {
		return make([]byte, 0, n)
	}
	if b, ok := p.classes[i].Get().(*[]byte); ok {
		return (*b)[:0]
	}
	return make([]byte, 0, classCap(i))
}

// put gives a buffer back; only buffers of a class's exact capacity are kept. The caller
// must not use b, or anything sharing its array, afterwards.
func (p *bufPool) put(b []byte) {
	i := poolClass(cap(b))
	if i < 0 || cap(b) != classCap(i) {
		return
	}
	b = b[:0]
	p.classes[i].Put(&b)
}

// grow returns a buffer holding b's bytes with room for n, and puts b back.
func (p *bufPool) grow(b []byte, n int) []byte {
	nb := append(p.get(max(n, 2*cap(b))), b...)
	p.put(b)
	return nb
}
