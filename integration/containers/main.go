// Command containers starts the test brokers as Docker containers with
// testcontainers-go and prints the `export` lines the integration tests read,
// for machines that have a Docker engine but not the local brokers of
// scripts/brokers:
//
//	go run ./integration/containers > /tmp/brokers.env &   # keeps running; Ctrl-C (or kill) removes the containers
//	. /tmp/brokers.env && go test ./...
//
// It is its own module so that no library or adapter module depends on
// testcontainers-go or the Docker client.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/testcontainers/testcontainers-go"
	tckafka "github.com/testcontainers/testcontainers-go/modules/kafka"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
	tcrabbit "github.com/testcontainers/testcontainers-go/modules/rabbitmq"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx); err != nil {
		slog.Error("containers", "err", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	startCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	provider, err := testcontainers.ProviderDefault.GetProvider()
	if err != nil {
		return fmt.Errorf("no container provider: %w", err)
	}
	defer provider.Close()
	if err := provider.Health(startCtx); err != nil {
		return fmt.Errorf("docker engine not healthy (use scripts/brokers up instead): %w", err)
	}

	var started []testcontainers.Container
	defer func() {
		for _, c := range started {
			tctx, tcancel := context.WithTimeout(context.Background(), 30*time.Second)
			_ = c.Terminate(tctx)
			tcancel()
		}
	}()

	k, err := tckafka.Run(startCtx, "confluentinc/confluent-local:7.5.0", tckafka.WithClusterID("omnibus-test"))
	if err != nil {
		return fmt.Errorf("kafka container: %w", err)
	}
	started = append(started, k)
	brokers, err := k.Brokers(startCtx)
	if err != nil {
		return fmt.Errorf("kafka brokers: %w", err)
	}

	r, err := tcrabbit.Run(startCtx, "rabbitmq:3.12-alpine")
	if err != nil {
		return fmt.Errorf("rabbitmq container: %w", err)
	}
	started = append(started, r)
	amqpURL, err := r.AmqpURL(startCtx)
	if err != nil {
		return fmt.Errorf("rabbitmq url: %w", err)
	}

	p, err := tcpostgres.Run(startCtx, "postgres:16-alpine",
		tcpostgres.WithDatabase("omnibus"), tcpostgres.WithUsername("postgres"), tcpostgres.WithPassword("postgres"),
		tcpostgres.BasicWaitStrategies())
	if err != nil {
		return fmt.Errorf("postgres container: %w", err)
	}
	started = append(started, p)
	pgURL, err := p.ConnectionString(startCtx, "sslmode=disable")
	if err != nil {
		return fmt.Errorf("postgres url: %w", err)
	}

	fmt.Printf("export OMNIBUS_KAFKA_BROKERS=%s\n", strings.Join(brokers, ","))
	fmt.Printf("export OMNIBUS_AMQP_URL='%s'\n", amqpURL)
	fmt.Printf("export OMNIBUS_POSTGRES_URL='%s'\n", pgURL)
	slog.Info("containers ready; interrupt to remove them")
	<-ctx.Done()
	return nil
}
