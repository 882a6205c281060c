// Command orderservice is a small order service on omnibus: an HTTP endpoint
// writes each order and its "orders.created" event in one database
// transaction (the outbox); a relay forwards the events to the broker; a
// router charges each order once, with retries, deduplication and a poison
// topic for orders that cannot be charged. It runs on any broker, a fresh
// one too: set OMNIBUS_URL (mem:// by default). At start it declares the
// consumer group "shipping" on payments.completed, so that no payment event
// is lost (or refused as unroutable, on RabbitMQ) before the shipping
// service first runs; ORDERS_TOPIC_PREFIX puts a prefix before every topic.
//
//	OMNIBUS_URL=kafka://127.0.0.1:19092?auto_create=true ORDERS_DB=sqlite:/tmp/orders.db go run ./examples/orderservice
//	curl -d '{"customer":"ada","amount_cents":1299}' localhost:8080/orders
//	curl localhost:8080/metrics       # Prometheus metrics via OpenTelemetry
package main

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"github.com/omnibusmq/omnibus/middleware/telemetry"
)

func main() {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	if err := run(log); err != nil {
		log.Error("orderservice stopped", "error", err)
		os.Exit(1)
	}
}

func getenv(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func run(log *slog.Logger) error {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	exporter, err := prometheus.New()
	if err != nil {
		return err
	}
	tel, err := telemetry.New(telemetry.Options{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))})
	if err != nil {
		return err
	}
	cfg := Config{
		BrokerURL:   getenv("OMNIBUS_URL", "mem://"),
		DB:          getenv("ORDERS_DB", "sqlite:"+filepath.Join(os.TempDir(), "omnibus-orders.db")),
		Telemetry:   tel,
		Logger:      log,
		TopicPrefix: os.Getenv("ORDERS_TOPIC_PREFIX"),
	}
	svc, err := New(ctx, cfg)
	if err != nil {
		return err
	}
	defer svc.Close()
	mux := http.NewServeMux()
	mux.Handle("/", svc.HTTP())
	mux.Handle("GET /metrics", promhttp.Handler())
	srv := &http.Server{Addr: getenv("ADDR", "127.0.0.1:8080"), Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
	}()
	errc := make(chan error, 1)
	go func() { errc <- svc.Run(ctx) }()
	log.Info("orderservice listening", "addr", srv.Addr)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		stop()
		<-errc
		return err
	}
	return <-errc
}
