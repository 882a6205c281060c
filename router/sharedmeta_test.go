package router_test

import (
	"context"
	"strconv"
	"sync"
	"testing"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

// Handlers publishing outputs that share one Metadata map (a common
// template) race on nothing: router.Publish adds the correlation ID to its
// own copy, never to the caller's map. Run with -race.
func TestPublishNeverWritesIntoASharedMetadataMap(t *testing.T) {
	c := newClient(t)
	shared := map[string]string{"tenant": "acme"}
	const n = 200
	var msgs []*pubsub.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, &pubsub.Message{Payload: []byte(strconv.Itoa(i)), Metadata: map[string]string{pubsub.MetaCorrelationID: "c" + strconv.Itoa(i)}})
	}
	var wg sync.WaitGroup
	wg.Add(n)
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	r := router.New(c, router.Options{})
	r.Use(middleware.CorrelationID())
	r.Handle("in", "copier", func(ctx context.Context, m *pubsub.Message) error {
		defer wg.Done()
		return router.Publish(ctx, "out", &pubsub.Message{Payload: m.Payload, Metadata: shared})
	}, router.Concurrency(8))
	routertest.Start(t, r)
	routertest.Publish(t, c, "in", msgs...)
	wait(t, done, "every handler")
	if len(shared) != 1 || shared["tenant"] != "acme" {
		t.Fatalf("the shared metadata map was modified: %v", shared)
	}
}
