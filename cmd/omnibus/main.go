// Command omnibus runs the omnibus demo and operates brokers from a terminal.
//
//	omnibus demo                 the order pipeline on the embedded mem:// broker
//	omnibus demo --url kafka://127.0.0.1:19092
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/alecthomas/kong"

	_ "github.com/omnibusmq/omnibus/adapters/all"
)

// CLI is the command tree.
type CLI struct {
	Demo    DemoCmd    `cmd:"" help:"Run the order pipeline demo (default: embedded mem:// broker, no servers)."`
	Publish PublishCmd `cmd:"" help:"Publish messages (payload from an argument, @file or stdin)."`
	Consume ConsumeCmd `cmd:"" help:"Tail a topic as JSON lines."`
	DLQ     DLQCmd     `cmd:"" name:"dlq" help:"List and replay poison (dead-letter) topics."`
	Doctor  DoctorCmd  `cmd:"" help:"Connect to a broker, print its capabilities and check a round trip."`
	Relay   RelayCmd   `cmd:"" help:"Run the outbox relay (sidecar): forward committed outbox rows to a broker."`
	Bench   BenchCmd   `cmd:"" help:"Measure publish/consume throughput and latency; write a markdown table and SVG/PNG charts."`
}

func main() {
	var cli CLI
	kctx := kong.Parse(&cli,
		kong.Name("omnibus"),
		kong.Description("One Go API for messaging over any broker."),
		kong.UsageOnError(),
	)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	kctx.BindTo(ctx, (*context.Context)(nil))
	if err := kctx.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "omnibus:", err)
		os.Exit(1)
	}
}
