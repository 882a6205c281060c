package pubsub_test

import (
	"context"
	"errors"
	"testing"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// plainBroker hides every optional interface of the adapter it wraps.
type plainBroker struct{ driver.Broker }

func TestTopicsAndGroupsCheckTheirInputAndTheAdapter(t *testing.T) {
	ctx := context.Background()
	closed := pubsub.NewClient(memory.New(memory.Options{}))
	closed.Close()
	cases := []struct {
		name string
		c    *pubsub.Client
		call func(c *pubsub.Client) error
		want error
	}{
		{"an adapter without Inspector: Topics", pubsub.NewClient(plainBroker{memory.New(memory.Options{})}),
			func(c *pubsub.Client) error { _, err := c.Topics(ctx); return err }, pubsub.ErrUnsupported},
		{"an adapter without Inspector: Groups", pubsub.NewClient(plainBroker{memory.New(memory.Options{})}),
			func(c *pubsub.Client) error { _, err := c.Groups(ctx, "t"); return err }, pubsub.ErrUnsupported},
		{"an empty group name", pubsub.NewClient(memory.New(memory.Options{})),
			func(c *pubsub.Client) error { _, err := c.Groups(ctx, "t", ""); return err }, pubsub.ErrInvalid},
		{"an invalid topic", pubsub.NewClient(memory.New(memory.Options{})),
			func(c *pubsub.Client) error { _, err := c.Groups(ctx, "bad\x00topic"); return err }, pubsub.ErrInvalid},
		{"a closed client", closed,
			func(c *pubsub.Client) error { _, err := c.Topics(ctx); return err }, pubsub.ErrClosed},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			defer tc.c.Close()
			if err := tc.call(tc.c); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want an error wrapping %v", err, tc.want)
			}
		})
	}
}

// Delivery.As reports false where the adapter exposes nothing of a
// delivery (the memory adapter), for any target.
func TestDeliveryAsIsFalseWhereTheAdapterExposesNothing(t *testing.T) {
	ctx := context.Background()
	c := pubsub.NewClient(memory.New(memory.Options{}))
	defer c.Close()
	sub, err := c.Subscribe(ctx, "t", pubsub.Group("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	if err := c.Publish(ctx, "t", &pubsub.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	d, err := sub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var s string
	for _, target := range []any{nil, &s} {
		if d.As(target) {
			t.Errorf("As(%T) = true", target)
		}
	}
	if err := d.Ack(); err != nil {
		t.Errorf("Ack after As: %v", err)
	}
}
