package rabbitmq

import (
	"reflect"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestPublishingsCarryTheMetadataOfWhenTheBatchWasMade(t *testing.T) {
	md := map[string]string{"a": "1", "b": "2"}
	msgs := []*driver.Message{
		{ID: "m0", Key: "k0", Metadata: md},
		{ID: "m1"},
		{ID: "m2", Metadata: map[string]string{"c": "3"}},
	}
	bt := newBatch("topic", true, msgs)
	// A caller that gave up may change its map while its messages are
	// still being sent (or sent again after a reconnect).
	md["a"] = "changed"
	delete(md, "b")
	md["late"] = "x"

	pc := &pubChan{headers: amqp.Table{}}
	want := []amqp.Table{
		{"a": "1", "b": "2", headerKey: "k0"},
		{},
		{"c": "3"},
	}
	for i, w := range want {
		p := pc.publishing(bt, i)
		if !reflect.DeepEqual(p.Headers, w) {
			t.Errorf("message %d headers %v, want %v", i, p.Headers, w)
		}
		if p.MessageId != msgs[i].ID || p.DeliveryMode != amqp.Persistent {
			t.Errorf("message %d: id %q mode %d", i, p.MessageId, p.DeliveryMode)
		}
	}
}
