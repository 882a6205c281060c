package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

const poisonErrorLen = 16 << 10

func TestPoisonRecordErrorTextIsValidUTF8CutOnARuneBoundary(t *testing.T) {
	cases := map[string]string{
		"two-byte rune across the limit":   strings.Repeat("a", poisonErrorLen-1) + strings.Repeat("é", 100),
		"four-byte rune across the limit":  strings.Repeat("a", poisonErrorLen-2) + strings.Repeat("😀", 100),
		"invalid bytes in the handler err": "bad \xff\xfe input",
		"exactly at the limit":             strings.Repeat("é", poisonErrorLen/2),
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			pm := middleware.PoisonRecord(&pubsub.Message{ID: "m", Topic: "orders"}, errors.New(text), "h", time.Now())
			got := pm.Metadata[middleware.MetaPoisonError]
			if !utf8.ValidString(got) {
				t.Fatalf("error text is not valid UTF-8 (ends %q)", got[max(0, len(got)-8):])
			}
			if len(got) > poisonErrorLen+len("…(truncated)") {
				t.Errorf("error text is %d bytes, want at most %d plus the mark", len(got), poisonErrorLen)
			}
		})
	}
}

// strictPublisher refuses, like Postgres and RabbitMQ do, a message with a
// metadata value that is not valid UTF-8 or over 4 KiB.
type strictPublisher struct {
	next    router.Publisher
	refused atomic.Int64
}

func (p *strictPublisher) Publish(ctx context.Context, topic string, msgs ...*pubsub.Message) error {
	for _, m := range msgs {
		for k, v := range m.Metadata {
			if !utf8.ValidString(v) || len(v) > 4<<10 {
				p.refused.Add(1)
				return fmt.Errorf("metadata %q cannot be stored: %w", k, pubsub.ErrInvalid)
			}
		}
	}
	return p.next.Publish(ctx, topic, msgs...)
}

func TestPoisonFallsBackToAMinimalRecordWhenTheFullOneIsRefused(t *testing.T) {
	cases := map[string]struct {
		metadata map[string]string
		err      error
	}{
		"header that is not UTF-8": {map[string]string{"x-bin": "\xff\xfe"}, errors.New("cannot decode")},
		"huge error text":          {nil, errors.New(strings.Repeat("x", 8<<10))},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			c := newClient(t)
			dlq := subscribe(t, c, "orders.poison")
			pub := &strictPublisher{next: c}
			routertest.Publish(t, c, "orders", &pubsub.Message{ID: "o1", Key: "k", Payload: []byte("bad"), Metadata: tc.metadata})
			var runs atomic.Int64
			r := router.New(c, router.Options{NackDelay: -1, Logger: quiet})
			r.Use(middleware.Poison(pub, "orders.poison", middleware.PoisonOptions{}))
			r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
				runs.Add(1)
				return pubsub.Permanent(tc.err)
			})
			routertest.Run(t, r)
			m := receive(t, dlq)
			if m.ID != "o1" || m.Key != "k" || string(m.Payload) != "bad" {
				t.Fatalf("poisoned message %+v lost its ID, key or payload", m)
			}
			if m.Metadata[middleware.MetaPoisonReason] != middleware.ReasonPermanent || m.Metadata[middleware.MetaPoisonOriginalTopic] != "orders" {
				t.Errorf("minimal record lacks the fault record: %v", m.Metadata)
			}
			if !strings.Contains(m.Metadata[middleware.MetaPoisonDropped], "refused") {
				t.Errorf("minimal record does not say what was left out: %v", m.Metadata)
			}
			if got := runs.Load(); got != 1 {
				t.Errorf("handler ran %d times, want 1", got)
			}
			if got := pub.refused.Load(); got != 1 {
				t.Errorf("poison publishes refused: %d, want 1 (the full record only)", got)
			}
		})
	}
}
