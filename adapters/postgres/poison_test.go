package postgres_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

// A handler error whose text Postgres cannot store as it is (a multi-byte
// character across the 16 KiB cut, bytes that are not UTF-8) is poisoned on
// the first failure, not redelivered forever.
func TestPoisonRecordWithAnyErrorTextIsStoredOnce(t *testing.T) {
	cases := map[string]string{
		"rune across the cut": strings.Repeat("a", 16<<10-1) + strings.Repeat("é", 10),
		"invalid UTF-8":       "bad input \xff\xfe from the gateway",
	}
	for name, text := range cases {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			c, err := pubsub.Open(ctx, integration.Postgres(t))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			topic := "poison-utf8." + strings.ReplaceAll(pubsub.NewID(), "-", "")[:12]
			dlq, err := c.Subscribe(ctx, topic+".poison", pubsub.Group(middleware.PoisonReaderGroup))
			if err != nil {
				t.Fatal(err)
			}
			defer dlq.Close()
			sub, err := c.Subscribe(ctx, topic, pubsub.Group("billing"))
			if err != nil {
				t.Fatal(err)
			}
			sub.Close()
			routertest.Publish(t, c, topic, &pubsub.Message{ID: "o1", Payload: []byte("x")})
			var runs atomic.Int64
			r := router.New(c, router.Options{NackDelay: -1, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
			r.Use(middleware.Poison(c, topic+".poison", middleware.PoisonOptions{}))
			r.Handle(topic, "billing", func(context.Context, *pubsub.Message) error {
				runs.Add(1)
				return pubsub.Permanent(errors.New(text))
			})
			routertest.Run(t, r)
			d, err := dlq.Receive(ctx)
			if err != nil {
				t.Fatalf("nothing poisoned after %d handler runs: %v", runs.Load(), err)
			}
			_ = d.Ack()
			if d.Message.ID != "o1" || d.Message.Metadata[middleware.MetaPoisonError] == "" {
				t.Errorf("poisoned %+v", d.Message)
			}
			if n := runs.Load(); n != 1 {
				t.Errorf("handler ran %d times, want 1", n)
			}
		})
	}
}
