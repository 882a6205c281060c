package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestOpenUnknownSchemeNamesItAndListsRegistered(t *testing.T) {
	_, err := pubsub.Open(context.Background(), "nosuch://host")
	if !errors.Is(err, pubsub.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	for _, want := range []string{`"nosuch"`, memory.Scheme} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %s", err, want)
		}
	}
}

func TestOpenRequire(t *testing.T) {
	cases := []struct {
		url     string
		wantErr error
		mention string
	}{
		{"mem://req1?require=ordering,groups,nackdelay", nil, ""},
		{"mem://req2?require=persistence", pubsub.ErrUnsupported, "persistence"},
		{"mem://req3?require=ordering,replay", pubsub.ErrUnsupported, "replay"},
		{"mem://req4?require=teleport", pubsub.ErrInvalid, "teleport"},
		{"mem://req5?buffr=10", pubsub.ErrInvalid, "buffr"},
		{"mem://req6?buffer=-1", pubsub.ErrInvalid, "buffer"},
		{"", pubsub.ErrInvalid, "scheme"},
	}
	for _, tc := range cases {
		t.Run(tc.url, func(t *testing.T) {
			c, err := pubsub.Open(context.Background(), tc.url)
			if tc.wantErr == nil {
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				c.Close()
				return
			}
			if !errors.Is(err, tc.wantErr) {
				t.Fatalf("Open(%q) = %v, want %v", tc.url, err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestRedactHidesPasswords(t *testing.T) {
	cases := map[string]string{
		"amqp://guest:s3cret@localhost:5672/":         "amqp://guest:xxxxx@localhost:5672/",
		"kafka://h:9092?sasl_password=hunter2&x=1":    "kafka://h:9092?sasl_password=xxxxx&x=1",
		"postgres://u@h/db?sslmode=disable":           "postgres://u@h/db?sslmode=disable",
		"kafka://h:9092?sasl_user=bob&sasl_pass=pw99": "kafka://h:9092?sasl_user=bob&sasl_pass=xxxxx",
		"amqp://guest:pw99#x@h/":                      "amqp://guest:xxxxx@h/",
		"kafka://h:9092?sasl_pasword=pw99":            "kafka://h:9092?sasl_pasword=xxxxx",
	}
	for in, want := range cases {
		if got := pubsub.Redact(in); got != want {
			t.Errorf("Redact(%q) = %q, want %q", in, got, want)
		}
		for _, secret := range []string{"s3cret", "hunter2", "pw99"} {
			if strings.Contains(pubsub.Redact(in), secret) {
				t.Errorf("Redact(%q) leaks %q", in, secret)
			}
		}
	}
}

func TestPermanentIsDetectableAndKeepsCause(t *testing.T) {
	cause := errors.New("bad json")
	err := fmt.Errorf("handler: %w", pubsub.Permanent(cause))
	if !pubsub.IsPermanent(err) || !errors.Is(err, pubsub.ErrPermanent) {
		t.Errorf("IsPermanent(%v) = false", err)
	}
	if !errors.Is(err, cause) {
		t.Errorf("Permanent lost its cause")
	}
	if pubsub.Permanent(nil) != nil {
		t.Errorf("Permanent(nil) != nil")
	}
	if pubsub.IsPermanent(cause) {
		t.Errorf("plain error reported permanent")
	}
}

// gatedBroker wraps a memory broker: one SendBatch in flight per topic
// (driver.Traits), the first of which waits until gate is closed; it
// reports the size of every SendBatch on calls.
type gatedBroker struct {
	driver.Broker
	entered chan struct{} // closed when the first SendBatch has started
	gate    chan struct{}
	once    sync.Once
	calls   chan int
	prompt  bool // Traits.PromptSends
}

func (b *gatedBroker) Traits() driver.Traits {
	tr := b.Broker.Traits()
	tr.MaxConcurrentSends = 1
	tr.PromptSends = b.prompt
	return tr
}

func (b *gatedBroker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	b.calls <- len(msgs)
	first := false
	b.once.Do(func() { first = true })
	if first {
		close(b.entered)
		<-b.gate
	}
	return b.Broker.SendBatch(ctx, topic, msgs)
}

func TestPublishesQueuedDuringASendShareTheNextBatch(t *testing.T) {
	for _, prompt := range []bool{false, true} {
		t.Run(fmt.Sprintf("PromptSends=%v", prompt), func(t *testing.T) { testQueuedShareTheNextBatch(t, prompt) })
	}
}

// With PromptSends the first call is sent on its caller's goroutine; the
// calls that queue meanwhile still go out together once it returns.
func testQueuedShareTheNextBatch(t *testing.T, prompt bool) {
	gb := &gatedBroker{
		Broker:  memory.New(memory.Options{Buffer: 1000}),
		entered: make(chan struct{}), gate: make(chan struct{}), calls: make(chan int, 100),
		prompt: prompt,
	}
	c := pubsub.NewClient(gb)
	defer c.Close()
	ctx := context.Background()
	const writers = 49
	errs := make(chan error, writers+1)
	publish := func() { errs <- c.Publish(ctx, "t", &pubsub.Message{Payload: []byte("x")}) }
	go publish()
	<-gb.entered // the only send slot is taken
	for range writers {
		go publish()
	}
	deadline := time.Now().Add(10 * time.Second)
	for pubsub.WaitingMessages(c, "t") < writers {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d calls queued behind the send in flight", pubsub.WaitingMessages(c, "t"), writers)
		}
		runtime.Gosched()
	}
	close(gb.gate)
	for range writers + 1 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(gb.calls)
	var sizes []int
	for n := range gb.calls {
		sizes = append(sizes, n)
	}
	if want := []int{1, writers}; !slices.Equal(sizes, want) {
		t.Fatalf("SendBatch sizes %v, want %v: the calls queued during a send go out together in the next one", sizes, want)
	}
}

// ctxKey marks the caller's context in the tests of PromptSends.
type ctxKey struct{}

// probeBroker wraps a memory broker with the given traits; it reports
// whether each SendBatch got the caller's context, and panics on the
// first call if panicOnce.
type probeBroker struct {
	driver.Broker
	traits    driver.Traits
	panicOnce sync.Once
	panics    bool
	callers   chan bool
}

func (b *probeBroker) Traits() driver.Traits { return b.traits }

func (b *probeBroker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	b.callers <- ctx.Value(ctxKey{}) != nil
	if b.panics {
		b.panicOnce.Do(func() { panic("adapter bug") })
	}
	return b.Broker.SendBatch(ctx, topic, msgs)
}

func TestPromptSendsRunALoneCallOnItsCallersGoroutine(t *testing.T) {
	cases := []struct {
		name       string
		traits     driver.Traits
		wantCaller bool
	}{
		{"prompt", driver.Traits{MaxConcurrentSends: 1, PromptSends: true}, true},
		{"prompt with group commit", driver.Traits{MaxConcurrentSends: 4, GroupSends: true, PromptSends: true}, true},
		{"not prompt", driver.Traits{MaxConcurrentSends: 1}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			pb := &probeBroker{Broker: memory.New(memory.Options{}), traits: tc.traits, callers: make(chan bool, 10)}
			c := pubsub.NewClient(pb)
			defer c.Close()
			ctx := context.WithValue(context.Background(), ctxKey{}, true)
			for range 3 {
				if err := c.Publish(ctx, "t", &pubsub.Message{Payload: []byte("x")}); err != nil {
					t.Fatal(err)
				}
				if got := <-pb.callers; got != tc.wantCaller {
					t.Fatalf("SendBatch got the caller's context: %v, want %v", got, tc.wantCaller)
				}
			}
		})
	}
}

func TestASendPanickingOnTheCallersGoroutineFreesItsSlot(t *testing.T) {
	pb := &probeBroker{
		Broker: memory.New(memory.Options{}), traits: driver.Traits{MaxConcurrentSends: 1, PromptSends: true},
		panics: true, callers: make(chan bool, 10),
	}
	c := pubsub.NewClient(pb)
	defer c.Close()
	func() {
		defer func() {
			if r := recover(); r == nil {
				t.Fatal("the adapter's panic did not reach the caller")
			}
		}()
		_ = c.Publish(context.Background(), "t", &pubsub.Message{Payload: []byte("boom")})
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.Publish(ctx, "t", &pubsub.Message{Payload: []byte("next")}); err != nil {
		t.Fatalf("publish after the panic: %v (the only send slot was lost)", err)
	}
}

func TestPublishFillsIDInCallersMessage(t *testing.T) {
	c := memory.NewClient(memory.Options{})
	defer c.Close()
	m := &pubsub.Message{}
	if err := c.Publish(context.Background(), "t", m); err != nil {
		t.Fatal(err)
	}
	if m.ID == "" {
		t.Fatal("ID not filled")
	}
	keep := &pubsub.Message{ID: "mine"}
	_ = c.Publish(context.Background(), "t", keep)
	if keep.ID != "mine" {
		t.Errorf("ID overwritten: %q", keep.ID)
	}
}

func TestPublishWithCancelledContextSendsNothing(t *testing.T) {
	c := memory.NewClient(memory.Options{})
	defer c.Close()
	ctx := context.Background()
	sub, _ := c.Subscribe(ctx, "t", pubsub.Group("g"))
	defer sub.Close()
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := c.Publish(cctx, "t", &pubsub.Message{Payload: []byte("no")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if err := c.Publish(ctx, "t", &pubsub.Message{Payload: []byte("yes")}); err != nil {
		t.Fatal(err)
	}
	d, err := sub.Receive(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if string(d.Message.Payload) != "yes" {
		t.Errorf("got %q first, the cancelled publish was sent", d.Message.Payload)
	}
}

func TestReceiveBatchTakesWhatIsBufferedInOrder(t *testing.T) {
	ctx := context.Background()
	c := memory.NewClient(memory.Options{})
	defer c.Close()
	s, err := c.Subscribe(ctx, "t", pubsub.Group("g"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 50
	msgs := make([]*pubsub.Message, n)
	for i := range msgs {
		msgs[i] = &pubsub.Message{ID: strconv.Itoa(i)}
	}
	if err := c.Publish(ctx, "t", msgs...); err != nil {
		t.Fatal(err)
	}
	var got []*pubsub.Delivery
	for len(got) < n {
		before := len(got)
		if got, err = s.ReceiveBatch(ctx, got, 7); err != nil {
			t.Fatal(err)
		}
		if k := len(got) - before; k < 1 || k > 7 {
			t.Fatalf("ReceiveBatch added %d deliveries, want 1..7", k)
		}
	}
	for i, d := range got {
		if d.Message.ID != strconv.Itoa(i) {
			t.Fatalf("delivery %d is %q, want %d", i, d.Message.ID, i)
		}
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if out, err := s.ReceiveBatch(cctx, got[:0], 7); !errors.Is(err, context.Canceled) || len(out) != 0 {
		t.Fatalf("ReceiveBatch with a cancelled context: %d deliveries, %v; want none, context.Canceled", len(out), err)
	}
}
