package pubsub_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// The portable rule: what no broker accepts.
func TestBadTopicOrGroupIsInvalidAtOnce(t *testing.T) {
	bad := map[string]string{
		"empty":               "",
		"invalid UTF-8":       "orders\xff\xfe",
		"cut multi-byte rune": "caf\xc3",
		"NUL":                 "orders\x00x",
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pubsub.Open(ctx, "mem://badtopic")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for name, topic := range bad {
		t.Run(name, func(t *testing.T) {
			if err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte("x")}); !errors.Is(err, pubsub.ErrInvalid) {
				t.Errorf("Publish(%q) = %v, want ErrInvalid", topic, err)
			}
			if s, err := c.Subscribe(ctx, topic); !errors.Is(err, pubsub.ErrInvalid) {
				t.Errorf("Subscribe(%q) = %v, want ErrInvalid", topic, err)
				if s != nil {
					s.Close()
				}
			}
			if topic == "" {
				return // an empty group means "no group"
			}
			if s, err := c.Subscribe(ctx, "orders", pubsub.Group(topic)); !errors.Is(err, pubsub.ErrInvalid) {
				t.Errorf("Subscribe(group %q) = %v, want ErrInvalid", topic, err)
				if s != nil {
					s.Close()
				}
			}
		})
	}
}

// rulesBroker is a memory broker reporting name rules in its capabilities.
type rulesBroker struct {
	driver.Broker
	topics, groups driver.NameRule
}

func (b rulesBroker) Capabilities() driver.Capabilities {
	c := b.Broker.Capabilities()
	c.Broker, c.TopicNames, c.GroupNames = "testmq", b.topics, b.groups
	return c
}

// Each broker's own name rules, from its capabilities, are checked by the
// portable layer in Publish and Subscribe (topic and group); the error
// names the field, the broker and the rule.
func TestBrokerNameRulesAreCheckedByThePortableLayer(t *testing.T) {
	kafkaLike := driver.NameRule{MaxBytes: 249, Pattern: `[a-zA-Z0-9._-]*[a-zA-Z0-9_-][a-zA-Z0-9._-]*|\.{3,}`, Allowed: "ASCII letters, digits, '.', '_', '-'"}
	nsqLike := driver.NameRule{MaxBytes: 64, Pattern: `[.a-zA-Z0-9_-]+(#ephemeral)?`, Allowed: "a-z, A-Z, 0-9, '.', '_', '-', possibly ending in #ephemeral"}
	for _, tc := range []struct {
		name           string
		topics, groups driver.NameRule
		topic, group   string
		wantErr        string // "" accepts; else the text the error must hold
	}{
		{name: "no rules accept spaces and unicode", topic: "orders créés", group: "billing team"},
		{name: "no rules accept a long name", topic: strings.Repeat("é", 300), group: strings.Repeat("g", 1000)},
		{name: "within kafka-like limits", topics: kafkaLike, topic: "orders.created_v2-x", group: "any group name"},
		{name: "kafka-like topic too long", topics: kafkaLike, topic: strings.Repeat("a", 250), wantErr: `is 250 bytes: testmq accepts topic names of at most 249 bytes`},
		{name: "kafka-like topic with a space", topics: kafkaLike, topic: "orders created", wantErr: `topic "orders created": testmq accepts topic names of at most 249 bytes; ASCII letters`},
		{name: "kafka-like topic '..'", topics: kafkaLike, topic: "..", wantErr: `testmq accepts topic names`},
		{name: "kafka-like topic '...' is fine", topics: kafkaLike, topic: "..."},
		{name: "nsq-like group ephemeral", groups: nsqLike, topic: "t", group: "billing#ephemeral"},
		{name: "nsq-like group too long", groups: nsqLike, topic: "t", group: strings.Repeat("g", 65), wantErr: `group "` + strings.Repeat("g", 64) + `..." is 65 bytes: testmq accepts group names of at most 64 bytes`},
		{name: "nsq-like group with a colon", groups: nsqLike, topic: "t", group: "a:b", wantErr: `group "a:b": testmq accepts group names`},
		{name: "bad pattern is an error, not a panic", topics: driver.NameRule{Pattern: "("}, topic: "t", wantErr: "name pattern is invalid"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			c := pubsub.NewClient(rulesBroker{Broker: memory.New(memory.Options{}), topics: tc.topics, groups: tc.groups})
			defer c.Close()
			var opts []pubsub.SubscribeOption
			if tc.group != "" {
				opts = append(opts, pubsub.Group(tc.group))
			}
			var errs []error
			for range 2 { // the client remembers names that passed: the second round must judge the same
				s, err := c.Subscribe(ctx, tc.topic, opts...)
				if err == nil {
					s.Close()
				}
				errs = append(errs, err)
				if !strings.Contains(tc.wantErr, "group") { // Publish has no group to check
					errs = append(errs, c.Publish(ctx, tc.topic, &pubsub.Message{Payload: []byte("x")}))
				}
			}
			for i, err := range errs {
				if tc.wantErr == "" {
					if err != nil {
						t.Errorf("call %d: %v, want nil", i, err)
					}
					continue
				}
				if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Errorf("call %d: %v, want ErrInvalid saying %q", i, err, tc.wantErr)
				}
			}
		})
	}
}
