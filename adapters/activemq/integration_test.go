package activemq_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
	"github.com/omnibusmq/omnibus/router"
	"github.com/omnibusmq/omnibus/router/routertest"

	_ "github.com/omnibusmq/omnibus/adapters/activemq"
)

// open returns a client on the flavor's test broker with extra URL parameters.
func open(t testing.TB, f flavor, params string) *pubsub.Client {
	t.Helper()
	u := withParams(f.url(t), params)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pubsub.Open(ctx, u)
	if err != nil {
		t.Fatalf("open %s: %v", pubsub.Redact(u), err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestConformanceOverTLS(t *testing.T) {
	eachFlavor(t, func(t *testing.T, f flavor) {
		u, ca := f.tls(t)
		u = withParams(u, "tls_ca="+url.QueryEscape(ca))
		pubsubtest.Run(t, pubsubtest.Harness{
			Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
				return pubsub.Open(ctx, u)
			},
		})
	})
}

func TestConformance(t *testing.T) {
	eachFlavor(t, func(t *testing.T, f flavor) {
		u := f.url(t)
		pubsubtest.Run(t, pubsubtest.Harness{
			Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
				return pubsub.Open(ctx, u)
			},
		})
	})
}

var topicSeq atomic.Int64

// newTopic returns a topic name unique to this test run.
func newTopic(t testing.TB) string {
	return fmt.Sprintf("omnibus-amq-%s-%d-%d", strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()), time.Now().UnixNano()%1e9, topicSeq.Add(1))
}

func mustSubscribe(t testing.TB, c *pubsub.Client, topic string, opts ...pubsub.SubscribeOption) *pubsub.Subscription {
	t.Helper()
	s, err := c.Subscribe(context.Background(), topic, opts...)
	if err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func receive(t testing.TB, s *pubsub.Subscription, wait time.Duration) *pubsub.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive from %s: %v", s.Topic(), err)
	}
	return d
}

func TestPublishBeforeAnyGroupFollowsTheUnroutableRule(t *testing.T) {
	cases := []struct {
		name    string
		params  string
		wantErr error  // nil: Publish succeeds
		group   string // subscribed after the publish; must receive the message
	}{
		{"ErrorByDefault", "", pubsub.ErrNotFound, ""},
		{"GroupsDeclaredUpFrontKeepTheMessage", "groups=early,late", nil, "late"},
		{"DropIsAnExplicitOptIn", "unroutable=drop", nil, ""},
	}
	eachFlavor(t, func(t *testing.T, f flavor) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				c := open(t, f, tc.params)
				topic := newTopic(t)
				m := &pubsub.Message{ID: "before-" + tc.name, Payload: []byte("early bird")}
				err := c.Publish(context.Background(), topic, m)
				if tc.wantErr != nil {
					if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), topic) {
						t.Fatalf("Publish before any group = %v, want %v naming topic %q", err, tc.wantErr, topic)
					}
					return
				}
				if err != nil {
					t.Fatalf("Publish: %v", err)
				}
				if tc.group == "" {
					return
				}
				s := mustSubscribe(t, c, topic, pubsub.Group(tc.group))
				d := receive(t, s, 10*time.Second)
				if d.Message.ID != m.ID {
					t.Fatalf("group %s got %s, want the message published before it subscribed (%s)", tc.group, d.Message.ID, m.ID)
				}
				_ = d.Ack()
			})
		}
	})
}

// rawReceiver attaches a plain go-amqp receiver to source on the flavor's
// test broker.
func rawReceiver(t testing.TB, f flavor, source string) *amqp.Receiver {
	t.Helper()
	u, err := url.Parse(f.url(t))
	if err != nil {
		t.Fatal(err)
	}
	pass, _ := u.User.Password()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := amqp.Dial(ctx, "amqp://"+u.Host, &amqp.ConnOptions{SASLType: amqp.SASLTypePlain(u.User.Username(), pass)})
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sess.NewReceiver(ctx, source, &amqp.ReceiverOptions{Credit: 10})
	if err != nil {
		t.Fatalf("attach %s: %v", source, err)
	}
	return r
}

func TestPoisonMessagesLandInTheBrokersDeadLetterQueue(t *testing.T) {
	cases := []struct {
		name   string
		params string
		delay  time.Duration // of every Nack
		nacks  int           // deliveries until the message is dead-lettered
	}{
		// The adapter rejects on Nack once Attempt reaches max_attempts.
		{"MaxAttemptsWithImmediateNacks", "max_attempts=3", 0, 3},
		// Delayed nacks (which the broker does not count) too.
		{"MaxAttemptsWithDelayedNacks", "max_attempts=3", 20 * time.Millisecond, 3},
		// By default the 10th Nack(0) dead-letters: on Artemis the
		// broker's max-delivery-attempts (10 in scripts/brokers), on
		// Classic the adapter's default max_attempts.
		{"DefaultMaxDeliveryAttempts", "", 0, 10},
	}
	eachFlavor(t, func(t *testing.T, f flavor) {
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				c := open(t, f, tc.params)
				topic := newTopic(t)
				s := mustSubscribe(t, c, topic, pubsub.Group("work"))
				m := &pubsub.Message{ID: "poison-" + tc.name, Key: "k", Payload: []byte("bad"), Metadata: map[string]string{"why": "test"}}
				if err := c.Publish(context.Background(), topic, m); err != nil {
					t.Fatal(err)
				}
				for want := 1; want <= tc.nacks; want++ {
					d := receive(t, s, 15*time.Second)
					if d.Message.ID != m.ID || d.Message.Attempt != want {
						t.Fatalf("delivery %d: got %s attempt %d, want %s attempt %d", want, d.Message.ID, d.Message.Attempt, m.ID, want)
					}
					if err := d.Nack(tc.delay); err != nil {
						t.Fatalf("nack: %v", err)
					}
				}
				queue := f.dlq(topic, "work", tc.delay > 0)
				dlq := rawReceiver(t, f, queue)
				ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
				defer cancel()
				var dm *amqp.Message
				for dm == nil || dm.Properties.MessageID != m.ID {
					var err error
					if dm, err = dlq.Receive(ctx, nil); err != nil {
						t.Fatalf("%s not in dead-letter queue %s: %v", m.ID, queue, err)
					}
					_ = dlq.AcceptMessage(ctx, dm) // only these tests dead-letter
				}
				if dm.Properties.MessageID != m.ID || string(dm.GetData()) != "bad" || dm.ApplicationProperties["why"] != "test" {
					t.Errorf("dead letter %+v %q %v, want %s intact", dm.Properties, dm.GetData(), dm.ApplicationProperties, m.ID)
				}
				ctx2, cancel2 := context.WithTimeout(context.Background(), 500*time.Millisecond)
				defer cancel2()
				if d, err := s.Receive(ctx2); err == nil {
					t.Errorf("dead-lettered message delivered again: %s attempt %d", d.Message.ID, d.Message.Attempt)
				}
			})
		}
	})
}

func TestPoisonMiddlewarePublishesAfterDelayedRedeliveries(t *testing.T) {
	eachFlavor(t, func(t *testing.T, f flavor) { testPoisonMiddleware(t, f) })
}

func testPoisonMiddleware(t *testing.T, f flavor) {
	c := open(t, f, "")
	topic := newTopic(t)
	poison := mustSubscribe(t, c, topic+".poison", pubsub.Group("ops"))
	var attempts []int
	var mu sync.Mutex
	r := router.New(c, router.Options{})
	r.Use(middleware.Poison(c, topic+".poison", middleware.PoisonOptions{}))
	r.Handle(topic, "billing", func(ctx context.Context, m *pubsub.Message) error {
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		mu.Unlock()
		if m.Attempt < 3 {
			return router.Redeliver(errors.New("busy"), 50*time.Millisecond)
		}
		return pubsub.Permanent(errors.New("invalid order"))
	})
	stop := routertest.Start(t, r)
	defer stop()
	if err := c.Publish(context.Background(), topic, &pubsub.Message{ID: "o1", Key: "k", Payload: []byte("bad")}); err != nil {
		t.Fatal(err)
	}
	d := receive(t, poison, 20*time.Second)
	_ = d.Ack()
	if d.Message.ID != "o1" || d.Message.Key != "k" || string(d.Message.Payload) != "bad" {
		t.Errorf("poisoned %+v, want o1 intact", d.Message)
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(attempts) != "[1 2 3]" {
		t.Errorf("handler saw attempts %v, want [1 2 3]", attempts)
	}
}

func TestTLSAcceptorRoundTripAndUnknownCA(t *testing.T) {
	eachFlavor(t, testTLSAcceptor)
}

func testTLSAcceptor(t *testing.T, f flavor) {
	u, ca := f.tls(t)
	t.Run("TrustedCA", func(t *testing.T) {
		c, err := pubsub.Open(context.Background(), withParams(u, "tls_ca="+url.QueryEscape(ca)))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		topic := newTopic(t)
		s := mustSubscribe(t, c, topic, pubsub.Group("tls"))
		if err := c.Publish(context.Background(), topic, &pubsub.Message{ID: "over-tls", Payload: []byte("x")}); err != nil {
			t.Fatal(err)
		}
		if d := receive(t, s, 10*time.Second); d.Message.ID != "over-tls" {
			t.Fatalf("got %s", d.Message.ID)
		} else {
			_ = d.Ack()
		}
	})
	t.Run("SystemRootsRejectTheTestCA", func(t *testing.T) {
		c, err := pubsub.Open(context.Background(), withParams(u, "connection_timeout=10s"))
		if err == nil {
			c.Close()
			t.Fatal("Open verified a certificate signed by an unknown CA")
		}
		pass, _ := mustURL(t, u).User.Password()
		if !errors.Is(err, pubsub.ErrPermanent) || strings.Contains(err.Error(), pass) {
			t.Errorf("error %v: want ErrPermanent without the password", err)
		}
	})
}

func mustURL(t testing.TB, s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func TestWrongPasswordIsPermanentAndNotInTheError(t *testing.T) {
	eachFlavor(t, testWrongPassword)
}

func testWrongPassword(t *testing.T, f flavor) {
	u := mustURL(t, f.url(t))
	u.User = url.UserPassword(u.User.Username(), "wrong-hunter2-secret")
	c, err := pubsub.Open(context.Background(), withParams(u.String(), "connection_timeout=10s"))
	if err == nil {
		c.Close()
		t.Fatal("Open succeeded with a wrong password")
	}
	if !errors.Is(err, pubsub.ErrPermanent) {
		t.Errorf("error %v does not wrap ErrPermanent", err)
	}
	if strings.Contains(err.Error(), "wrong-hunter2-secret") {
		t.Errorf("error contains the password: %v", err)
	}
}

func TestNackDelayIsExactAndNack0IsImmediate(t *testing.T) {
	cases := []struct {
		name  string
		group string // "" = anonymous subscription (delay waited in process)
		delay time.Duration
		slack time.Duration // how late the redelivery may be
	}{
		{"Nack0", "g", 0, time.Second},
		{"300ms", "g", 300 * time.Millisecond, time.Second},
		{"2s", "g", 2 * time.Second, time.Second},
		{"AnonymousSubscription700ms", "", 700 * time.Millisecond, time.Second},
	}
	eachFlavor(t, func(t *testing.T, f flavor) {
		c := open(t, f, "")
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				topic := newTopic(t)
				var opts []pubsub.SubscribeOption
				if tc.group != "" {
					opts = append(opts, pubsub.Group(tc.group))
				}
				s := mustSubscribe(t, c, topic, opts...)
				m := &pubsub.Message{ID: "delay-" + tc.name, Key: "k", Payload: []byte("later"), Metadata: map[string]string{"a": "b"}}
				if err := c.Publish(context.Background(), topic, m); err != nil {
					t.Fatal(err)
				}
				d := receive(t, s, 10*time.Second)
				nackedAt := time.Now()
				if err := d.Nack(tc.delay); err != nil {
					t.Fatal(err)
				}
				d2 := receive(t, s, tc.delay+10*time.Second)
				took := time.Since(nackedAt)
				_ = d2.Ack()
				if d2.Message.ID != m.ID || d2.Message.Attempt != 2 || d2.Message.Key != "k" || d2.Message.Metadata["a"] != "b" || string(d2.Message.Payload) != "later" {
					t.Errorf("redelivered %+v, want %s intact with Attempt 2", d2.Message, m.ID)
				}
				if took < tc.delay || took > tc.delay+tc.slack {
					t.Errorf("redelivered after %v, want between %v and %v", took, tc.delay, tc.delay+tc.slack)
				}
				t.Logf("Nack(%v) redelivered after %v", tc.delay, took.Round(time.Millisecond))
			})
		}
	})
}

func TestRequireFailsForACapabilityTheBrokerLacks(t *testing.T) {
	eachFlavor(t, testRequire)
}

func testRequire(t *testing.T, f flavor) {
	u := f.url(t)
	cases := []struct {
		require string
		wantErr bool
	}{
		{"ordering,persistence,nackdelay,groups,attemptcount", false},
		{"replay", true},
	}
	for _, tc := range cases {
		t.Run(tc.require, func(t *testing.T) {
			c, err := pubsub.Open(context.Background(), withParams(u, "require="+tc.require))
			if err == nil {
				c.Close()
			}
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, pubsub.ErrUnsupported)) {
				t.Errorf("require=%s: %v, want error: %v (ErrUnsupported)", tc.require, err, tc.wantErr)
			}
		})
	}
}

func TestTopicWithOnlyAnAnonymousSubscriptionIsCheckedOnEveryPublish(t *testing.T) {
	eachFlavor(t, testAnonymousOnly)
}

func testAnonymousOnly(t *testing.T, f flavor) {
	c := open(t, f, "")
	topic := newTopic(t)
	s, err := c.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(context.Background(), topic, &pubsub.Message{ID: "while-anon", Payload: []byte("x")}); err != nil {
		t.Fatalf("publish while an anonymous subscription exists: %v", err)
	}
	if d := receive(t, s, 10*time.Second); d.Message.ID != "while-anon" {
		t.Fatalf("got %s", d.Message.ID)
	} else {
		_ = d.Ack()
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	// Its private queue is gone with it: the next publish must not vanish.
	err = c.Publish(context.Background(), topic, &pubsub.Message{ID: "after-anon", Payload: []byte("x")})
	if !errors.Is(err, pubsub.ErrNotFound) {
		t.Fatalf("publish after the only (anonymous) subscription closed = %v, want ErrNotFound", err)
	}
}

// A Classic broker without the statistics plugin never answers the
// adapter's routability question. Publish must then fail once, after
// connection_timeout, saying what to do; not redial and ask again until
// publish_timeout. Artemis stands in for such a broker: it takes the
// request into a queue and never answers, as Classic does without the
// plugin.
func TestClassicWithoutTheStatisticsPluginFailsPublishAfterConnectionTimeout(t *testing.T) {
	u := mustURL(t, integration.ActiveMQ(t))
	c, err := pubsub.Open(context.Background(), withParams(u.String(), "flavor=classic&connection_timeout=2s&publish_timeout=20s"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	err = c.Publish(context.Background(), newTopic(t), &pubsub.Message{Payload: []byte("x")})
	took := time.Since(start)
	if !errors.Is(err, pubsub.ErrPermanent) || !strings.Contains(err.Error(), "statisticsBrokerPlugin") {
		t.Errorf("Publish = %v, want ErrPermanent naming statisticsBrokerPlugin", err)
	}
	if took > 10*time.Second {
		t.Errorf("Publish failed after %v: it kept asking until publish_timeout instead of failing after connection_timeout (2s)", took.Round(time.Millisecond))
	}
}

// Publish calls whose contexts end at any point of their send fail alone:
// the other callers' publishes on the shared connection succeed, during and
// after (a send cancelled while go-amqp hands its frame over leaves the
// connection unusable; the adapter must then replace it).
func TestPublishesCancelledMidSendFailOnlyThemselves(t *testing.T) {
	eachFlavor(t, func(t *testing.T, f flavor) {
		c := open(t, f, "groups=g")
		topic := newTopic(t)
		var cancelled atomic.Int64
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 100 {
					if g == 0 { // one caller that never gives up
						if err := c.Publish(context.Background(), topic, &pubsub.Message{Payload: []byte("steady")}); err != nil {
							t.Errorf("steady publish %d: %v", i, err)
						}
						continue
					}
					// Deadlines from 50 µs to 2 ms: some end before the
					// send, some while it is handed over, some while it
					// waits for the disposition.
					ctx, cancel := context.WithTimeout(context.Background(), time.Duration(50+(i*37%40)*50)*time.Microsecond)
					err := c.Publish(ctx, topic, &pubsub.Message{Payload: []byte("impatient")})
					cancel()
					if errors.Is(err, context.DeadlineExceeded) {
						cancelled.Add(1)
					} else if err != nil {
						t.Errorf("impatient publish: %v", err)
					}
				}
			}()
		}
		wg.Wait()
		if cancelled.Load() == 0 {
			t.Fatal("no publish was cancelled: the test exercised nothing")
		}
		if err := c.Publish(context.Background(), topic, &pubsub.Message{Payload: []byte("after")}); err != nil {
			t.Errorf("publish after the cancelled ones: %v", err)
		}
		t.Logf("%d of 700 impatient publishes cancelled", cancelled.Load())
	})
}
