package pubsub

import (
	"time"

	"github.com/google/uuid"
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

// NewID returns a new time-ordered unique message ID (UUIDv7).
func NewID() string {
	id, err := uuid.NewV7()
	if err != nil {
		// NewV7 fails only when the system random source does.
		return uuid.NewString()
	}
	return id.String()
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
