package activemq

import (
	"context"
	"errors"
	"net"
	"reflect"
	"strings"
	"testing"
	"time"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestParseURLSetsOptionsFromParams(t *testing.T) {
	addr, o, err := ParseURL("activemq://u:secret@127.0.0.1:61616?groups=a,%20b&unroutable=drop&prefetch=100&max_attempts=5&publish_timeout=5s&connection_timeout=4s&idle_timeout=20s&reconnect_min=50ms&reconnect_max=2s&max_message_size=1000&container_id=svc")
	if err != nil {
		t.Fatal(err)
	}
	if addr != "activemq://u:secret@127.0.0.1:61616" {
		t.Errorf("addr = %q, want the URL without its query", addr)
	}
	want := Options{
		Flavor: FlavorArtemis, Groups: []string{"a", "b"}, DropUnroutable: true, Prefetch: 100, MaxAttempts: 5,
		PublishTimeout: 5 * time.Second, ConnectionTimeout: 4 * time.Second, IdleTimeout: 20 * time.Second,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 2 * time.Second, MaxMessageSize: 1000, ContainerID: "svc",
	}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("options = %+v\nwant      %+v", o, want)
	}
}

func TestParseURLDefaultsAreSafe(t *testing.T) {
	_, o, err := ParseURL("activemq://127.0.0.1:61616")
	if err != nil {
		t.Fatal(err)
	}
	o, err = o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.DropUnroutable || o.MaxAttempts != 0 || o.PublishTimeout != 30*time.Second || o.ConnectionTimeout != 30*time.Second ||
		o.Prefetch != 0 || o.ReconnectMin != 100*time.Millisecond || o.ReconnectMax != 10*time.Second || o.ContainerID != "omnibus" {
		t.Errorf("defaults = %+v", o)
	}
}

func TestBadURLParamsAreErrorsNamingTheParam(t *testing.T) {
	cases := []struct{ url, mention string }{
		{"activemq://127.0.0.1:61616?flavour=artemis", "flavour"},
		{"activemq://127.0.0.1:61616?groups=a&gruops=b", "gruops"},
		{"activemq://127.0.0.1:61616?unroutable=ignore", `unroutable="ignore"`},
		{"activemq://127.0.0.1:61616?prefetch=0", `prefetch="0"`},
		{"activemq://127.0.0.1:61616?max_attempts=-1", `max_attempts="-1"`},
		{"activemq://127.0.0.1:61616?publish_timeout=soon", `publish_timeout="soon"`},
		{"activemq://127.0.0.1:61616?connection_timeout=-1s", `connection_timeout="-1s"`},
		{"activemq://127.0.0.1:61616?max_message_size=big", `max_message_size="big"`},
		{"activemq://127.0.0.1:61616?tls_ca=/ca.pem", "activemqs://"},
		{"activemqs://127.0.0.1:5671?tls_cert=/c.pem", "tls_cert"},
		{"activemqs://127.0.0.1:5671?tls_ca=/does/not/exist.pem", "tls_ca"},
		{"amqp://127.0.0.1:5672", "scheme"},
		{"activemq://127.0.0.1:61616?flavor=apollo", `flavor="apollo"`},
	}
	for _, tc := range cases {
		t.Run(tc.mention, func(t *testing.T) {
			_, _, err := ParseURL(tc.url)
			if !errors.Is(err, driver.ErrInvalid) {
				t.Fatalf("ParseURL(%q) = %v, want ErrInvalid", tc.url, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestFlavorSelectsTheBrokerAndArtemisIsTheDefault(t *testing.T) {
	cases := []struct {
		url         string
		flavor      string
		maxAttempts int // after withDefaults
	}{
		{"activemq://127.0.0.1:61616", FlavorArtemis, 0},
		{"activemq://127.0.0.1:61616?flavor=artemis", FlavorArtemis, 0},
		{"activemq://127.0.0.1:5672?flavor=classic", FlavorClassic, 10},
		{"activemq://127.0.0.1:5672?flavor=classic&max_attempts=3", FlavorClassic, 3},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			_, o, err := ParseURL(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			if o, err = o.withDefaults(); err != nil {
				t.Fatal(err)
			}
			if o.Flavor != tc.flavor || o.MaxAttempts != tc.maxAttempts {
				t.Errorf("flavor %q max attempts %d, want %q and %d", o.Flavor, o.MaxAttempts, tc.flavor, tc.maxAttempts)
			}
		})
	}
}

func TestClassicNamesRejectWildcardsAndDottedGroups(t *testing.T) {
	b := &Broker{opts: Options{Flavor: FlavorClassic}}
	cases := []struct {
		field, name string
		ok          bool
	}{
		{"topic", "orders.created", true},
		{"topic", "orders.*", false},
		{"topic", "orders.>", false},
		{"topic", "a,b", false},
		{"topic", "", false},
		{"group", "billing-v2", true},
		{"group", "billing.v2", false},
		{"group", "bill ing", false},
	}
	for _, tc := range cases {
		t.Run(tc.field+"/"+tc.name, func(t *testing.T) {
			err := b.checkName(tc.field, tc.name)
			if tc.ok != (err == nil) {
				t.Fatalf("checkName(%s, %q) = %v, want ok %v", tc.field, tc.name, err, tc.ok)
			}
			if err != nil && (!errors.Is(err, driver.ErrInvalid) || !strings.Contains(err.Error(), tc.field)) {
				t.Errorf("error %v: want ErrInvalid naming the %s", err, tc.field)
			}
		})
	}
	if err := (&Broker{opts: Options{Flavor: FlavorArtemis}}).checkName("group", "billing.v2"); err != nil {
		t.Errorf("Artemis refused a dotted group: %v", err)
	}
}

func TestOptionsOutOfRangeAreErrorsNamingTheField(t *testing.T) {
	cases := []struct {
		name string
		o    Options
	}{
		{"Prefetch", Options{Prefetch: 70000}},
		{"MaxAttempts", Options{MaxAttempts: -1}},
		{"PublishTimeout", Options{PublishTimeout: -time.Second}},
		{"ReconnectMax", Options{ReconnectMin: time.Second, ReconnectMax: time.Millisecond}},
		{"Groups", Options{Groups: []string{"a:b"}}},
		{"Groups", Options{Flavor: FlavorClassic, Groups: []string{"a.b"}}},
		{"Flavor", Options{Flavor: "apollo"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Dial(context.Background(), "activemq://127.0.0.1:1", tc.o)
			if !errors.Is(err, driver.ErrInvalid) || !strings.Contains(err.Error(), tc.name) {
				t.Errorf("Dial with %+v = %v, want ErrInvalid naming %s", tc.o, err, tc.name)
			}
		})
	}
}

func TestConnectToASilentListenerTimesOut(t *testing.T) {
	addr := integration.SilentListener(t)
	for _, scheme := range []string{"activemq", "activemqs"} {
		t.Run(scheme, func(t *testing.T) {
			start := time.Now()
			c, err := pubsub.Open(context.Background(), scheme+"://user:hunter2-secret@"+addr+"?connection_timeout=300ms")
			elapsed := time.Since(start)
			if err == nil {
				c.Close()
				t.Fatal("Open succeeded against a listener that never answers")
			}
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("error %v does not wrap context.DeadlineExceeded", err)
			}
			if elapsed > 5*time.Second {
				t.Errorf("Open returned after %v, want about the 300ms connection_timeout", elapsed)
			}
			if strings.Contains(err.Error(), "hunter2-secret") {
				t.Errorf("error contains the password: %v", err)
			}
		})
	}
}

func TestOpenErrorsNeverContainThePassword(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().String()
	ln.Close() // nothing listens there any more: connection refused
	urls := []string{
		"activemq://user:hunter2-secret@" + closed,
		"activemq://user:hunter2-secret@" + closed + "?bogus=1",
		"activemq://user:hunter2-secret@" + closed + "?prefetch=-3",
		"activemq://user:hunter2-secret@%zz",
	}
	for _, u := range urls {
		c, err := pubsub.Open(context.Background(), u+map[bool]string{true: "&", false: "?"}[strings.Contains(u, "?")]+"connection_timeout=2s")
		if err == nil {
			c.Close()
			t.Fatalf("Open(%s) succeeded", pubsub.Redact(u))
		}
		if strings.Contains(err.Error(), "hunter2-secret") {
			t.Errorf("error contains the password: %v", err)
		}
	}
}

func TestAttemptAddsDeliveryCountAndCarriedAttempts(t *testing.T) {
	cases := []struct {
		name  string
		count uint32
		ann   amqp.Annotations
		want  int
	}{
		{"FirstDelivery", 0, nil, 1},
		{"ThirdDeliveryByTheBroker", 2, nil, 3},
		{"DelayedCopyAfterTwoDeliveries", 0, amqp.Annotations{attemptAnnotation: int64(2)}, 3},
		{"RedeliveredDelayedCopy", 1, amqp.Annotations{attemptAnnotation: int64(2)}, 4},
	}
	s := &subscription{topic: "t"}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := &amqp.Message{Header: &amqp.MessageHeader{DeliveryCount: tc.count}, Annotations: tc.ann,
				Properties: &amqp.MessageProperties{MessageID: "id"}, Data: [][]byte{[]byte("x")}}
			if got := s.decode(nil, m).Attempt; got != tc.want {
				t.Errorf("Attempt = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestReceivedMetadataHasOnlyStringProperties(t *testing.T) {
	s := &subscription{topic: "t"}
	m := &amqp.Message{
		Properties:            &amqp.MessageProperties{MessageID: "id"},
		ApplicationProperties: map[string]any{"tenant": "acme", "_AMQ_ROUTING_TYPE": int8(0), "x-empty": ""},
	}
	got := s.decode(nil, m).Metadata
	want := map[string]string{"tenant": "acme", "x-empty": ""}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Metadata = %v, want %v", got, want)
	}
}

func TestEncodedMessagesAreDurableWithKeyAsGroupID(t *testing.T) {
	now := time.Unix(1700000000, 0)
	m := encode(&driver.Message{ID: "m1", Key: "order-7", Payload: []byte("p"), Metadata: map[string]string{"a": "b"}}, now)
	if m.Header == nil || !m.Header.Durable {
		t.Error("message is not durable: a broker restart would lose it")
	}
	if m.Properties.GroupID == nil || *m.Properties.GroupID != "order-7" {
		t.Errorf("group-id = %v, want the key", m.Properties.GroupID)
	}
	if m.Properties.MessageID != "m1" || !m.Properties.CreationTime.Equal(now) || m.ApplicationProperties["a"] != "b" {
		t.Errorf("properties = %+v %v", m.Properties, m.ApplicationProperties)
	}
	if m2 := encode(&driver.Message{ID: "m2"}, now); m2.Properties.GroupID != nil {
		t.Errorf("a message without a key has group-id %q", *m2.Properties.GroupID)
	}
}
