// Package telemetry connects omnibus to OpenTelemetry: W3C trace context
// carried in message metadata from Publish to the handler, spans for
// publish, receive and handle, and metrics for what the router does.
//
//	tel, _ := telemetry.New(telemetry.Options{})          // global providers
//	client, _ := pubsub.Open(ctx, url, pubsub.WithObserver(tel.Observer()))
//	r := router.New(client, router.Options{})
//	r.Use(tel.Middleware(), middleware.Poison(client, "orders.poison", middleware.PoisonOptions{}),
//		middleware.Retry(policy), tel.Attempts(), middleware.Recover())
//
// A span started before Publish is the parent of the "publish" span; the
// handler's "receive" span is that span's child, and "handle" is the
// receive span's child: one trace from the HTTP request that caused an
// event to the handler that processed it.
//
// Metrics (instrument names; attributes topic, handler, reason):
//
//	omnibus.messages.published   counter   messages accepted by the broker
//	omnibus.messages.publish_failed counter
//	omnibus.messages.processed   counter   handler chain returned nil (acked)
//	omnibus.messages.failed      counter   handler chain returned an error (nacked)
//	omnibus.messages.retried     counter   handler runs after the first for one delivery, and redeliveries
//	omnibus.messages.poisoned    counter   messages published to a poison topic
//	omnibus.handler.duration     histogram seconds per delivery, all attempts
//	omnibus.outbox.lag           gauge     seconds the oldest unsent outbox row has waited
//	omnibus.outbox.pending       gauge     unsent outbox rows
package telemetry

import (
	"context"
	"fmt"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

const instrumentation = "github.com/omnibusmq/omnibus"

// Options configure New. Zero values use the global OpenTelemetry providers
// and the W3C trace-context + baggage propagator.
type Options struct {
	TracerProvider trace.TracerProvider
	MeterProvider  metric.MeterProvider
	Propagator     propagation.TextMapPropagator
}

// Telemetry holds the tracer and instruments; one per process is enough.
type Telemetry struct {
	tracer    trace.Tracer
	meter     metric.Meter
	prop      propagation.TextMapPropagator
	published metric.Int64Counter
	pubFailed metric.Int64Counter
	processed metric.Int64Counter
	failed    metric.Int64Counter
	retried   metric.Int64Counter
	poisoned  metric.Int64Counter
	duration  metric.Float64Histogram
}

// New creates the tracer and the instruments.
func New(opts Options) (*Telemetry, error) {
	tp, mp, prop := opts.TracerProvider, opts.MeterProvider, opts.Propagator
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	if prop == nil {
		prop = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
	}
	t := &Telemetry{tracer: tp.Tracer(instrumentation), meter: mp.Meter(instrumentation), prop: prop}
	var err error
	counter := func(name, desc string) metric.Int64Counter {
		if err != nil {
			return nil
		}
		var c metric.Int64Counter
		c, err = t.meter.Int64Counter(name, metric.WithDescription(desc), metric.WithUnit("{message}"))
		return c
	}
	t.published = counter("omnibus.messages.published", "Messages the broker accepted.")
	t.pubFailed = counter("omnibus.messages.publish_failed", "Messages whose Publish call failed.")
	t.processed = counter("omnibus.messages.processed", "Deliveries whose handler chain succeeded (acked).")
	t.failed = counter("omnibus.messages.failed", "Deliveries whose handler chain failed (nacked for redelivery).")
	t.retried = counter("omnibus.messages.retried", "Handler runs after the first for one message.")
	t.poisoned = counter("omnibus.messages.poisoned", "Messages moved to a poison topic.")
	if err != nil {
		return nil, fmt.Errorf("telemetry: create counters: %w", err)
	}
	if t.duration, err = t.meter.Float64Histogram("omnibus.handler.duration", metric.WithUnit("s"),
		metric.WithDescription("Time from delivery to the handler chain's result, all attempts included.")); err != nil {
		return nil, fmt.Errorf("telemetry: create histogram: %w", err)
	}
	return t, nil
}

// Propagator returns the propagator used to carry trace context in metadata.
func (t *Telemetry) Propagator() propagation.TextMapPropagator { return t.prop }

// carrier adapts message metadata to the propagation API.
type carrier map[string]string

func (c carrier) Get(k string) string { return c[k] }
func (c carrier) Set(k, v string)     { c[k] = v }
func (c carrier) Keys() []string {
	ks := make([]string, 0, len(c))
	for k := range c {
		ks = append(ks, k)
	}
	return ks
}

// Observer returns the pubsub.Observer that starts a "publish" span per
// Publish call, injects its context into every message's metadata
// (traceparent, tracestate, baggage), and counts published and poisoned
// messages. Install it with pubsub.WithObserver.
func (t *Telemetry) Observer() pubsub.Observer { return observer{t} }

type observer struct{ t *Telemetry }

func (o observer) Publish(ctx context.Context, topic string, msgs []*pubsub.Message) func(error) {
	t := o.t
	ctx, span := t.tracer.Start(ctx, "publish "+topic, trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "omnibus"),
			attribute.String("messaging.destination.name", topic),
			attribute.Int("messaging.batch.message_count", len(msgs))))
	if len(msgs) == 1 {
		span.SetAttributes(attribute.String("messaging.message.id", msgs[0].ID))
	}
	var poisoned [][2]string // reason, handler
	for _, m := range msgs {
		if m.Metadata == nil {
			m.Metadata = map[string]string{}
		}
		t.prop.Inject(ctx, carrier(m.Metadata))
		if r, ok := m.Metadata[middleware.MetaPoisonReason]; ok {
			poisoned = append(poisoned, [2]string{r, m.Metadata[middleware.MetaPoisonHandler]})
		}
	}
	return func(err error) {
		attrs := metric.WithAttributes(attribute.String("topic", topic))
		if err != nil {
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			t.pubFailed.Add(context.Background(), int64(len(msgs)), attrs)
		} else {
			t.published.Add(context.Background(), int64(len(msgs)), attrs)
			for _, p := range poisoned {
				t.poisoned.Add(context.Background(), 1, metric.WithAttributes(
					attribute.String("topic", topic), attribute.String("reason", p[0]), attribute.String("handler", p[1])))
			}
		}
		span.End()
	}
}

type runsKey struct{}

// Middleware is the outermost middleware: it continues the publisher's
// trace with a "receive <topic>" consumer span and a "handle <handler>"
// child span, and records processed/failed counts and handler duration.
// Its rank is router.RankObserve: outside Poison and Retry (Use panics
// otherwise).
func (t *Telemetry) Middleware() router.Ranked {
	return router.Ranked{Name: "telemetry.Middleware", Rank: router.RankObserve, Middleware: func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			handler := router.HandlerName(ctx)
			ctx = t.prop.Extract(ctx, carrier(m.Metadata))
			ctx, recv := t.tracer.Start(ctx, "receive "+m.Topic, trace.WithSpanKind(trace.SpanKindConsumer),
				trace.WithAttributes(attribute.String("messaging.system", "omnibus"),
					attribute.String("messaging.destination.name", m.Topic),
					attribute.String("messaging.consumer.group.name", handler),
					attribute.String("messaging.message.id", m.ID),
					attribute.Int("omnibus.attempt", m.Attempt)))
			defer recv.End()
			ctx, span := t.tracer.Start(ctx, "handle "+handler)
			defer span.End()
			var runs atomic.Int64
			ctx = context.WithValue(ctx, runsKey{}, &runs)
			start := time.Now()
			err := next(ctx, m)
			attrs := metric.WithAttributes(attribute.String("topic", m.Topic), attribute.String("handler", handler))
			t.duration.Record(ctx, time.Since(start).Seconds(), attrs)
			if m.Attempt > 1 && runs.Load() <= 1 {
				t.retried.Add(ctx, 1, attrs) // a broker redelivery
			}
			if err != nil {
				span.RecordError(err)
				span.SetStatus(codes.Error, err.Error())
				t.failed.Add(ctx, 1, attrs)
				return err
			}
			t.processed.Add(ctx, 1, attrs)
			return nil
		}
	}}
}

// Attempts is an inner middleware that counts each in-process retry of a
// handler in omnibus.messages.retried. Its rank is router.RankAttempt:
// inside Retry (Use panics otherwise).
func (t *Telemetry) Attempts() router.Ranked {
	return router.Ranked{Name: "telemetry.Attempts", Rank: router.RankAttempt, Middleware: func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			if runs, ok := ctx.Value(runsKey{}).(*atomic.Int64); ok {
				if runs.Add(1) > 1 {
					t.retried.Add(ctx, 1, metric.WithAttributes(
						attribute.String("topic", m.Topic), attribute.String("handler", router.HandlerName(ctx))))
				}
			}
			return next(ctx, m)
		}
	}}
}

// ObserveOutboxLag registers the outbox gauges; lag is called at each
// collection and returns the age of the oldest unsent row and the number
// of unsent rows (outbox.Relay's Lag fits).
func (t *Telemetry) ObserveOutboxLag(lag func(ctx context.Context) (oldest time.Duration, rows int64, err error)) error {
	age, err := t.meter.Float64ObservableGauge("omnibus.outbox.lag", metric.WithUnit("s"),
		metric.WithDescription("Age of the oldest outbox row not yet published."))
	if err != nil {
		return fmt.Errorf("telemetry: outbox lag gauge: %w", err)
	}
	rows, err := t.meter.Int64ObservableGauge("omnibus.outbox.pending", metric.WithUnit("{row}"),
		metric.WithDescription("Outbox rows not yet published."))
	if err != nil {
		return fmt.Errorf("telemetry: outbox pending gauge: %w", err)
	}
	_, err = t.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		oldest, n, err := lag(ctx)
		if err != nil {
			return err
		}
		o.ObserveFloat64(age, oldest.Seconds())
		o.ObserveInt64(rows, n)
		return nil
	}, age, rows)
	if err != nil {
		return fmt.Errorf("telemetry: register outbox callback: %w", err)
	}
	return nil
}
