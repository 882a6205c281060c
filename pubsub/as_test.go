package pubsub_test

import (
	"testing"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestAsReachesTheAdapterOrReportsFalse(t *testing.T) {
	conn := memory.New(memory.Options{})
	c := pubsub.NewClient(conn)
	defer c.Close()
	var got *memory.Conn
	if !c.As(&got) || got != conn {
		t.Fatalf("As(*memory.Conn) = %v, %p; want true and the adapter", got != nil, got)
	}
	var b driver.Broker
	if !c.As(&b) || b != driver.Broker(conn) {
		t.Fatal("As(driver.Broker) did not give the adapter")
	}
	var other *pubsub.Client
	cases := []struct {
		name   string
		target any
	}{
		{"nil", nil},
		{"not a pointer", got},
		{"a nil pointer", (**memory.Conn)(nil)},
		{"a type the adapter is not", &other},
	}
	for _, tc := range cases {
		if c.As(tc.target) {
			t.Errorf("As(%s) = true, want false", tc.name)
		}
	}
}
