package dhcp

import "github.com/insomniacslk/dhcp/dhcpv4"

// Requests are counted by message type and outcome in a fixed table of atomic counters:
// no lock and no allocation per packet, and a bounded set of label values for metrics.

// Request types counted; every other message type is "other".
const (
	reqDiscover = iota
	reqRequest
	reqRelease
	reqDecline
	reqInform
	reqOther
	nRequestTypes
)

var requestNames = [nRequestTypes]string{"discover", "request", "release", "decline", "inform", "other"}

// Outcomes: the reply's message type, no reply, or dropped by the per-MAC rate limit.
const (
	outOffer = iota
	outAck
	outNak
	outNone
	outRateLimited
	outOtherReply
	nOutcomes
)

var outcomeNames = [nOutcomes]string{"offer", "ack", "nak", "none", "rate_limited", "other_reply"}

func requestIndex(t dhcpv4.MessageType) int {
	switch t {
	case dhcpv4.MessageTypeDiscover:
		return reqDiscover
	case dhcpv4.MessageTypeRequest:
		return reqRequest
	case dhcpv4.MessageTypeRelease:
		return reqRelease
	case dhcpv4.MessageTypeDecline:
		return reqDecline
	case dhcpv4.MessageTypeInform:
		return reqInform
	}
	return reqOther
}

func outcomeIndex(t dhcpv4.MessageType) int {
	switch t {
	case dhcpv4.MessageTypeOffer:
		return outOffer
	case dhcpv4.MessageTypeAck:
		return outAck
	case dhcpv4.MessageTypeNak:
		return outNak
	}
	return outOtherReply
}

// RequestCount is how many requests of one message type ended one way.
type RequestCount struct {
	Type    string // "discover", "request", "release", "decline", "inform", "other"
	Outcome string // the reply sent ("offer", "ack", "nak"), "none", or "rate_limited"
	Count   uint64
}

// RequestCounts returns the requests handled so far by type and outcome (malformed,
// oversized and other-interface packets are counted in Stats only), the non-zero
// ones, in a fixed order.
func (s *Server) RequestCounts() []RequestCount {
	var out []RequestCount
	for t := range s.requests {
		for o := range s.requests[t] {
			if n := s.requests[t][o].Load(); n > 0 {
				out = append(out, RequestCount{Type: requestNames[t], Outcome: outcomeNames[o], Count: n})
			}
		}
	}
	return out
}
