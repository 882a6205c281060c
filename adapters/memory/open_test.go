package memory_test

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

func TestOpenIsPubsubOpenForItsOwnSchemeOnly(t *testing.T) {
	pubsubtest.CheckOpenRefusesScheme(t, memory.Open, "kafka://localhost:9092", "kafka")
	ctx := context.Background()
	c, err := memory.Open(ctx, "mem://open-test")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Publish(ctx, "orders", &pubsub.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
}

// Open is pubsub.Open for mem:// URLs only.
func ExampleOpen() {
	ctx := context.Background()
	c, err := memory.Open(ctx, "mem://example-open")
	if err != nil {
		panic(err)
	}
	defer c.Close()
	fmt.Println(c.Capabilities().Broker, c.Capabilities().TopicNames)
	_, err = memory.Open(ctx, "kafka://localhost:9092")
	fmt.Println(errors.Is(err, pubsub.ErrInvalid))
	// Output:
	// memory any name
	// true
}
