package router_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// catchPanic runs f and returns the error it panicked with (nil if none).
func catchPanic(t *testing.T, f func()) (err error) {
	t.Helper()
	defer func() {
		if p := recover(); p != nil {
			e, ok := p.(error)
			if !ok {
				t.Fatalf("panic value %T (%v), want an error", p, p)
			}
			err = e
		}
	}()
	f()
	return nil
}

func TestMiddlewareOrderIsCheckedAtRegistration(t *testing.T) {
	store := middleware.NewMemoryDedupStore(middleware.MemoryDedupOptions{})
	poison := func() router.Layer {
		return middleware.Poison(nopPublisher{}, "orders.poison", middleware.PoisonOptions{})
	}
	retry := func() router.Layer { return middleware.Retry(middleware.RetryOptions{}) }
	dedup := func() router.Layer { return middleware.Dedup(store, middleware.DedupOptions{}) }
	recoverMW := func() router.Layer { return middleware.Recover() }
	timeout := func() router.Layer { return middleware.Timeout(time.Second) }
	observe := router.Ranked{Name: "telemetry.Middleware", Rank: router.RankObserve, Middleware: func(h router.Handler) router.Handler { return h }}
	user := router.Middleware(func(h router.Handler) router.Handler { return h })

	for _, tc := range []struct {
		name      string
		use       []router.Layer
		with      []router.Layer // handler's own, inside use
		wantPanic string         // "" for none; else the names the message must hold
	}{
		{name: "documented order", use: []router.Layer{middleware.CorrelationID(), poison(), retry(), dedup(), timeout(), recoverMW()}},
		{name: "observe outermost then the rest", use: []router.Layer{observe, poison(), retry(), recoverMW()}},
		{name: "attempt-rank layers in any order among themselves", use: []router.Layer{retry(), recoverMW(), timeout(), dedup()}},
		{name: "user middleware anywhere", use: []router.Layer{user, poison(), user, retry(), user, recoverMW(), user}},
		{name: "split between Use and With", use: []router.Layer{poison(), retry()}, with: []router.Layer{dedup(), recoverMW()}},
		{name: "retry outside poison", use: []router.Layer{retry(), poison()}, wantPanic: "middleware.Retry is outside middleware.Poison"},
		{name: "recover outermost", use: []router.Layer{recoverMW(), poison(), retry()}, wantPanic: "middleware.Recover is outside middleware.Poison"},
		{name: "dedup outside retry", use: []router.Layer{poison(), dedup(), retry()}, wantPanic: "middleware.Dedup is outside middleware.Retry"},
		{name: "timeout outside retry", use: []router.Layer{timeout(), retry()}, wantPanic: "middleware.Timeout is outside middleware.Retry"},
		{name: "poison inside telemetry is fine, telemetry inside poison is not", use: []router.Layer{poison(), observe}, wantPanic: "middleware.Poison is outside telemetry.Middleware"},
		{name: "handler's With outside the router's Use", use: []router.Layer{retry()}, with: []router.Layer{poison()}, wantPanic: "middleware.Retry is outside middleware.Poison"},
		{name: "nil middleware", use: []router.Layer{router.Middleware(nil)}, wantPanic: "nil Middleware"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := router.New(nil, router.Options{})
			err := catchPanic(t, func() {
				r.Use(tc.use...)
				r.Handle("orders", "billing", func(context.Context, *pubsub.Message) error { return nil }, router.With(tc.with...))
			})
			if tc.wantPanic == "" {
				if err != nil {
					t.Fatalf("panicked: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatalf("no panic; want one saying %q", tc.wantPanic)
			}
			if !errors.Is(err, pubsub.ErrInvalid) {
				t.Errorf("panic %v does not wrap ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.wantPanic) {
				t.Errorf("panic %q does not say %q", err, tc.wantPanic)
			}
			if !strings.Contains(tc.wantPanic, "nil") && !strings.Contains(err.Error(), "outermost first") {
				t.Errorf("panic %q does not name the right order", err)
			}
		})
	}
}

// A Use after Handle is checked against the handlers already registered.
func TestUseAfterHandleChecksEveryHandlersChain(t *testing.T) {
	r := router.New(nil, router.Options{})
	r.Handle("orders", "billing", func(context.Context, *pubsub.Message) error { return nil },
		router.With(middleware.Poison(nopPublisher{}, "p", middleware.PoisonOptions{})))
	err := catchPanic(t, func() {
		r.Use(middleware.Retry(middleware.RetryOptions{})) // would run outside the handler's Poison
	})
	if err == nil || !strings.Contains(err.Error(), `handler "billing"`) {
		t.Fatalf("panic %v: want one naming handler billing", err)
	}
}

type nopPublisher struct{}

func (nopPublisher) Publish(context.Context, string, ...*pubsub.Message) error { return nil }
