package pubsub

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// Message is the unit every broker carries.
//
// ID, Key, Payload and Metadata survive every hop on every adapter (the
// conformance suite proves it). Topic, PublishedAt and Attempt are filled on
// receipt and are read-only for handlers.
type Message struct {
	// ID is unique per message. Publish sets it to a new UUIDv7
	// (time-ordered) when empty. Redeliveries keep it, so consumers
	// deduplicate by ID.
	ID string
	// Key is the ordering and partition key; "" means unordered.
	Key string
	// Payload is the opaque body; it may be empty.
	Payload []byte
	// Metadata holds headers. Keys starting with "omnibus-" are reserved
	// for the library (attempt counts, poison records, correlation).
	Metadata map[string]string

	// Topic the message was received from.
	Topic string
	// PublishedAt is when the broker (or the publishing client) recorded
	// the message; zero when the broker does not say.
	PublishedAt time.Time
	// Attempt is 1 on the first delivery and counts redeliveries where the
	// broker or the omnibus-attempt header tells.
	Attempt int
}

// Reserved metadata keys.
const (
	// MetaAttempt carries the attempt count across redeliveries that the
	// broker does not count itself (republished retries).
	MetaAttempt = "omnibus-attempt"
	// MetaCorrelationID carries the correlation ID across hops.
	MetaCorrelationID = "omnibus-correlation-id"
)

// lastV7 holds the timestamp and sequence (unix ms << 12 | rand_a) of the
// last ID NewID returned, so that IDs of this process strictly increase.
var lastV7 atomic.Uint64

// NewID returns a new time-ordered unique message ID: a UUIDv7 (RFC 9562)
// with the Unix time in milliseconds, a 12-bit sequence that keeps the IDs
// of this process strictly increasing within a millisecond (method 1 of
// the RFC; it borrows from the next millisecond after 4096 IDs), and 62
// random bits.
func NewID() string { return newIDAt(time.Now().UnixMilli()) }

// newIDAt is NewID at the given Unix time in milliseconds (Publish reads the
// clock once per call, not once per message).
func newIDAt(unixMilli int64) string {
	ms := uint64(unixMilli)
	var t uint64
	for {
		last := lastV7.Load()
		t = max(ms<<12, last+1)
		if lastV7.CompareAndSwap(last, t) {
			break
		}
	}
	// math/rand/v2's global source is a ChaCha8 generator per thread,
	// seeded by the operating system: unpredictable enough for uniqueness,
	// and without a system call per ID.
	var u [16]byte
	binary.BigEndian.PutUint64(u[0:8], t>>12<<16|0x7000|t&0xfff)
	binary.BigEndian.PutUint64(u[8:16], rand.Uint64()&(1<<62-1)|1<<63)
	var buf [36]byte
	hex.Encode(buf[0:8], u[0:4])
	buf[8] = '-'
	hex.Encode(buf[9:13], u[4:6])
	buf[13] = '-'
	hex.Encode(buf[14:18], u[6:8])
	buf[18] = '-'
	hex.Encode(buf[19:23], u[8:10])
	buf[23] = '-'
	hex.Encode(buf[24:36], u[10:16])
	return string(buf[:])
}

// Copy returns a deep copy of m.
func (m *Message) Copy() *Message {
	c := *m
	if m.Payload != nil {
		c.Payload = append([]byte(nil), m.Payload...)
	}
	if m.Metadata != nil {
		c.Metadata = make(map[string]string, len(m.Metadata))
		for k, v := range m.Metadata {
			c.Metadata[k] = v
		}
	}
	return &c
}
