package telemetry_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/middleware/telemetry"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"
)

func setup(t *testing.T) (*telemetry.Telemetry, *tracetest.InMemoryExporter, *sdkmetric.ManualReader, *sdktrace.TracerProvider) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	tel, err := telemetry.New(telemetry.Options{TracerProvider: tp, MeterProvider: mp})
	if err != nil {
		t.Fatal(err)
	}
	return tel, exp, reader, tp
}

func TestTraceStartedBeforePublishContinuesInHandlerSpan(t *testing.T) {
	tel, exp, _, tp := setup(t)
	client := pubsub.NewClient(memory.New(memory.Options{}), pubsub.WithObserver(tel.Observer()))
	defer client.Close()
	r := router.New(client, router.Options{})
	r.Use(tel.Middleware())
	handled := make(chan trace.SpanContext, 1)
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		handled <- trace.SpanContextFromContext(ctx)
		return nil
	})
	stop := routertest.Start(t, r)

	ctx, root := tp.Tracer("test").Start(context.Background(), "http POST /orders")
	if err := client.Publish(ctx, "orders", &pubsub.Message{Payload: []byte("{}")}); err != nil {
		t.Fatal(err)
	}
	root.End()
	var got trace.SpanContext
	select {
	case got = <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("handler not called")
	}
	if got.TraceID() != root.SpanContext().TraceID() {
		t.Fatalf("handler span trace %s, want the publisher's trace %s", got.TraceID(), root.SpanContext().TraceID())
	}
	_ = stop()
	spans := map[string]tracetest.SpanStub{}
	for _, s := range exp.GetSpans() {
		spans[s.Name] = s
	}
	chain := []string{"http POST /orders", "publish orders", "receive orders", "handle billing"}
	for i := 1; i < len(chain); i++ {
		child, parent := spans[chain[i]], spans[chain[i-1]]
		if child.Name == "" || parent.Name == "" {
			t.Fatalf("missing span %q or %q; have %v", chain[i], chain[i-1], keys(spans))
		}
		if child.Parent.SpanID() != parent.SpanContext.SpanID() {
			t.Errorf("span %q's parent is %s, want %q (%s)", chain[i], child.Parent.SpanID(), chain[i-1], parent.SpanContext.SpanID())
		}
	}
	if got.SpanID() != spans["handle billing"].SpanContext.SpanID() {
		t.Errorf("the handler's context carries span %s, want the handle span", got.SpanID())
	}
}

func keys(m map[string]tracetest.SpanStub) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func TestMetricsCountProcessedRetriedPoisoned(t *testing.T) {
	tel, _, reader, _ := setup(t)
	client := pubsub.NewClient(memory.New(memory.Options{}), pubsub.WithObserver(tel.Observer()))
	defer client.Close()
	r := router.New(client, router.Options{})
	r.Use(tel.Middleware(), middleware.Poison(client, "orders.poison", middleware.PoisonOptions{}),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 3, InitialInterval: time.Millisecond}), tel.Attempts())
	done := make(chan struct{}, 10)
	calls := map[string]int{}
	r.Handle("orders", "billing", func(ctx context.Context, m *pubsub.Message) error {
		calls[m.ID]++ // Concurrency 1: no race
		defer func() { done <- struct{}{} }()
		switch m.ID {
		case "flaky":
			if calls[m.ID] == 1 {
				return errors.New("transient")
			}
		case "bad":
			return pubsub.Permanent(errors.New("invalid"))
		}
		return nil
	}, router.Concurrency(1))
	stop := routertest.Start(t, r)
	ctx := context.Background()
	if err := client.Publish(ctx, "orders", &pubsub.Message{ID: "ok"}, &pubsub.Message{ID: "flaky"}, &pubsub.Message{ID: "bad"}); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 4; i++ { // ok, flaky×2, bad
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("handler runs missing")
		}
	}
	_ = stop()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	sums := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if s, ok := m.Data.(metricdata.Sum[int64]); ok {
				for _, dp := range s.DataPoints {
					sums[m.Name] += dp.Value
				}
			}
		}
	}
	want := map[string]int64{
		"omnibus.messages.published": 4, // 3 orders + 1 poison
		"omnibus.messages.processed": 3, // ok, flaky, bad (poisoned, then acked)
		"omnibus.messages.retried":   1,
		"omnibus.messages.poisoned":  1,
	}
	for name, v := range want {
		if sums[name] != v {
			t.Errorf("%s = %d, want %d (all: %v)", name, sums[name], v, sums)
		}
	}
}

// Concurrent publishes sharing one Metadata map (a template) through the
// tracing observer race on nothing: the observer writes the trace context
// into the call's own copy. Run with -race.
func TestPublishWithSharedMetadataMapDoesNotWriteIt(t *testing.T) {
	tel, _, _, tp := setup(t)
	client := pubsub.NewClient(memory.New(memory.Options{}), pubsub.WithObserver(tel.Observer()))
	defer client.Close()
	shared := map[string]string{"tenant": "acme"}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				ctx, span := tp.Tracer("test").Start(context.Background(), "publish")
				if err := client.Publish(ctx, "orders", &pubsub.Message{Metadata: shared}); err != nil {
					t.Error(err)
				}
				span.End()
			}
		}()
	}
	wg.Wait()
	if len(shared) != 1 {
		t.Fatalf("the shared metadata map was modified: %v", shared)
	}
}
