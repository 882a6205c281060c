package reliability_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/omnibusmq/omnibus/adapters/all"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/outbox"
	"github.com/omnibusmq/omnibus/pubsub"
)

// The relay subprocess (this test binary re-executed) reads its settings
// from these variables.
const (
	envRelayURL   = "OMNIBUS_RELAY_CHILD_URL" // broker URL; set only in the child
	envRelayTable = "OMNIBUS_RELAY_CHILD_TABLE"
	readyLine     = "relay-ready"
)

func TestMain(m *testing.M) {
	if u := os.Getenv(envRelayURL); u != "" {
		if err := runRelay(u, os.Getenv(envRelayTable)); err != nil {
			fmt.Fprintln(os.Stderr, "relay child:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func runRelay(brokerURL, table string) error {
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, os.Getenv(integration.EnvPostgres))
	if err != nil {
		return err
	}
	store, err := outbox.NewPgxStore(pool, outbox.StoreOptions{Table: table})
	if err != nil {
		return err
	}
	// Each confirmed send is reported on stdout, so that the test kills
	// the relay in the middle of the stream, not after it.
	client, err := pubsub.Open(ctx, brokerURL, pubsub.WithObserver(progress{}))
	if err != nil {
		return err
	}
	r, err := outbox.NewRelay(store, client, outbox.RelayOptions{BatchSize: 100, PollInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	fmt.Println(readyLine)
	return r.Run(ctx)
}

type progress struct{}

func (progress) Publish(ctx context.Context, topic string, msgs []*pubsub.Message) func(error) {
	return func(err error) {
		if err == nil {
			fmt.Println("sent", len(msgs))
		}
	}
}

type relayProc struct {
	cmd  *exec.Cmd
	sent chan int // confirmed sends, as the relay reports them
	done chan error
}

func startRelay(t *testing.T, brokerURL, table string) *relayProc {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), envRelayURL+"="+brokerURL, envRelayTable+"="+table)
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &relayProc{cmd: cmd, sent: make(chan int, 1024), done: make(chan error, 1)}
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			line := sc.Text()
			if line == readyLine {
				close(ready)
			} else if n, ok := strings.CutPrefix(line, "sent "); ok {
				v, _ := strconv.Atoi(n)
				select {
				case p.sent <- v:
				default: // nobody counts any more
				}
			}
		}
		err := cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) && !ee.Exited() {
			err = nil // our SIGKILL
		}
		p.done <- err
	}()
	select {
	case <-ready:
	case err := <-p.done:
		t.Fatalf("relay exited before it was ready: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("relay not ready after a minute")
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
	})
	return p
}

// A relay SIGKILLed five times while it forwards 3 000 outbox rows into a
// real broker, and restarted each time, loses none: every row reaches the
// consumer group, and first deliveries keep per-key order on the brokers
// that claim OrderingPerKey. Duplicates (rows the broker had confirmed but
// the killed relay had not yet deleted) are counted.
func TestRelayKilledMidStreamIntoEachBroker(t *testing.T) {
	pg := integration.Postgres(t)
	type broker struct {
		name string
		url  func(t *testing.T, topic string) string
	}
	brokers := []broker{
		{"kafka", func(t *testing.T, topic string) string {
			return "kafka://" + integration.Kafka(t) + "?auto_create=true&partitions=4&start=earliest"
		}},
		{"rabbitmq", func(t *testing.T, topic string) string {
			return withQuery(integration.AMQP(t), "groups=relaycheck")
		}},
		{"postgres", func(t *testing.T, topic string) string { return pg }},
	}
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, pg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			suffix := strconv.FormatInt(time.Now().UnixNano()%1e12, 10)
			topic := "relaykill-" + b.name + "-" + suffix
			table := "relaykill_" + suffix
			url := b.url(t, topic)
			store, err := outbox.NewPgxStore(pool, outbox.StoreOptions{Table: table})
			if err != nil {
				t.Fatal(err)
			}
			if err := store.Migrate(ctx); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+table) })

			client, err := pubsub.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			sub, err := client.Subscribe(ctx, topic, pubsub.Group("relaycheck"), pubsub.FromOldest())
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()

			const rows, keys, kills = 3000, 16, 5
			seqOf := map[string]int{}
			perKey := make([]int, keys)
			for start := 0; start < rows; start += 100 {
				tx, err := pool.Begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				var msgs []*pubsub.Message
				for i := start; i < start+100; i++ {
					k := i % keys
					msgs = append(msgs, &pubsub.Message{ID: fmt.Sprintf("%s-%d", topic, i), Key: "key-" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(perKey[k]))})
					perKey[k]++
				}
				if err := store.Publish(ctx, tx, topic, msgs...); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(ctx); err != nil {
					t.Fatal(err)
				}
				for _, m := range msgs {
					seqOf[m.ID], _ = strconv.Atoi(string(m.Payload))
				}
			}

			// The consumer runs on its own goroutine; the test kills the
			// relay each time it has confirmed a fifth of the rows since
			// it started, then starts a new one.
			cctx, stopConsumer := context.WithCancel(ctx)
			defer stopConsumer()
			deliveries := consume(cctx, sub)
			relay := startRelay(t, url, table)
			seen := map[string]int{}
			last := map[string]int{}
			dups, violations, killed, sentByThis := 0, 0, 0, 0
			ordered := client.Capabilities().OrderingPerKey
			stall := time.NewTimer(time.Minute)
			defer stall.Stop()
			for len(seen) < rows {
				select {
				case n := <-relay.sent:
					sentByThis += n
					if killed < kills && sentByThis >= rows/(kills+1) {
						if err := relay.cmd.Process.Signal(syscall.SIGKILL); err != nil {
							t.Fatal(err)
						}
						if err := <-relay.done; err != nil {
							t.Fatalf("relay: %v", err)
						}
						killed++
						relay, sentByThis = startRelay(t, url, table), 0
					}
				case g := <-deliveries:
					if g.err != nil {
						t.Fatalf("consumer after %d of %d rows: %v", len(seen), rows, g.err)
					}
					stall.Reset(time.Minute)
					if seen[g.id]++; seen[g.id] > 1 {
						dups++
						continue
					}
					seq := seqOf[g.id]
					if prev, ok := last[g.key]; ok && seq < prev {
						violations++
					}
					last[g.key] = max(last[g.key], seq)
				case <-stall.C:
					t.Fatalf("no delivery for a minute: %d of %d rows delivered", len(seen), rows)
				}
			}
			if killed < kills {
				t.Errorf("the relay was killed %d times, want %d: it forwarded too fast for the kill points", killed, kills)
			}
			t.Logf("%s: rows=%d delivered=%d duplicates=%d order_violations=%d relay_kills=%d (ordering claimed: %v)",
				b.name, rows, len(seen), dups, violations, killed, ordered)
			for id := range seqOf {
				if seen[id] == 0 {
					t.Errorf("row %s never delivered", id)
				}
			}
			if ordered && violations > 0 {
				t.Errorf("%d per-key order violations of first deliveries", violations)
			}
		})
	}
}

// delivery is what consume reports: a message delivered (and acked), or
// the error that ended consuming.
type delivery struct {
	id, key string
	err     error
}

// consume receives and acks on its own goroutine until ctx ends, and
// reports each delivery, or the error that stopped it, on the channel it
// returns.
func consume(ctx context.Context, sub *pubsub.Subscription) <-chan delivery {
	out := make(chan delivery, 1024)
	report := func(d delivery) bool {
		select {
		case out <- d:
			return true
		case <-ctx.Done():
			return false
		}
	}
	go func() {
		for {
			d, err := sub.Receive(ctx)
			if err != nil {
				report(delivery{err: err})
				return
			}
			if err := d.Ack(); err != nil && !errors.Is(err, pubsub.ErrClosed) {
				report(delivery{err: fmt.Errorf("ack %s: %w", d.Message.ID, err)})
				return
			}
			if !report(delivery{id: d.Message.ID, key: d.Message.Key}) {
				return
			}
		}
	}()
	return out
}

func withQuery(u, kv string) string {
	for i := 0; i < len(u); i++ {
		if u[i] == '?' {
			return u + "&" + kv
		}
	}
	return u + "?" + kv
}
