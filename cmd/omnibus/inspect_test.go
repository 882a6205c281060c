package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// inspectBrokers are the brokers `omnibus groups` and `omnibus topics` are
// tried on. settle: the broker counts a closed consumer's acks and
// give-backs a moment after it left, so groups is asked again (every
// 100ms, at most 10s) until it shows the expected lag.
var inspectBrokers = []struct {
	name          string
	url           func(t *testing.T) string
	settle        bool
	noTopicList   string // topics fails, saying this
	fromOldestArg []string
}{
	{"kafka", func(t *testing.T) string { return "kafka://" + integration.Kafka(t) + "?auto_create=true" }, false, "", []string{"--from", "earliest"}},
	{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }, true, "rabbitmqctl list_queues", nil},
	{"postgres", func(t *testing.T) string { return integration.Postgres(t) }, false, "", nil},
	{"nsq", func(t *testing.T) string { return integration.NSQ(t) }, true, "", nil},
	{"activemq", func(t *testing.T) string { return integration.ActiveMQ(t) }, false, "", nil},
}

type groupsJSON struct {
	URL    string             `json:"url"`
	Groups []pubsub.GroupInfo `json:"groups"`
}

// Publish N, consume M with a group through `omnibus consume`, and
// `omnibus groups` shows a lag of N−M for that group, in JSON and as a
// table; `omnibus topics` lists the topic (or says where it cannot).
func TestGroupsShowsTheLagOfWhatWasNotConsumed(t *testing.T) {
	const n, m = 8, 3
	for _, b := range inspectBrokers {
		t.Run(b.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			url := b.url(t)
			topic := "lag-" + strings.ReplaceAll(pubsub.NewID(), "-", "")[20:]
			c, err := pubsub.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			defer c.DeleteTopic(context.Background(), topic, "g") //nolint:errcheck // throwaway topics do not pile up on a shared broker
			sub, err := c.Subscribe(ctx, topic, pubsub.Group("g"), pubsub.FromOldest())
			if err != nil {
				t.Fatal(err)
			}
			sub.Close()
			for i := 0; i < n; i++ {
				if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte(fmt.Sprint(i))}); err != nil {
					t.Fatal(err)
				}
			}
			args := append([]string{"consume", "--url", url, topic, "--group", "g", "--count", fmt.Sprint(m), "--timeout", "30s"}, b.fromOldestArg...)
			if code, out, errOut := runCLI(t, ctx, "", args...); code != 0 || strings.Count(out, "\n") != m {
				t.Fatalf("consume: exit %d, %d lines; want 0 and %d\n%s", code, strings.Count(out, "\n"), m, errOut)
			}

			var lag int64 = -2
			deadline := time.Now().Add(10 * time.Second)
			for {
				code, out, errOut := runCLI(t, ctx, "", "groups", url, topic, "--group", "g", "--json")
				var rep groupsJSON
				if code != 0 || json.Unmarshal([]byte(out), &rep) != nil {
					t.Fatalf("groups --json: exit %d\n%s\n%s", code, out, errOut)
				}
				if len(rep.Groups) != 1 || rep.Groups[0].Group != "g" || rep.Groups[0].Topic != topic {
					t.Fatalf("groups --json: %+v, want group g of %s", rep.Groups, topic)
				}
				if strings.Contains(out, "guest:guest") || strings.Contains(out, "omnibus-test-secret") {
					t.Errorf("groups --json printed the password: %s", out)
				}
				lag = rep.Groups[0].Lag
				if lag == n-m || !b.settle || time.Now().After(deadline) {
					break
				}
				select {
				case <-time.After(100 * time.Millisecond):
				case <-ctx.Done():
					t.Fatal(ctx.Err())
				}
			}
			if lag != n-m {
				t.Errorf("group g: lag %d, want %d (%d published, %d consumed)", lag, n-m, n, m)
			}
			code, out, errOut := runCLI(t, ctx, "", "groups", url, topic, "--group", "g")
			if code != 0 || !regexpLine(out, topic, "g", fmt.Sprint(n-m)) {
				t.Errorf("groups: exit %d, table:\n%s%s\nwant a row %s g %d", code, out, errOut, topic, n-m)
			}

			code, out, errOut = runCLI(t, ctx, "", "topics", url, "--json")
			if b.noTopicList != "" {
				if code != 1 || !strings.Contains(errOut, "not supported on") || !strings.Contains(errOut, b.noTopicList) {
					t.Errorf("topics: exit %d, stderr %q; want 1 and a message saying it is not supported and naming %q", code, errOut, b.noTopicList)
				}
				return
			}
			var tops struct{ Topics []pubsub.TopicInfo }
			if code != 0 || json.Unmarshal([]byte(out), &tops) != nil {
				t.Fatalf("topics --json: exit %d\n%s\n%s", code, out, errOut)
			}
			for _, ti := range tops.Topics {
				if ti.Name == topic {
					return
				}
			}
			t.Errorf("topics --json does not list %s:\n%s", topic, out)
		})
	}
}

// regexpLine reports whether some line of a table holds the cells in order.
func regexpLine(table string, cells ...string) bool {
	for _, line := range strings.Split(table, "\n") {
		f := strings.Fields(line)
		if len(f) >= len(cells) && strings.Join(f[:len(cells)], " ") == strings.Join(cells, " ") {
			return true
		}
	}
	return false
}

// consume prints each Kafka record's partition and offset (kcat's habit);
// other brokers have none and print none.
func TestConsumePrintsKafkaPartitionAndOffset(t *testing.T) {
	brokers := []struct {
		name      string
		url       func(t *testing.T) string
		positions bool
	}{
		{"kafka", func(t *testing.T) string { return "kafka://" + integration.Kafka(t) + "?auto_create=true&partitions=3" }, true},
		{"mem", func(*testing.T) string { return "mem://positions" }, false},
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			url := b.url(t)
			topic := "pos-" + strings.ReplaceAll(pubsub.NewID(), "-", "")[20:]
			// The group exists before anything is published (on Kafka it
			// starts at the empty topic's end: offset 0).
			keepMem(t, url, topic, "g").Close()
			c, err := pubsub.Open(ctx, url)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			defer c.DeleteTopic(context.Background(), topic, "g") //nolint:errcheck // throwaway topics do not pile up on a shared broker
			const n = 9
			for i := 0; i < n; i++ {
				if err := c.Publish(ctx, topic, &pubsub.Message{Key: fmt.Sprint("k", i), Payload: []byte("x")}); err != nil {
					t.Fatal(err)
				}
			}
			code, out, errOut := runCLI(t, ctx, "", "consume", "--url", url, topic, "--group", "g", "--count", fmt.Sprint(n), "--timeout", "30s")
			if code != 0 {
				t.Fatalf("consume: exit %d: %s", code, errOut)
			}
			next := map[int32]int64{}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(lines) != n {
				t.Fatalf("consume printed %d lines, want %d", len(lines), n)
			}
			for _, line := range lines {
				var l struct {
					Partition *int32 `json:"partition"`
					Offset    *int64 `json:"offset"`
				}
				if err := json.Unmarshal([]byte(line), &l); err != nil {
					t.Fatal(err)
				}
				if !b.positions {
					if l.Partition != nil || l.Offset != nil {
						t.Errorf("%s has no partitions, but consume printed %s", b.name, line)
					}
					continue
				}
				if l.Partition == nil || l.Offset == nil || *l.Offset != next[*l.Partition] {
					t.Fatalf("line %s: want partition and the next offset of that partition (%v)", line, next)
				}
				next[*l.Partition]++
			}
		})
	}
}

func TestTopicsAndGroupsExplainWhatTheyCannotDo(t *testing.T) {
	cases := []struct {
		name   string
		args   []string
		code   int
		stderr []string
	}{
		{"no URL is a usage error", []string{"groups"}, 2, []string{"omnibus groups --help"}},
		{"mem lives in one process", []string{"topics", "mem://inspect-cli"}, 0, []string{"lives inside this one process", "0 topic(s)"}},
		{"a bad timeout is a usage error", []string{"topics", "mem://inspect-cli", "--timeout", "0s"}, 2, []string{"--timeout"}},
		{"a group the broker does not know is named", []string{"groups", "mem://inspect-cli", "orders", "--group", "nosuch"}, 0, []string{`no group "nosuch" of orders`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, context.Background(), "", tc.args...)
			if code != tc.code {
				t.Errorf("exit %d, want %d: %s", code, tc.code, errOut)
			}
			for _, s := range tc.stderr {
				if !strings.Contains(errOut, s) {
					t.Errorf("stderr %q does not say %q", errOut, s)
				}
			}
		})
	}
}
