package main

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// runCLI runs the command line with captured streams.
func runCLI(t *testing.T, ctx context.Context, in string, args ...string) (code int, out, errOut string) {
	t.Helper()
	var o, e strings.Builder
	oldIn, oldOut, oldErr := stdin, stdout, stderr
	stdin, stdout, stderr = strings.NewReader(in), &o, &e
	defer func() { stdin, stdout, stderr = oldIn, oldOut, oldErr }()
	code = run(ctx, args)
	return code, o.String(), e.String()
}

func TestUsageErrorsAreOneLineOnStderrWithExitStatus2(t *testing.T) {
	cases := []struct {
		name string
		args []string
		hint string
	}{
		{"no command", nil, "omnibus --help"},
		{"unknown command", []string{"publsh"}, "omnibus --help"},
		{"missing argument", []string{"publish"}, "omnibus publish --help"},
		{"unknown flag", []string{"consume", "t", "--frm", "earliest"}, "omnibus consume --help"},
		{"bad value after parsing", []string{"publish", "--url", "mem://usage", "t", "x", "--count", "0"}, "omnibus publish --help"},
		{"no payload", []string{"publish", "--url", "mem://usage", "t"}, "omnibus publish --help"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, context.Background(), "", tc.args...)
			if code != 2 {
				t.Errorf("exit status %d, want 2", code)
			}
			if out != "" {
				t.Errorf("stdout is not empty:\n%s", out)
			}
			lines := strings.Split(strings.TrimSpace(errOut), "\n")
			if len(lines) > 3 || !strings.HasPrefix(lines[0], "omnibus: ") || !strings.Contains(errOut, tc.hint) {
				t.Errorf("stderr = %q, want a one-line error and the hint %q", errOut, tc.hint)
			}
		})
	}
}

func TestVersionFlagPrintsTheVersion(t *testing.T) {
	code, out, _ := runCLI(t, context.Background(), "", "--version")
	if code != 0 || !strings.HasPrefix(out, "omnibus ") {
		t.Errorf("--version: exit %d, stdout %q; want 0 and the version", code, out)
	}
}

// keepMem opens a named mem:// broker for the test (so it outlives the
// commands) with group g registered on topic.
func keepMem(t *testing.T, url, topic, group string) *pubsub.Subscription {
	t.Helper()
	keep, err := pubsub.Open(context.Background(), url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { keep.Close() })
	sub, err := keep.Subscribe(context.Background(), topic, pubsub.Group(group))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Close() })
	return sub
}

func TestPublishHabits(t *testing.T) {
	ctx := context.Background()
	t.Run("header value with semicolons and equals", func(t *testing.T) {
		sub := keepMem(t, "mem://habits-h", "t", "g")
		code, _, errOut := runCLI(t, ctx, "", "publish", "--url", "mem://habits-h", "t", "x", "-H", "trace=a=1;b=2", "-H", "k=v")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		d, err := sub.Receive(rctx)
		if err != nil {
			t.Fatal(err)
		}
		if got := d.Message.Metadata; got["trace"] != "a=1;b=2" || got["k"] != "v" {
			t.Errorf("metadata %v, want trace=a=1;b=2 and k=v", got)
		}
	})
	t.Run("empty stdin with --lines says so", func(t *testing.T) {
		code, _, errOut := runCLI(t, ctx, "", "publish", "--url", "mem://habits-e", "t", "-", "--lines")
		if code != 1 || !strings.Contains(errOut, "no lines") {
			t.Errorf("exit %d, stderr %q; want 1 and a message saying stdin had no lines", code, errOut)
		}
	})
	t.Run("mem warns that it lives in one process", func(t *testing.T) {
		_, _, errOut := runCLI(t, ctx, "", "publish", "--url", "mem://habits-m", "t", "x")
		if !strings.Contains(errOut, "lives inside this one process") {
			t.Errorf("stderr %q does not warn that mem:// lives in one process", errOut)
		}
	})
	t.Run("progress is plain lines into a non-terminal", func(t *testing.T) {
		code, _, errOut := runCLI(t, ctx, "", "publish", "--url", "mem://habits-p", "t", "x", "--count", "3000")
		if code != 0 {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if strings.Contains(errOut, "\r") {
			t.Errorf("stderr into a non-terminal holds carriage returns: %q", errOut)
		}
	})
	t.Run("interrupted publish says how many were sent", func(t *testing.T) {
		sub := keepMem(t, "mem://habits-i", "t", "g")
		ictx, cancel := context.WithCancel(ctx)
		go func() {
			defer cancel()
			for i := 0; i < 5; i++ {
				d, err := sub.Receive(ictx)
				if err != nil {
					return
				}
				_ = d.Ack()
			}
		}()
		code, _, errOut := runCLI(t, ictx, "", "publish", "--url", "mem://habits-i", "t", "x", "--count", "100000", "--rate", "200")
		if code != 1 || !regexp.MustCompile(`interrupted: \d+ of 100000 message\(s\) sent`).MatchString(errOut) {
			t.Errorf("exit %d, stderr %q; want 1 and how many were sent", code, errOut)
		}
	})
}

func TestConsumeExitAtEndStopsWhenDrained(t *testing.T) {
	keepMem(t, "mem://habits-c", "t", "g").Close() // the group exists; its messages wait
	ctx := context.Background()
	for i := 0; i < 3; i++ {
		if code, _, e := runCLI(t, ctx, "", "publish", "--url", "mem://habits-c", "t", fmt.Sprint(i)); code != 0 {
			t.Fatal(e)
		}
	}
	done := make(chan struct{})
	var code int
	var out string
	go func() {
		defer close(done)
		code, out, _ = runCLI(t, ctx, "", "consume", "--url", "mem://habits-c", "t", "--group", "g", "-e", "--timeout", "500ms")
	}()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("consume -e did not stop at the end")
	}
	if n := strings.Count(out, "\n"); code != 0 || n != 3 {
		t.Errorf("consume -e: exit %d, %d lines; want 0 and 3", code, n)
	}
}

func TestDoctorJSON(t *testing.T) {
	code, out, errOut := runCLI(t, context.Background(), "", "doctor", "--json", "mem://habits-d")
	var rep struct {
		Connect      string         `json:"connect"`
		Capabilities map[string]any `json:"capabilities"`
		Problems     int            `json:"problems"`
		Checks       []struct{ Status string }
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("doctor --json printed no JSON (%v):\n%s\n%s", err, out, errOut)
	}
	if code != 0 || rep.Connect != "ok" || rep.Problems != 0 || len(rep.Checks) != 1 || rep.Capabilities["groups"] != true {
		t.Errorf("doctor --json: exit %d, %+v", code, rep)
	}
}

// Peek leaves a group's messages as they were where the broker can replay
// (Kafka: a throwaway group), and says plainly where it cannot; it shows
// every queued message up to --count (not only a prefetch's worth).
func TestConsumePeek(t *testing.T) {
	brokers := []struct {
		name     string
		url      func(t *testing.T) string
		replays  bool
		attempts int // Attempt of the first real delivery after one peek
	}{
		{"mem", func(*testing.T) string { return "mem://habits-peek" }, false, 2},
		{"kafka", func(t *testing.T) string { return "kafka://" + integration.Kafka(t) + "?auto_create=true" }, true, 1},
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }, false, 0},
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }, false, 0},
	}
	const queued = 150
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			url := b.url(t)
			topic := "peek." + strings.ReplaceAll(pubsub.NewID(), "-", "")[:12]
			c, err := pubsub.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.FromOldest())
			if err != nil {
				t.Fatal(err)
			}
			sub.Close()
			for i := 0; i < queued; i++ {
				if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte(fmt.Sprint(i))}); err != nil {
					t.Fatal(err)
				}
			}
			code, out, errOut := runCLI(t, ctx, "", "consume", "--url", url, topic, "--group", "g", "--peek", "--count", fmt.Sprint(queued), "--timeout", "20s")
			if code != 0 {
				t.Fatalf("peek: exit %d: %s", code, errOut)
			}
			if n := strings.Count(out, "\n"); n != queued {
				t.Errorf("peek showed %d of %d queued messages", n, queued)
			}
			if !b.replays && !strings.Contains(errOut, "counts as a delivery attempt") {
				t.Errorf("peek on %s does not say that it counts a delivery attempt: %q", b.name, errOut)
			}
			if b.attempts == 0 {
				return
			}
			sub, err = c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.FromOldest())
			if err != nil {
				t.Fatal(err)
			}
			defer sub.Close()
			d, err := sub.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if d.Message.Attempt != b.attempts {
				t.Errorf("after one peek the group's message has Attempt %d, want %d", d.Message.Attempt, b.attempts)
			}
		})
	}
}

func TestBenchCompareAndJSONOnEveryBroker(t *testing.T) {
	brokers := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"mem", func(*testing.T) string { return "mem://habits-bench" }},
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }},
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }},
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			code, out, errOut := runCLI(t, context.Background(), "", "bench", b.url(t), "--messages", "300", "--batch", "50", "--publishers", "2", "--compare", "--json", "--out", t.TempDir())
			if code != 0 {
				t.Fatalf("bench --compare: exit %d: %s", code, errOut)
			}
			var rep struct{ Results []struct{ Client string } }
			if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Results) != 2 {
				t.Errorf("bench --json printed %q (%v), want two results", out, err)
			}
		})
	}
}

// Bench deletes its topics and their groups at the end unless --keep.
func TestBenchCleansUpUnlessKeep(t *testing.T) {
	brokers := []struct {
		name   string
		url    func(t *testing.T) string
		exists func(t *testing.T, url, topic string) bool
	}{
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }, func(t *testing.T, url, topic string) bool {
			c, err := pubsub.Open(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			b := c.Driver().(*postgres.Broker)
			var n int
			if err := b.Pool().QueryRow(context.Background(), `SELECT count(*) FROM `+b.GroupsTable()+` WHERE topic = $1`, topic).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n > 0
		}},
		{"kafka", func(t *testing.T) string { return "kafka://" + integration.Kafka(t) + "?auto_create=true" }, func(t *testing.T, url, topic string) bool {
			c, err := pubsub.Open(context.Background(), url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ts, err := c.Topics(context.Background())
			if err != nil {
				t.Fatal(err)
			}
			for _, ti := range ts {
				if ti.Name == topic {
					return true
				}
			}
			return false
		}},
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }, func(t *testing.T, url, topic string) bool {
			conn, err := amqp.Dial(url)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			_, err = ch.QueueDeclarePassive(topic+"."+benchGroup, true, false, false, false, nil)
			return err == nil
		}},
	}
	for _, b := range brokers {
		for _, keep := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/keep=%v", b.name, keep), func(t *testing.T) {
				url := b.url(t)
				cmd := &BenchCmd{URL: url, Messages: 200, Size: 16, Batch: 50, Publishers: 1, Out: t.TempDir(), Keep: keep}
				var err error
				captureStdout(t, func() { err = cmd.Run(context.Background()) })
				if err != nil {
					t.Fatal(err)
				}
				if len(cmd.topics) != 1 {
					t.Fatalf("bench made topics %v, want one", cmd.topics)
				}
				if got := b.exists(t, url, cmd.topics[0]); got != keep {
					t.Errorf("after bench (keep=%v) topic %s exists: %v", keep, cmd.topics[0], got)
				}
				if keep {
					c, err := pubsub.Open(context.Background(), url)
					if err != nil {
						t.Fatal(err)
					}
					defer c.Close()
					if err := c.DeleteTopic(context.Background(), cmd.topics[0], benchGroup); err != nil {
						t.Errorf("DeleteTopic: %v", err)
					}
				}
			})
		}
	}
}

// doctor never prints the password, whatever the URL's shape (a password
// with '#', '?' or '/', a CRLF tail from a .env file, a misspelled secret
// parameter), in text or JSON.
func TestDoctorNeverPrintsThePassword(t *testing.T) {
	urls := []string{
		"amqp://guest:s3cr3tPW#x@127.0.0.1:1/",
		"amqp://guest:s3cr3tPW?x@127.0.0.1:1/",
		"amqp://guest:s3cr3tPW/x@127.0.0.1:1/",
		"amqp://guest:s3cr3tPW@127.0.0.1:1/\r",
		"kafka://alice:s3cr3tPW?x@127.0.0.1:1",
		"kafka://127.0.0.1:1?sasl_user=bob&sasl_pasword=s3cr3tPW",
		"postgres://app:s3cr3tPW@127.0.0.1:1/db?bogus=1",
		"mem://x?tokn=s3cr3tPW",
	}
	for _, u := range urls {
		for _, asJSON := range []bool{false, true} {
			args := []string{"doctor", u}
			if asJSON {
				args = append(args, "--json")
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			code, out, errOut := runCLI(t, ctx, "", args...)
			cancel()
			if code == 0 {
				t.Errorf("doctor %q succeeded", u)
			}
			if strings.Contains(out+errOut, "s3cr3tPW") {
				t.Errorf("doctor %q (json %v) printed the password:\n%s%s", u, asJSON, out, errOut)
			}
		}
	}
}

// The relay sidecar stops with a clear message and exit status 1 when the
// outbox table is missing, instead of retrying forever.
func TestRelayStopsWhenTheTableIsMissing(t *testing.T) {
	db := integration.Postgres(t)
	table := "missing_" + strings.ReplaceAll(pubsub.NewID(), "-", "")[:12]
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	code, _, errOut := runCLI(t, ctx, "", "relay", "--db", db, "--table", table, "--to", "mem://relay-missing")
	if ctx.Err() != nil {
		t.Fatal("relay kept retrying a missing table")
	}
	if code != 1 || !strings.Contains(errOut, "does not exist") || !strings.Contains(errOut, "--migrate") {
		t.Errorf("relay: exit %d, stderr:\n%s\nwant 1 and a message naming the missing table and --migrate", code, errOut)
	}
}

// The relay sidecar's --db errors and logs never print the password (the
// refused port is retried: the run is bounded by its context).
func TestRelayDBErrorsNeverPrintThePassword(t *testing.T) {
	for _, db := range []string{
		"postgres://app:s3cr3tPW#x@127.0.0.1:1/db",
		"postgres://app:s3cr3tPW@127.0.0.1:1/db?sslmode=bogus",
		"postgres://app:s3cr3tPW@127.0.0.1:1/db\r",
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, out, errOut := runCLI(t, ctx, "", "relay", "--db", db, "--to", "mem://relay-secret")
		cancel()
		if strings.Contains(out+errOut, "s3cr3tPW") {
			t.Errorf("relay --db %q printed the password:\n%s%s", db, out, errOut)
		}
	}
}
