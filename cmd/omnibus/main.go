// Command omnibus runs the omnibus demo and operates brokers from a terminal.
//
//	omnibus demo                 the order pipeline on the embedded mem:// broker
//	omnibus demo --url kafka://127.0.0.1:19092
//	omnibus topics kafka://127.0.0.1:9092
//	omnibus groups kafka://127.0.0.1:9092 orders
//
// Exit status: 0 on success, 1 when a command fails, 2 on a usage error (a
// one-line message and a hint on stderr, as Go tools do).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/alecthomas/kong"

	_ "github.com/omnibusmq/omnibus/adapters/all"
)

// The command's streams; tests replace them.
var (
	stdin  io.Reader = os.Stdin
	stdout io.Writer = os.Stdout
	stderr io.Writer = os.Stderr
)

// version is set at build time with -ldflags "-X main.version=v1.2.3";
// otherwise it comes from the module's build information.
var version = ""

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "(devel)"
}

// CLI is the command tree.
type CLI struct {
	Version kong.VersionFlag `help:"Print the version and exit."`

	Demo    DemoCmd    `cmd:"" help:"Run the order pipeline demo (default: embedded mem:// broker, no servers)."`
	Publish PublishCmd `cmd:"" help:"Publish messages (payload from an argument, @file or stdin)."`
	Consume ConsumeCmd `cmd:"" help:"Tail a topic as JSON lines (on Kafka with each record's partition and offset)."`
	DLQ     DLQCmd     `cmd:"" name:"dlq" help:"List and replay poison (dead-letter) topics."`
	Topics  TopicsCmd  `cmd:"" help:"List the broker's topics with partitions and message counts."`
	Groups  GroupsCmd  `cmd:"" help:"List consumer groups with their lag (messages not yet acked) per topic."`
	Doctor  DoctorCmd  `cmd:"" help:"Connect to a broker, print its capabilities and check a round trip."`
	Relay   RelayCmd   `cmd:"" help:"Run the outbox relay (sidecar): forward committed outbox rows to a broker."`
	Bench   BenchCmd   `cmd:"" help:"Measure publish/consume throughput and latency; write a markdown table and SVG/PNG charts."`
}

// usageError is a mistake in the command line found after parsing (a flag
// value out of range, flags that do not go together): exit status 2.
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// usagef returns a usageError.
func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:])
	stop()
	os.Exit(code)
}

// exitRequest carries kong's exit (after --help or --version) out of Parse.
type exitRequest struct{ code int }

// run runs the command line args and returns the exit status.
func run(ctx context.Context, args []string) (code int) {
	var cli CLI
	parser, err := kong.New(&cli,
		kong.Name("omnibus"),
		kong.Description("One Go API for messaging over any broker."),
		kong.Vars{"version": "omnibus " + versionString()},
		kong.Writers(stdout, stderr),
		kong.Exit(func(code int) { panic(exitRequest{code}) }),
	)
	if err != nil {
		fmt.Fprintln(stderr, "omnibus:", err)
		return 1
	}
	defer func() {
		if r := recover(); r != nil {
			e, ok := r.(exitRequest)
			if !ok {
				panic(r)
			}
			code = e.code
		}
	}()
	kctx, err := parser.Parse(args)
	if err != nil {
		hint := "omnibus --help"
		var pe *kong.ParseError
		if errors.As(err, &pe) && pe.Context != nil {
			if node := pe.Context.Selected(); node != nil {
				hint = node.FullPath() + " --help"
			}
		}
		fmt.Fprintf(stderr, "omnibus: %v\nRun '%s' for usage.\n", err, hint)
		return 2
	}
	kctx.BindTo(ctx, (*context.Context)(nil))
	if err := kctx.Run(); err != nil {
		fmt.Fprintln(stderr, "omnibus:", err)
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "Run '%s --help' for usage.\n", kctx.Selected().FullPath())
			return 2
		}
		return 1
	}
	return 0
}
