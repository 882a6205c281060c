package nsq_test

import (
	"context"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	gonsq "github.com/nsqio/go-nsq"

	"github.com/omnibusmq/omnibus/adapters/nsq"
	"github.com/omnibusmq/omnibus/pubsub"
)

func TestRequireFailsForWhatNSQCannotDo(t *testing.T) {
	base := brokerEnv(t, envURL)[0]
	cases := []struct {
		name, url string
		ok        bool
	}{
		{"Ordering", withParams(base, "require", "ordering"), false},
		{"Replay", withParams(base, "require", "replay"), false},
		{"PersistenceWithoutDurable", withParams(base, "durable", "false", "require", "persistence"), false},
		{"PersistenceWithDurable", withParams(base, "durable", "true", "require", "persistence"), true},
		{"NackDelayGroupsAttemptCount", withParams(base, "require", "nackdelay,groups,attemptcount"), true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := pubsub.Open(context.Background(), tc.url)
			if tc.ok {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				c.Close()
				return
			}
			if !errors.Is(err, pubsub.ErrUnsupported) {
				t.Errorf("Open: %v, want ErrUnsupported", err)
			}
		})
	}
}

// A delivery held longer than msg_timeout is touched, so nsqd does not hand
// it to the group's other member.
func TestSlowHandlerKeepsItsMessagePastMsgTimeout(t *testing.T) {
	const msgTimeout = time.Second
	url := withParams(brokerEnv(t, envURL)[0], "msg_timeout", msgTimeout.String())
	c1, c2 := open(t, url), open(t, url)
	topic := topicName("slow")
	s1 := subscribeGroup(t, c1, topic, "g")
	m := &pubsub.Message{Payload: []byte("slow")}
	if err := c1.Publish(context.Background(), topic, m); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := s1.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s2 := subscribeGroup(t, c2, topic, "g")
	// Three message timeouts: an observation window, not synchronisation.
	wctx, wcancel := context.WithTimeout(context.Background(), 3*msgTimeout)
	defer wcancel()
	if d2, err := s2.Receive(wctx); err == nil {
		t.Fatalf("message %s redelivered (attempt %d) to the other member while its holder was working on it", d2.Message.ID, d2.Message.Attempt)
	} else if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatal(err)
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
}

// Bodies from plain NSQ publishers reach subscribers unchanged.
func TestBodiesWithoutEnvelopeAreDeliveredAsTheyAre(t *testing.T) {
	url := brokerEnv(t, envURL)[0]
	addr, _, err := nsq.ParseURL(url)
	if err != nil {
		t.Fatal(err)
	}
	c := open(t, url)
	topic := topicName("foreign")
	s := subscribeGroup(t, c, topic, "g")
	p, err := gonsq.NewProducer(addr, gonsq.NewConfig())
	if err != nil {
		t.Fatal(err)
	}
	p.SetLogger(nil, gonsq.LogLevelError)
	defer p.Stop()
	cases := []struct {
		name, body, envelope string
	}{
		{"PlainText", `{"order":42}`, "none"},
		{"TruncatedEnvelope", "\xff\x01\x0aab", "malformed"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := p.Publish(topic, []byte(tc.body)); err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			d, err := s.Receive(ctx)
			if err != nil {
				t.Fatal(err)
			}
			_ = d.Ack()
			got := d.Message
			if string(got.Payload) != tc.body || got.Metadata["omnibus-envelope"] != tc.envelope || len(got.ID) != 16 || got.Key != "" {
				t.Errorf("got ID %q Key %q Payload %q Metadata %v; want the body as it is, NSQ's ID, omnibus-envelope=%s",
					got.ID, got.Key, got.Payload, got.Metadata, tc.envelope)
			}
		})
	}
}

func TestPublishRejectsInvalidNamesAndOversizedEnvelopes(t *testing.T) {
	url := withParams(brokerEnv(t, envURL)[0], "max_message_size", "8192")
	c := open(t, url)
	topic := topicName("names")
	cases := []struct {
		name    string
		publish func() error
		mention string
	}{
		{"TopicWithSpace", func() error { return c.Publish(context.Background(), "a b", &pubsub.Message{}) }, "topic"},
		{"TopicTooLong", func() error { return c.Publish(context.Background(), strings.Repeat("t", 65), &pubsub.Message{}) }, "64"},
		{"MetadataPushesTheEnvelopeOverTheLimit", func() error {
			return c.Publish(context.Background(), topic, &pubsub.Message{ID: "big-md", Payload: make([]byte, 4000),
				Metadata: map[string]string{"x": strings.Repeat("v", 5000)}})
		}, "big-md"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.publish()
			if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("Publish: %v, want ErrInvalid mentioning %q", err, tc.mention)
			}
		})
	}
	_, err := c.Subscribe(context.Background(), topic, pubsub.Group("no spaces allowed"))
	if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), "group") {
		t.Errorf("Subscribe with an invalid group: %v, want ErrInvalid naming the group", err)
	}
}

// nsqd keeps what is published to a topic with no channel and hands it to
// the first channel; a channel created later starts with what is published
// after it exists.
func TestMessagesPublishedBeforeAnyGroupGoToTheFirstGroupOnly(t *testing.T) {
	c := open(t, brokerEnv(t, envURL)[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := topicName("before")
	var early []*pubsub.Message
	for range 5 {
		early = append(early, &pubsub.Message{Payload: []byte("early")})
	}
	if err := c.Publish(ctx, topic, early...); err != nil {
		t.Fatal(err)
	}
	first := subscribeGroup(t, c, topic, "first")
	got := map[string]bool{}
	for range early {
		d, err := first.Receive(ctx)
		if err != nil {
			t.Fatalf("first group: %v after %d of %d early messages", err, len(got), len(early))
		}
		got[d.Message.ID] = true
		_ = d.Ack()
	}
	for _, m := range early {
		if !got[m.ID] {
			t.Errorf("early message %s not delivered to the first group", m.ID)
		}
	}
	later := subscribeGroup(t, c, topic, "later")
	m := &pubsub.Message{Payload: []byte("after both")}
	if err := c.Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*pubsub.Subscription{"first": first, "later": later} {
		d, err := s.Receive(ctx)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		_ = d.Ack()
		if d.Message.ID != m.ID {
			t.Errorf("%s group got %s (%q), want %s: the later group must not get the early messages", name, d.Message.ID, d.Message.Payload, m.ID)
		}
	}
}

// recorder keeps the messages of the slog records it handles.
type recorder struct {
	mu   sync.Mutex
	msgs []string
}

func (r *recorder) Enabled(context.Context, slog.Level) bool { return true }
func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.msgs = append(r.msgs, rec.Message)
	return nil
}
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler { return r }
func (r *recorder) WithGroup(string) slog.Handler      { return r }

func (r *recorder) has(substr string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range r.msgs {
		if strings.Contains(m, substr) {
			return true
		}
	}
	return false
}

// A nack delay above max_req_timeout is shortened to it (nsqd would clamp
// it anyway) and the adapter says so in the log.
func TestNackDelayAboveMaxReqTimeoutIsShortenedAndLogged(t *testing.T) {
	addr, opts, err := nsq.ParseURL(withParams(brokerEnv(t, envURL)[0], "max_req_timeout", "500ms"))
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	opts.Logger = slog.New(rec)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b, err := nsq.Dial(ctx, addr, opts)
	if err != nil {
		t.Fatal(err)
	}
	c := pubsub.NewClient(b)
	defer c.Close()
	topic := topicName("maxreq")
	s := subscribeGroup(t, c, topic, "g")
	m := &pubsub.Message{Payload: []byte("x")}
	if err := c.Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Nack(time.Hour); err != nil {
		t.Fatal(err)
	}
	d2, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("a nack of 1h with max_req_timeout=500ms: not redelivered within 30s: %v", err)
	}
	_ = d2.Ack()
	if d2.Message.ID != m.ID || d2.Message.Attempt != 2 {
		t.Errorf("redelivered %s attempt %d, want %s attempt 2", d2.Message.ID, d2.Message.Attempt, m.ID)
	}
	if !rec.has("nack delay above max_req_timeout") {
		t.Error("no warning about the shortened delay in the log")
	}
}

// A batch larger than nsqd's --max-body-size goes out as several MPUBs.
func TestBatchLargerThanMaxBodySizeIsSplit(t *testing.T) {
	const maxBody = 4096
	base := ownNSQD(t, "", "--max-body-size="+strconv.Itoa(maxBody))
	c := open(t, withParams(base, "max_body_size", strconv.Itoa(maxBody)))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := topicName("split")
	s := subscribeGroup(t, c, topic, "g")
	var msgs []*pubsub.Message
	for i := range 20 { // 20 × ~1 KiB: five times what one MPUB may carry
		msgs = append(msgs, &pubsub.Message{Payload: []byte(strings.Repeat(strconv.Itoa(i%10), 1000))})
	}
	if err := c.Publish(ctx, topic, msgs...); err != nil {
		t.Fatalf("publish of %d bytes with max_body_size=%d: %v", 20*1000, maxBody, err)
	}
	got := map[string]bool{}
	for range msgs {
		d, err := s.Receive(ctx)
		if err != nil {
			t.Fatalf("after %d of %d: %v", len(got), len(msgs), err)
		}
		got[d.Message.ID] = true
		_ = d.Ack()
	}
	for _, m := range msgs {
		if !got[m.ID] {
			t.Errorf("message %s not delivered", m.ID)
		}
	}
}

// Each anonymous subscription is its own ephemeral channel: it gets every
// message published after Subscribe returned.
func TestAnonymousSubscriptionsEachGetEveryMessage(t *testing.T) {
	c := open(t, brokerEnv(t, envURL)[0])
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	topic := topicName("anon")
	var subs []*pubsub.Subscription
	for range 2 {
		s, err := c.Subscribe(ctx, topic)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = s.Close() })
		subs = append(subs, s)
	}
	m := &pubsub.Message{Payload: []byte("to all")}
	if err := c.Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	for i, s := range subs {
		d, err := s.Receive(ctx)
		if err != nil {
			t.Fatalf("anonymous subscription %d: %v", i, err)
		}
		_ = d.Ack()
		if d.Message.ID != m.ID {
			t.Errorf("anonymous subscription %d got %s, want %s", i, d.Message.ID, m.ID)
		}
	}
}
