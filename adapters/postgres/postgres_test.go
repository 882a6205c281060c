package postgres_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

// withParams returns base with the given query parameters added.
func withParams(t testing.TB, base string, kv ...string) string {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", pubsub.Redact(base), err)
	}
	q := u.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func open(t testing.TB, rawURL string) *pubsub.Client {
	t.Helper()
	c, err := pubsub.Open(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func pool(t testing.TB, rawURL string) *pgxpool.Pool {
	t.Helper()
	p, err := pgxpool.New(context.Background(), rawURL)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(p.Close)
	return p
}

var seq struct {
	sync.Mutex
	n int
}

func uniq(prefix string) string {
	seq.Lock()
	defer seq.Unlock()
	seq.n++
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, seq.n)
}

func receive(t testing.TB, s *pubsub.Subscription) *pubsub.Delivery {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive from %s: %v", s.Topic(), err)
	}
	return d
}

func subscribe(t testing.TB, c *pubsub.Client, topic string, opts ...pubsub.SubscribeOption) *pubsub.Subscription {
	t.Helper()
	s, err := c.Subscribe(context.Background(), topic, opts...)
	if err != nil {
		t.Fatalf("subscribe %s: %v", topic, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func publishN(t testing.TB, c *pubsub.Client, topic string, n int, key string) []*pubsub.Message {
	t.Helper()
	msgs := make([]*pubsub.Message, n)
	for i := range msgs {
		msgs[i] = &pubsub.Message{Key: key, Payload: []byte(strconv.Itoa(i))}
	}
	if err := c.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
	return msgs
}

// conformance runs the suite on the Postgres broker with URL params kv.
func conformance(t *testing.T, kv ...string) {
	u := withParams(t, integration.Postgres(t), kv...)
	pubsubtest.Run(t, pubsubtest.Harness{
		Open: func(ctx context.Context, t *testing.T) (*pubsub.Client, error) {
			return pubsub.Open(ctx, u)
		},
	})
}

func TestConformance(t *testing.T) {
	conformance(t, "visibility_timeout", "5s", "poll_interval", "200ms")
}

func TestConformanceWithoutKeyOrdering(t *testing.T) {
	conformance(t, "key_ordering", "false", "table_prefix", "omnibus_unordered_")
}

// Acks flushed before Close delete exactly their rows; every other message
// fetched in the same batch is redelivered to the group, and no acked one is.
func TestCloseMidBatchRedeliversOnlyUnacked(t *testing.T) {
	u := integration.Postgres(t)
	c := open(t, u)
	topic, group := uniq("midbatch"), uniq("g")
	s := subscribe(t, c, topic, pubsub.Group(group))
	msgs := publishN(t, c, topic, 10, "")
	acked := map[string]bool{}
	for i := 0; i < 10; i++ { // all 10 arrive in one claimed batch
		d := receive(t, s)
		if i%3 == 0 {
			if err := d.Ack(); err != nil {
				t.Fatalf("ack: %v", err)
			}
			acked[d.Message.ID] = true
		}
	}
	if err := s.Close(); err != nil {
		t.Fatalf("close mid-batch: %v", err)
	}
	s2 := subscribe(t, open(t, u), topic, pubsub.Group(group))
	sentinel := &pubsub.Message{Payload: []byte("sentinel")}
	if err := c.Publish(context.Background(), topic, sentinel); err != nil {
		t.Fatal(err)
	}
	got := map[string]int{}
	for {
		d := receive(t, s2)
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
		if d.Message.ID == sentinel.ID {
			break
		}
		got[d.Message.ID]++
		if d.Message.Attempt != 2 {
			t.Errorf("redelivered %s with Attempt %d, want 2", d.Message.ID, d.Message.Attempt)
		}
	}
	for _, m := range msgs {
		switch {
		case acked[m.ID] && got[m.ID] > 0:
			t.Errorf("acked message %s redelivered %d times", m.ID, got[m.ID])
		case !acked[m.ID] && got[m.ID] != 1:
			t.Errorf("unacked message %s redelivered %d times, want 1", m.ID, got[m.ID])
		}
	}
	if len(acked) != 4 {
		t.Fatalf("acked %d, want 4", len(acked))
	}
}

// TestHelperChildConsumer is not a test: TestVisibilityTimeout... runs the
// test binary again with OMNIBUS_PG_CHILD set, and this function is the
// child, a consumer that is killed with SIGKILL while holding messages.
func TestHelperChildConsumer(t *testing.T) {
	if os.Getenv("OMNIBUS_PG_CHILD") == "" {
		t.Skip("helper process for TestVisibilityTimeoutRedeliversAfterConsumerProcessKilled")
	}
	c, err := pubsub.Open(context.Background(), os.Getenv("OMNIBUS_PG_CHILD_URL"))
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	s, err := c.Subscribe(context.Background(), os.Getenv("OMNIBUS_PG_CHILD_TOPIC"), pubsub.Group(os.Getenv("OMNIBUS_PG_CHILD_GROUP")))
	if err != nil {
		fmt.Println("ERR", err)
		os.Exit(2)
	}
	n, _ := strconv.Atoi(os.Getenv("OMNIBUS_PG_CHILD_N"))
	for i := 0; i < n; i++ {
		d, err := s.Receive(context.Background())
		if err != nil {
			fmt.Println("ERR", err)
			os.Exit(2)
		}
		fmt.Println("GOT", d.Message.ID, d.Message.Attempt)
	}
	fmt.Println("HOLDING")
	select {} // hold the messages (heartbeating) until killed
}

// A consumer process that holds messages keeps them (its heartbeat extends
// their visibility) for several visibility timeouts; once it is killed, the
// group's other member gets every one of them, with Attempt 2.
func TestVisibilityTimeoutRedeliversAfterConsumerProcessKilled(t *testing.T) {
	const vis = time.Second
	u := withParams(t, integration.Postgres(t), "visibility_timeout", vis.String(), "poll_interval", "100ms")
	c := open(t, u)
	topic, group := uniq("killed"), uniq("g")
	// Register the group first so that the messages are the group's.
	subscribe(t, c, topic, pubsub.Group(group)).Close()
	msgs := publishN(t, c, topic, 5, "")

	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperChildConsumer$", "-test.count=1")
	cmd.Env = append(os.Environ(), "OMNIBUS_PG_CHILD=1", "OMNIBUS_PG_CHILD_URL="+u,
		"OMNIBUS_PG_CHILD_TOPIC="+topic, "OMNIBUS_PG_CHILD_GROUP="+group, "OMNIBUS_PG_CHILD_N=5")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	childGot := map[string]bool{}
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	timeout := time.After(30 * time.Second)
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatal("child exited before holding the messages")
			}
			f := strings.Fields(l)
			switch {
			case len(f) == 3 && f[0] == "GOT":
				childGot[f[1]] = true
			case l == "HOLDING":
				break wait
			case len(f) > 0 && f[0] == "ERR":
				t.Fatalf("child: %s", l)
			}
		case <-timeout:
			t.Fatal("child did not receive its messages within 30s")
		}
	}
	if len(childGot) != 5 {
		t.Fatalf("child got %d messages, want 5", len(childGot))
	}

	other := subscribe(t, open(t, u), topic, pubsub.Group(group))
	// While the child lives, its heartbeat keeps the claims for three
	// visibility timeouts (an observation window, not synchronisation).
	ctx, cancel := context.WithTimeout(context.Background(), 3*vis)
	d, err := other.Receive(ctx)
	cancel()
	if err == nil {
		t.Fatalf("message %s (attempt %d) redelivered while its holder was alive and heartbeating", d.Message.ID, d.Message.Attempt)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("receive: %v", err)
	}

	if err := cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	killed = true
	got := map[string]bool{}
	for range msgs {
		d := receive(t, other)
		if d.Message.Attempt != 2 {
			t.Errorf("message %s redelivered with Attempt %d, want 2", d.Message.ID, d.Message.Attempt)
		}
		got[d.Message.ID] = true
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	for _, m := range msgs {
		if !got[m.ID] {
			t.Errorf("message %s held by the killed consumer was not redelivered", m.ID)
		}
	}
}

// Two members of one group with slow handlers (messages wait in their
// prefetch buffers far longer than the visibility timeout) never hold the
// same message at the same time and each message is delivered exactly once:
// SKIP LOCKED claims plus the heartbeat.
func TestCompetingSubscribersNeverHoldSameMessage(t *testing.T) {
	// The visibility timeout is short against the handlers' work, but not
	// so short that a heartbeat (every third of it) delayed by a loaded
	// machine lets a held claim expire.
	u := withParams(t, integration.Postgres(t), "visibility_timeout", "1s", "poll_interval", "50ms")
	c1, c2 := open(t, u), open(t, u)
	topic, group := uniq("compete"), uniq("g")
	s1 := subscribe(t, c1, topic, pubsub.Group(group), pubsub.Prefetch(64))
	s2 := subscribe(t, c2, topic, pubsub.Group(group), pubsub.Prefetch(64))
	const n = 200
	msgs := publishN(t, c1, topic, n, "")

	var mu sync.Mutex
	holding := map[string]int{} // message -> member holding it now
	count := map[string]int{}
	var failures []string
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pubsubtest.Consume(ctx, []*pubsub.Subscription{s1, s2}, func(member int, d *pubsub.Delivery) {
		id := d.Message.ID
		mu.Lock()
		if other, ok := holding[id]; ok {
			failures = append(failures, fmt.Sprintf("%s held by members %d and %d at once", id, other, member))
		}
		holding[id] = member
		count[id]++
		mu.Unlock()
		// Simulated handler work (30 ms), so that the 64 prefetched
		// messages wait ~2 s, twice the visibility timeout.
		time.Sleep(30 * time.Millisecond)
		mu.Lock()
		delete(holding, id)
		done := len(count) == n
		mu.Unlock()
		if err := d.Ack(); err != nil {
			t.Errorf("ack: %v", err)
		}
		if done {
			cancel()
		}
	})
	mu.Lock()
	defer mu.Unlock()
	for _, f := range failures {
		t.Error(f)
	}
	for _, m := range msgs {
		if count[m.ID] != 1 {
			t.Errorf("message %s delivered %d times, want exactly 1", m.ID, count[m.ID])
		}
	}
}

// With key ordering, a key's next message is never handed to any member
// while an earlier one of that key is unacked, so two competing members see
// every key strictly in publish order.
func TestKeyNeverInFlightTwiceAcrossCompetingConsumers(t *testing.T) {
	u := integration.Postgres(t)
	c1, c2 := open(t, u), open(t, u)
	if !c1.Capabilities().OrderingPerKey {
		t.Fatal("OrderingPerKey is false by default")
	}
	topic, group := uniq("keys"), uniq("g")
	s1 := subscribe(t, c1, topic, pubsub.Group(group))
	s2 := subscribe(t, c2, topic, pubsub.Group(group))
	const keys, per = 6, 40
	for i := 0; i < per; i++ {
		var batch []*pubsub.Message
		for k := 0; k < keys; k++ {
			batch = append(batch, &pubsub.Message{Key: fmt.Sprintf("k%d", k), Payload: []byte(strconv.Itoa(i))})
		}
		if err := c1.Publish(context.Background(), topic, batch...); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	inflight := map[string]bool{}
	next := map[string]int{}
	total := 0
	var failures []string
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pubsubtest.Consume(ctx, []*pubsub.Subscription{s1, s2}, func(_ int, d *pubsub.Delivery) {
		k := d.Message.Key
		n, _ := strconv.Atoi(string(d.Message.Payload))
		mu.Lock()
		if inflight[k] {
			failures = append(failures, fmt.Sprintf("key %s: message %d handed out while an earlier one is in flight", k, n))
		}
		if n != next[k] {
			failures = append(failures, fmt.Sprintf("key %s: got %d, want %d", k, n, next[k]))
		}
		inflight[k] = true
		next[k] = n + 1
		mu.Unlock()
		runtime.Gosched() // let the other member run while k is held
		mu.Lock()
		inflight[k] = false
		total++
		done := total == keys*per
		mu.Unlock()
		if err := d.Ack(); err != nil {
			t.Errorf("ack: %v", err)
		}
		if done {
			cancel()
		}
	})
	for _, f := range failures {
		t.Error(f)
	}
	if total != keys*per {
		t.Fatalf("received %d messages, want %d", total, keys*per)
	}
}

// Killing every database connection of a live subscriber (pool and LISTEN
// connection) with pg_terminate_backend loses nothing: the held message is
// still acked or redelivered, and later messages still arrive.
func TestSubscriberSurvivesTerminatedConnections(t *testing.T) {
	app := uniq("omnibus-kill")
	u := withParams(t, integration.Postgres(t), "application_name", app, "poll_interval", "100ms")
	admin := pool(t, integration.Postgres(t))
	c := open(t, u)
	topic, group := uniq("terminate"), uniq("g")
	s := subscribe(t, c, topic, pubsub.Group(group))
	first := publishN(t, c, topic, 1, "")
	d := receive(t, s)
	if d.Message.ID != first[0].ID {
		t.Fatalf("got %s, want %s", d.Message.ID, first[0].ID)
	}
	var killed int
	if err := admin.QueryRow(context.Background(),
		`SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1) x`, app).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no backend of the subscriber found to terminate")
	}
	if err := d.Ack(); err != nil {
		t.Fatal(err)
	}
	second := publishN(t, open(t, integration.Postgres(t)), topic, 3, "")
	want := map[string]bool{}
	for _, m := range second {
		want[m.ID] = true
	}
	for len(want) > 0 {
		d := receive(t, s)
		if d.Message.ID == first[0].ID {
			// The ack raced the termination and failed: redelivery, not loss.
			_ = d.Ack()
			continue
		}
		if !want[d.Message.ID] {
			t.Fatalf("unexpected message %s", d.Message.ID)
		}
		delete(want, d.Message.ID)
		_ = d.Ack()
	}
	t.Logf("terminated %d backend(s)", killed)
}

// Messages published before a topic has any named group wait for the first
// named group; a group that registers later starts at its registration.
func TestMessagesBeforeAnyGroupGoToFirstNamedGroup(t *testing.T) {
	u := integration.Postgres(t)
	c := open(t, u)
	topic := uniq("backlog")
	early := publishN(t, c, topic, 3, "k")
	anon := subscribe(t, c, topic) // an anonymous subscription does not adopt the backlog
	first := subscribe(t, c, topic, pubsub.Group(uniq("first")))
	for i, m := range early {
		d := receive(t, first)
		if d.Message.ID != m.ID {
			t.Fatalf("backlog message %d: got %s, want %s", i, d.Message.ID, m.ID)
		}
		_ = d.Ack()
	}
	late := subscribe(t, c, topic, pubsub.Group(uniq("late")))
	after := publishN(t, c, topic, 1, "k")
	for name, s := range map[string]*pubsub.Subscription{"late group": late, "anonymous": anon} {
		d := receive(t, s)
		if d.Message.ID != after[0].ID {
			t.Errorf("%s got %s, want %s: only messages published after it subscribed", name, d.Message.ID, after[0].ID)
		}
		_ = d.Ack()
	}
}

// An anonymous subscription's private group and its rows are removed on
// Close.
func TestAnonymousSubscriptionCleansUpOnClose(t *testing.T) {
	u := integration.Postgres(t)
	c := open(t, u)
	topic := uniq("anon")
	subscribe(t, c, topic, pubsub.Group(uniq("named"))) // so the backlog is not used
	s := subscribe(t, c, topic)
	publishN(t, c, topic, 4, "")
	receive(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	b := c.Driver().(*postgres.Broker)
	var groups, rows int
	ctx := context.Background()
	if err := b.Pool().QueryRow(ctx, `SELECT count(*) FROM `+b.GroupsTable()+` WHERE topic = $1 AND anonymous`, topic).Scan(&groups); err != nil {
		t.Fatal(err)
	}
	if err := b.Pool().QueryRow(ctx, `SELECT count(*) FROM `+b.QueueTable()+` WHERE topic = $1 AND grp LIKE 'anon:%'`, topic).Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if groups != 0 || rows != 0 {
		t.Errorf("after Close: %d anonymous group(s) and %d row(s) left, want 0 and 0", groups, rows)
	}
}

// Odd schema and table names are quoted, not interpolated.
func TestSchemaAndPrefixAreQuoted(t *testing.T) {
	base := integration.Postgres(t)
	schema := `omnibus "odd" schema`
	u := withParams(t, base, "schema", schema, "table_prefix", `p'x"; drop table y; --`)
	c := open(t, u)
	t.Cleanup(func() {
		p := pool(t, base)
		_, _ = p.Exec(context.Background(), `DROP SCHEMA IF EXISTS `+pgx.Identifier{schema}.Sanitize()+` CASCADE`)
	})
	topic := uniq("quoted")
	s := subscribe(t, c, topic, pubsub.Group("g"))
	m := publishN(t, c, topic, 1, "")
	if d := receive(t, s); d.Message.ID != m[0].ID {
		t.Fatalf("got %s, want %s", d.Message.ID, m[0].ID)
	}
	b := c.Driver().(*postgres.Broker)
	if !strings.Contains(b.QueueTable(), `"omnibus ""odd"" schema"`) {
		t.Errorf("QueueTable = %s, want the schema quoted", b.QueueTable())
	}
}

func TestOpenRejectsBadURLs(t *testing.T) {
	base := integration.Postgres(t)
	withPassword := func() string {
		u, _ := url.Parse(base)
		u.User = url.UserPassword("postgres", "s3cret-pw")
		return u.String()
	}()
	cases := []struct {
		name    string
		url     string
		wantErr error
		mention []string
	}{
		{"UnknownParam", withParams(t, base, "visibilty_timeout", "1s"), pubsub.ErrInvalid, []string{"visibilty_timeout"}},
		{"BadDuration", withParams(t, base, "visibility_timeout", "soon"), pubsub.ErrInvalid, []string{"visibility_timeout", "soon"}},
		{"TooShortVisibility", withParams(t, base, "visibility_timeout", "1ms"), pubsub.ErrInvalid, []string{"VisibilityTimeout", "1ms"}},
		{"BadBool", withParams(t, base, "key_ordering", "maybe"), pubsub.ErrInvalid, []string{"key_ordering", "maybe"}},
		{"BadSize", withParams(t, base, "max_message_size", "-1"), pubsub.ErrInvalid, []string{"max_message_size"}},
		{"PasswordNotLeaked", withParams(t, withPassword, "bogus", "1"), pubsub.ErrInvalid, []string{"bogus"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := pubsub.Open(context.Background(), tc.url)
			if err == nil {
				_ = c.Close()
				t.Fatalf("Open succeeded, want an error")
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("error %v, want %v", err, tc.wantErr)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error %q does not mention %q", err, m)
				}
			}
			if strings.Contains(err.Error(), "s3cret-pw") {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
}

func TestCapabilitiesAndBothSchemes(t *testing.T) {
	base := integration.Postgres(t)
	alt := strings.Replace(base, "postgres://", "postgresql://", 1)
	cases := []struct {
		name     string
		url      string
		ordering bool
	}{
		{"Default", base, true},
		{"PostgresqlScheme", alt, true},
		{"KeyOrderingOff", withParams(t, base, "key_ordering", "false"), false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			caps := open(t, tc.url).Capabilities()
			want := pubsub.Capabilities{OrderingPerKey: tc.ordering, Persistence: true, NackDelay: true, Groups: true, AttemptCount: true, MaxMessageSize: 16 << 20,
				Broker: "postgres", TopicNames: driver.NameRule{MaxBytes: 1024}, GroupNames: driver.NameRule{MaxBytes: 1024}}
			if caps != want {
				t.Errorf("Capabilities = %+v, want %+v", caps, want)
			}
		})
	}
	if _, err := pubsub.Open(context.Background(), withParams(t, base, "key_ordering", "false", "require", "ordering")); !errors.Is(err, pubsub.ErrUnsupported) {
		t.Errorf("require=ordering with key_ordering=false: %v, want ErrUnsupported", err)
	}
}
