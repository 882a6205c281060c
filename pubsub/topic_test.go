package pubsub_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

func TestBadTopicOrGroupIsInvalidAtOnce(t *testing.T) {
	bad := map[string]string{
		"empty":               "",
		"invalid UTF-8":       "orders\xff\xfe",
		"cut multi-byte rune": "caf\xc3",
		"NUL":                 "orders\x00x",
		"C1 control":          "orders\u0085x",
		"too long":            strings.Repeat("é", 200),
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
