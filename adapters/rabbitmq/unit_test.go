package rabbitmq

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestParseURLSetsOptionsFromParams(t *testing.T) {
	addr, o, err := ParseURL("amqp://u:secret@127.0.0.1:5672/vh?queue_type=classic&groups=a,%20b&unroutable=drop&publish_channels=3&confirm_window=64&publish_timeout=5s&prefetch=100&reconnect_min=50ms&reconnect_max=2s&heartbeat=3s&connection_timeout=4s&max_message_size=1000&connection_name=svc&partitions=4")
	if err != nil {
		t.Fatal(err)
	}
	if addr != "amqp://u:secret@127.0.0.1:5672/vh" {
		t.Errorf("addr = %q, want the URL without its query", addr)
	}
	want := Options{
		QueueType: QueueClassic, Groups: []string{"a", "b"}, DropUnroutable: true,
		PublishChannels: 3, ConfirmWindow: 64, PublishTimeout: 5 * time.Second, Prefetch: 100,
		ReconnectMin: 50 * time.Millisecond, ReconnectMax: 2 * time.Second, Heartbeat: 3 * time.Second,
		ConnectionTimeout: 4 * time.Second, MaxMessageSize: 1000, ConnectionName: "svc", Partitions: 4,
	}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("options = %+v\nwant      %+v", o, want)
	}
}

func TestParseURLDefaultsAreSafe(t *testing.T) {
	_, o, err := ParseURL("amqp://127.0.0.1/")
	if err != nil {
		t.Fatal(err)
	}
	o, err = o.withDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if o.QueueType != QueueQuorum || o.DropUnroutable || o.PublishChannels != 8 || o.ConfirmWindow != 512 ||
		o.PublishTimeout != 30*time.Second || o.Prefetch != 0 || o.ReconnectMin != 100*time.Millisecond || o.ReconnectMax != 10*time.Second {
		t.Errorf("defaults = %+v", o)
	}
}

func TestBadURLParamsAreErrorsNamingTheParam(t *testing.T) {
	cases := []struct{ url, mention string }{
		{"amqp://127.0.0.1/?queue_typ=quorum", "queue_typ"},
		{"amqp://127.0.0.1/?queue_type=stream", `queue_type="stream"`},
		{"amqp://127.0.0.1/?unroutable=ignore", `unroutable="ignore"`},
		{"amqp://127.0.0.1/?publish_channels=0", `publish_channels="0"`},
		{"amqp://127.0.0.1/?confirm_window=many", `confirm_window="many"`},
		{"amqp://127.0.0.1/?publish_timeout=soon", `publish_timeout="soon"`},
		{"amqp://127.0.0.1/?prefetch=-1", `prefetch="-1"`},
		{"amqp://127.0.0.1/?partitions=257", `partitions="257"`},
		{"amqp://127.0.0.1/?partitions=two", `partitions="two"`},
		{"amqp://127.0.0.1/?tls_ca=/x.pem", "amqps"},
		{"amqps://127.0.0.1/?tls_ca=/does/not/exist.pem", "tls_ca"},
		{"amqps://127.0.0.1/?tls_cert=/c.pem", "tls_key"},
		{"nats://127.0.0.1/", "scheme"},
	}
	for _, c := range cases {
		t.Run(c.mention, func(t *testing.T) {
			_, _, err := ParseURL(c.url)
			if !errors.Is(err, driver.ErrInvalid) {
				t.Fatalf("ParseURL(%q) = %v, want ErrInvalid", c.url, err)
			}
			if !strings.Contains(err.Error(), c.mention) {
				t.Errorf("error %q does not mention %q", err, c.mention)
			}
		})
	}
}

func TestOptionsOutOfRangeAreErrorsNamingTheField(t *testing.T) {
	cases := []struct {
		o       Options
		mention string
	}{
		{Options{QueueType: "stream"}, "QueueType"},
		{Options{PublishChannels: 1000}, "PublishChannels"},
		{Options{ConfirmWindow: -1}, "ConfirmWindow"},
		{Options{PublishTimeout: -time.Second}, "PublishTimeout"},
		{Options{ReconnectMin: time.Minute, ReconnectMax: time.Second}, "ReconnectMax"},
		{Options{Groups: []string{""}}, "Groups"},
		{Options{Partitions: -1}, "Partitions"},
	}
	for _, c := range cases {
		t.Run(c.mention, func(t *testing.T) {
			_, err := Dial(context.Background(), "amqp://127.0.0.1:1/", c.o)
			if !errors.Is(err, driver.ErrInvalid) || !strings.Contains(err.Error(), c.mention) {
				t.Fatalf("Dial with %+v: %v, want ErrInvalid naming %s", c.o, err, c.mention)
			}
		})
	}
}

func TestOpenErrorsNeverContainThePassword(t *testing.T) {
	// Nothing listens on port 1: the dial fails.
	_, err := pubsub.Open(context.Background(), "amqp://user:hunter2@127.0.0.1:1/?connection_timeout=2s")
	if err == nil {
		t.Fatal("Open succeeded against a closed port")
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks the password: %v", err)
	}
	_, err = pubsub.Open(context.Background(), "amqp://user:hunter2@127.0.0.1:1/?bogus=1")
	if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), "bogus") || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("unknown param: %v, want ErrInvalid naming bogus without the password", err)
	}
}

func TestDelayBucketRoundsUpToTwoSignificantDigits(t *testing.T) {
	cases := []struct {
		d    time.Duration
		want int64
	}{
		{time.Nanosecond, 1},
		{time.Millisecond, 1},
		{99 * time.Millisecond, 99},
		{700 * time.Millisecond, 700},
		{701 * time.Millisecond, 710},
		{1234 * time.Millisecond, 1300},
		{2 * time.Second, 2000},
		{time.Hour, 3600000},
		{time.Hour + time.Millisecond, 3700000},
	}
	for _, c := range cases {
		got := delayBucket(c.d)
		if got != c.want {
			t.Errorf("delayBucket(%v) = %d ms, want %d", c.d, got, c.want)
		}
		if time.Duration(got)*time.Millisecond < c.d {
			t.Errorf("delayBucket(%v) = %d ms is shorter than the delay", c.d, got)
		}
	}
}

func TestNamesFitAMQPLimits(t *testing.T) {
	long := strings.Repeat("t", 249)
	q := queueName(long, strings.Repeat("g", 249))
	if len(q) > maxName {
		t.Fatalf("queue name is %d bytes, over %d", len(q), maxName)
	}
	if q == queueName(long, strings.Repeat("g", 248)+"h") {
		t.Error("two long names shortened to the same queue name")
	}
	if got := queueName("orders", "billing"); got != "orders.billing" {
		t.Errorf("queueName = %q, want orders.billing", got)
	}
	if len(delayQueueName(q, 3600000)) > maxName {
		t.Error("delay queue name over the limit")
	}
	if err := validTopic("amq.topic"); !errors.Is(err, driver.ErrInvalid) || !strings.Contains(err.Error(), "amq.topic") {
		t.Errorf("validTopic(amq.topic) = %v, want ErrInvalid naming it", err)
	}
}

// fakeAcker records the settle frames a consumer sends.
type fakeAcker struct {
	mu     sync.Mutex
	frames []string
	closed bool
}

func (f *fakeAcker) Cancel(tag string, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, "cancel "+tag)
	return nil
}

func (f *fakeAcker) Consume(queue, tag string, _, _, _, _ bool, _ amqp.Table) (<-chan amqp.Delivery, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, "consume "+queue+" "+tag)
	return nil, nil
}

func (f *fakeAcker) Qos(n, _ int, _ bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, fmt.Sprintf("qos %d", n))
	return nil
}

func (f *fakeAcker) Ack(tag uint64, multiple bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, fmt.Sprintf("ack %d multiple=%v", tag, multiple))
	return nil
}

func (f *fakeAcker) Nack(tag uint64, multiple, requeue bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.frames = append(f.frames, fmt.Sprintf("nack %d multiple=%v requeue=%v", tag, multiple, requeue))
	return nil
}

func (f *fakeAcker) IsClosed() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.closed
}

func (f *fakeAcker) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.closed = true
	return nil
}

// take returns and forgets the frames sent so far.
func (f *fakeAcker) take() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.frames
	f.frames = nil
	return out
}

func TestAcksCoalesceOnlyOverContiguousSettledTags(t *testing.T) {
	type step struct {
		acks, requeue []uint64
		want          []string
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"RunFromLowestIsOneMultipleAck", []step{
			{acks: []uint64{3, 1, 2}, want: []string{"ack 3 multiple=true"}},
		}},
		{"AckAboveAGapGoesAloneAndAtOnce", []step{
			{acks: []uint64{1, 3, 4}, want: []string{"ack 1 multiple=true", "ack 3 multiple=false", "ack 4 multiple=false"}},
			// 2 fills the gap: 3 and 4 were acked already, so only 2 is outstanding.
			{acks: []uint64{2}, want: []string{"ack 2 multiple=true"}},
			{acks: []uint64{5, 6}, want: []string{"ack 6 multiple=true"}},
		}},
		{"RequeueIsSentFirstAndNeverCoveredByMultiple", []step{
			{acks: []uint64{1, 3}, requeue: []uint64{2}, want: []string{"nack 2 multiple=false requeue=true", "ack 3 multiple=true"}},
		}},
		{"DuplicateAckIsNeverSentTwice", []step{
			{acks: []uint64{1}, want: []string{"ack 1 multiple=true"}},
			{acks: []uint64{1}, want: nil},
			{acks: []uint64{3}, want: []string{"ack 3 multiple=false"}},
			{acks: []uint64{3}, want: nil},
		}},
		{"UnackedLowestTagBlocksMultiple", []step{
			{acks: []uint64{2, 3, 4}, want: []string{"ack 2 multiple=false", "ack 3 multiple=false", "ack 4 multiple=false"}},
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeAcker{}
			con := newConsumer(f, nil, 256)
			for i, s := range c.steps {
				if err := con.settle(s.acks, s.requeue); err != nil {
					t.Fatal(err)
				}
				if got := f.take(); !reflect.DeepEqual(got, s.want) {
					t.Errorf("step %d: frames %q, want %q", i, got, s.want)
				}
			}
		})
	}
}

func TestSettleOnClosedChannelSaysTheBrokerRedelivers(t *testing.T) {
	con := newConsumer(&fakeAcker{closed: true}, nil, 256)
	err := con.settle([]uint64{1, 2}, nil)
	if err == nil || !strings.Contains(err.Error(), "redelivers") {
		t.Fatalf("settle on a closed channel: %v, want an error saying the broker redelivers", err)
	}
}

func TestAttemptComesFromHeadersAndRedeliveryFlag(t *testing.T) {
	cases := []struct {
		name        string
		quorum      bool
		headers     amqp.Table
		redelivered bool
		want        int
	}{
		{"First", true, nil, false, 1},
		{"QuorumDeliveryCount", true, amqp.Table{"x-delivery-count": int64(2)}, true, 3},
		{"RepublishedAttempt", true, amqp.Table{headerAttempt: "4"}, false, 4},
		{"RepublishedThenRequeued", true, amqp.Table{headerAttempt: "4", "x-delivery-count": int64(1)}, true, 5},
		{"ClassicRedeliveredFlag", false, nil, true, 2},
		{"PublisherDeliveryCountOnAFirstQuorumDelivery", true, amqp.Table{"x-delivery-count": int64(7)}, false, 1},
		{"PublisherDeliveryCountOnAClassicQueue", false, amqp.Table{"x-delivery-count": int64(7)}, false, 1},
		{"PublisherDeliveryCountOnAClassicRedelivery", false, amqp.Table{"x-delivery-count": int64(7)}, true, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := &subscription{topic: "t", quorum: c.quorum}
			m := s.message(nil, amqp.Delivery{Headers: c.headers, Redelivered: c.redelivered})
			if m.Attempt != c.want {
				t.Errorf("Attempt = %d, want %d", m.Attempt, c.want)
			}
		})
	}
}

func TestReceivedMetadataHasOnlyPublisherHeaders(t *testing.T) {
	s := &subscription{topic: "t"}
	m := s.message(nil, amqp.Delivery{MessageId: "id1", Headers: amqp.Table{
		"x-tenant": "acme", headerKey: "k1", headerAttempt: "2", "x-delivery-count": int64(1),
		"x-death": []any{}, "x-first-death-queue": "q", "n": int32(7),
	}})
	want := map[string]string{"x-tenant": "acme", "n": "7"}
	if !reflect.DeepEqual(m.Metadata, want) || m.Key != "k1" || m.ID != "id1" || m.Topic != "t" {
		t.Errorf("got key %q id %q topic %q metadata %v, want k1 id1 t %v", m.Key, m.ID, m.Topic, m.Metadata, want)
	}
}

// pending reports which flusher signals an inline ack raised, and clears them.
func pending(c *consumer) (kick, arm bool) {
	select {
	case <-c.kick:
		kick = true
	default:
	}
	select {
	case <-c.arm:
		arm = true
	default:
	}
	return kick, arm
}

func TestInlineAcksAreCoalescedAndSentByTheFlusher(t *testing.T) {
	f := &fakeAcker{}
	con := newConsumer(f, nil, 16) // every 4 acks
	for tag := uint64(1); tag <= 3; tag++ {
		if err := con.ackInline(tag); err != nil {
			t.Fatal(err)
		}
	}
	if got := f.take(); got != nil {
		t.Fatalf("inline acks sent frames %q on the caller's goroutine", got)
	}
	if kick, arm := pending(con); kick || !arm {
		t.Fatalf("after 3 of 4 acks: kick=%v arm=%v, want only arm (send within ackDelay)", kick, arm)
	}
	_ = con.ackInline(4)
	if kick, _ := pending(con); !kick {
		t.Fatal("4th ack did not ask the flusher to send at once")
	}
	if err := con.flush(); err != nil {
		t.Fatal(err)
	}
	if got, want := f.take(), []string{"ack 4 multiple=true"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
	// Above a gap (5 unsettled): single acks, then one multiple once 5 comes.
	_ = con.ackInline(7)
	_ = con.ackInline(6)
	if _, arm := pending(con); !arm {
		t.Fatal("first pending ack did not arm the flusher")
	}
	_ = con.flush()
	if got, want := f.take(), []string{"ack 6 multiple=false", "ack 7 multiple=false"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
	_ = con.ackInline(9)
	_ = con.ackInline(5)
	_ = con.ackInline(8)
	_ = con.flush()
	// 5..9 are all settled; 6 and 7 were acked already (the broker has
	// forgotten them), 9 is covered by the multiple ack: one frame.
	if got, want := f.take(), []string{"ack 9 multiple=true"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
	_ = con.ackInline(9) // duplicate
	_ = con.flush()
	if got := f.take(); got != nil {
		t.Fatalf("duplicate ack sent %q", got)
	}
}

func TestRequeueIsNeverCoveredByAPendingInlineAck(t *testing.T) {
	f := &fakeAcker{}
	con := newConsumer(f, nil, 256)
	_ = con.ackInline(1)
	_ = con.ackInline(3)
	// The nack of 2 goes out at once, before the pending acks: the
	// multiple ack of 3 then covers 1 and 3 only (2 is settled already).
	if err := con.settle(nil, []uint64{2}); err != nil {
		t.Fatal(err)
	}
	want := []string{"nack 2 multiple=false requeue=true", "ack 3 multiple=true"}
	if got := f.take(); !reflect.DeepEqual(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
	_ = con.ackInline(4)
	_ = con.flush()
	if got, want := f.take(), []string{"ack 4 multiple=true"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
}

func TestStoppingTheConsumerSendsPendingAcksFirst(t *testing.T) {
	f := &fakeAcker{}
	con := newConsumer(f, nil, 256)
	go con.run()
	for tag := uint64(1); tag <= 10; tag++ {
		_ = con.ackInline(tag)
	}
	con.stop(true)
	if got, want := f.take(), []string{"ack 10 multiple=true"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
}

func TestInlineAckOnClosedChannelSaysTheBrokerRedelivers(t *testing.T) {
	con := newConsumer(&fakeAcker{closed: true}, nil, 256)
	if err := con.ackInline(1); err == nil || !strings.Contains(err.Error(), "redelivers") {
		t.Fatalf("ackInline on a closed channel: %v, want an error saying the broker redelivers", err)
	}
}

// gatedAcker blocks its first Ack until released, to hold a flush mid-send.
type gatedAcker struct {
	fakeAcker
	entered, release chan struct{}
	once             sync.Once
}

func (g *gatedAcker) Ack(tag uint64, multiple bool) error {
	g.once.Do(func() {
		close(g.entered)
		<-g.release
	})
	return g.fakeAcker.Ack(tag, multiple)
}

// An ack recorded while the flusher is sending earlier ones, just before the
// consumer stops, is still sent: the last flush runs after stop (a lost ack
// here made a closed subscription's acked message come back).
func TestAckRecordedDuringAFlushIsSentWhenTheConsumerStops(t *testing.T) {
	g := &gatedAcker{entered: make(chan struct{}), release: make(chan struct{})}
	con := newConsumer(g, nil, 256)
	go con.run()
	_ = con.ackInline(1)
	select {
	case <-g.entered: // the flusher is inside Ack(1)
	case <-time.After(10 * time.Second):
		t.Fatal("the flusher never sent the first ack")
	}
	_ = con.ackInline(2)
	stopped := make(chan struct{})
	go func() { con.stop(true); close(stopped) }()
	<-con.quit // stop has begun
	close(g.release)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("stop did not return")
	}
	want := []string{"ack 1 multiple=true", "ack 2 multiple=true"}
	if got := g.take(); !reflect.DeepEqual(got, want) {
		t.Fatalf("frames %q, want %q", got, want)
	}
}

func TestSeveralHostsAreTriedInTurnAndABadHostListIsInvalid(t *testing.T) {
	_, err := Dial(context.Background(), "amqp://u:hunter2@127.0.0.1:1,,127.0.0.1:2/", Options{})
	if !errors.Is(err, driver.ErrInvalid) || !strings.Contains(err.Error(), "empty host") || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("empty host in the list: %v, want ErrInvalid naming it, without the password", err)
	}
	// Nothing listens on ports 1 and 2: both are tried, and both named.
	_, err = Dial(context.Background(), "amqp://u:hunter2@127.0.0.1:1,127.0.0.1:2/", Options{ConnectionTimeout: time.Second})
	if err == nil {
		t.Fatal("Dial succeeded against closed ports")
	}
	for _, want := range []string{"host 127.0.0.1:1", "host 127.0.0.1:2"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error leaks the password: %v", err)
	}
}

func TestOnlyPartitionsReportOrderingPerKey(t *testing.T) {
	for _, c := range []struct {
		parts int
		want  bool
	}{{0, false}, {1, true}, {8, true}} {
		o, err := Options{Partitions: c.parts}.withDefaults()
		if err != nil {
			t.Fatal(err)
		}
		b := &Broker{opts: o}
		if got := b.orderingPerKey(); got != c.want {
			t.Errorf("partitions=%d: OrderingPerKey %v, want %v", c.parts, got, c.want)
		}
	}
}

// Close's round trips after the last acks: a shared queue's consumers are
// cancelled; a single-active-consumer (partitioned) member keeps its
// consumers and instead starts and cancels an idle second consumer on each
// of its queues, so that no partition passes to another member early.
func TestCloseMakesARoundTripThroughEveryQueueBeforeTheChannelCloses(t *testing.T) {
	cases := []struct {
		name string
		sac  bool
		want []string
	}{
		{"SharedQueueConsumersAreCancelled", false, []string{"cancel t.p0", "cancel t.p1", "qos 8"}},
		{"PartitionConsumersStayAndAnIdleOneComesAndGoes", true, []string{
			"consume T.G.p0 t.p0.sync", "cancel t.p0.sync", "consume T.G.p1 t.p1.sync", "cancel t.p1.sync", "qos 8"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := &fakeAcker{}
			con := newConsumer(f, nil, 8)
			con.tags, con.queues, con.sac = []string{"t.p0", "t.p1"}, []string{"T.G.p0", "T.G.p1"}, c.sac
			if err := con.sync(8, time.Second); err != nil {
				t.Fatal(err)
			}
			if got := f.take(); !reflect.DeepEqual(got, c.want) {
				t.Errorf("frames %q, want %q", got, c.want)
			}
		})
	}
}
