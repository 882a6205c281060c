package kafka_test

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/adapters/kafka"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// A group that starts, consumes and closes with nothing going wrong must
// not log warnings: users alert on them.
func TestAHealthyGroupLifecycleLogsNoWarning(t *testing.T) {
	for _, tc := range []struct {
		name  string
		start []pubsub.SubscribeOption
	}{
		{name: "new group from the oldest", start: []pubsub.SubscribeOption{pubsub.FromOldest()}},
		{name: "new group from the newest"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := wait()
			defer cancel()
			logs := &logSink{}
			b, err := kafka.Dial(ctx, kafka.Options{Brokers: strings.Split(integration.Kafka(t), ","), AutoCreate: true,
				Logger: slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelWarn}))})
			if err != nil {
				t.Fatal(err)
			}
			c := pubsub.NewClient(b)
			defer c.Close()
			topic := uniqueName(t, "t")
			if err := c.Publish(ctx, topic, &pubsub.Message{Key: "k", Payload: []byte("before")}); err != nil {
				t.Fatal(err)
			}
			for round := range 3 { // joining with and without a committed position
				sub, err := c.Subscribe(ctx, topic, append([]pubsub.SubscribeOption{pubsub.Group(topic + "-g")}, tc.start...)...)
				if err != nil {
					t.Fatal(err)
				}
				if err := c.Publish(ctx, topic, &pubsub.Message{Key: "k", Payload: []byte(fmt.Sprint(round))}); err != nil {
					t.Fatal(err)
				}
				d, err := sub.Receive(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := d.Ack(); err != nil {
					t.Fatal(err)
				}
				if err := sub.Close(); err != nil {
					t.Fatal(err)
				}
			}
			for _, l := range strings.Split(logs.String(), "\n") {
				if l != "" && !strings.Contains(l, "starts at the newest offset") {
					t.Errorf("logged: %s", l)
				}
			}
		})
	}
}
