package kafka_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/pubsubtest"
)

var topicSeq atomic.Int64

func uniqueName(t testing.TB, kind string) string {
	return fmt.Sprintf("omnibus-kt-%s-%s-%d-%d", kind, strings.ReplaceAll(t.Name(), "/", "_"), time.Now().UnixNano()%1e9, topicSeq.Add(1))
}

func wait() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 60*time.Second)
}

// committed returns the group's committed offset per partition (-1: none).
func committed(t testing.TB, topic, group string) map[int]int64 {
	t.Helper()
	ctx, cancel := wait()
	defer cancel()
	adm := rawAdmin(t, integration.Kafka(t))
	res, err := adm.FetchOffsets(ctx, group)
	if err != nil {
		t.Fatalf("offset fetch for group %s: %v", group, err)
	}
	out := map[int]int64{}
	for p := 0; p < testPartitions; p++ {
		out[p] = -1
		if o, ok := res.Lookup(topic, int32(p)); ok {
			if o.Err != nil {
				t.Fatalf("offset fetch for group %s partition %d: %v", group, p, o.Err)
			}
			out[p] = o.At
		}
	}
	return out
}

// rawAdmin is a franz-go admin client of the test's own, independent of
// the adapter under test.
func rawAdmin(t testing.TB, brokers string, opts ...kgo.Opt) *kadm.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(strings.Split(brokers, ",")...)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return kadm.NewClient(cl)
}

// javaMurmur2 is org.apache.kafka.common.utils.Utils.murmur2 of the Java
// client, transcribed: the reference the adapter's partitioner must match.
func javaMurmur2(data []byte) int32 {
	const seed, m, r = int32(-1756908916), int32(0x5bd1e995), 24
	length := int32(len(data))
	h := seed ^ length
	n := len(data) / 4
	for i := 0; i < n; i++ {
		k := int32(data[4*i]) | int32(data[4*i+1])<<8 | int32(data[4*i+2])<<16 | int32(data[4*i+3])<<24
		k *= m
		k ^= int32(uint32(k) >> r)
		k *= m
		h *= m
		h ^= k
	}
	tail := data[4*n:]
	switch len(tail) {
	case 3:
		h ^= int32(tail[2]) << 16
		fallthrough
	case 2:
		h ^= int32(tail[1]) << 8
		fallthrough
	case 1:
		h ^= int32(tail[0])
		h *= m
	}
	h ^= int32(uint32(h) >> 13)
	h *= m
	h ^= int32(uint32(h) >> 15)
	return h
}

// partitionOf is the partition the Java client's default partitioner
// picks for key among testPartitions: toPositive(murmur2(key)) % n.
func partitionOf(key string) int {
	return int(javaMurmur2([]byte(key))&0x7fffffff) % testPartitions
}

func receive(t testing.TB, s *pubsub.Subscription) *pubsub.Delivery {
	t.Helper()
	ctx, cancel := wait()
	defer cancel()
	d, err := s.Receive(ctx)
	if err != nil {
		t.Fatalf("receive: %v", err)
	}
	return d
}

func subscribe(t testing.TB, c *pubsub.Client, topic, group string) *pubsub.Subscription {
	t.Helper()
	s, err := c.Subscribe(context.Background(), topic, pubsub.Group(group), pubsub.FromOldest())
	if err != nil {
		t.Fatalf("subscribe to %s as %s: %v", topic, group, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func publishSeq(t testing.TB, c *pubsub.Client, topic, key string, from, to int) []*pubsub.Message {
	t.Helper()
	var msgs []*pubsub.Message
	for i := from; i < to; i++ {
		msgs = append(msgs, &pubsub.Message{Key: key, Payload: []byte(strconv.Itoa(i))})
	}
	if err := c.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatalf("publish: %v", err)
	}
	return msgs
}

func seqOf(t testing.TB, d *pubsub.Delivery) int {
	t.Helper()
	n, err := strconv.Atoi(string(d.Message.Payload))
	if err != nil {
		t.Fatalf("payload %q is not a sequence number", d.Message.Payload)
	}
	return n
}

// TestOutOfOrderAcksNeverCommitPastAGap pins the Kafka commit rule: the
// committed offset of a partition only advances to one past the highest
// contiguous acked offset. Message 3 is left unacked (or nacked for an
// hour) while 0-2 and 4-9 are acked; after Close the group's committed
// offset is exactly 3, and a new member resumes at 3, in order.
func TestOutOfOrderAcksNeverCommitPastAGap(t *testing.T) {
	for _, settle := range []string{"Unacked", "NackedWithLongDelay"} {
		t.Run(settle, func(t *testing.T) {
			c := openClient(t, "")
			topic := newTopic(t, c, uniqueName(t, "gap"))
			group := uniqueName(t, "g")
			const key = "gap"
			p := partitionOf(key)
			s := subscribe(t, c, topic, group)
			publishSeq(t, c, topic, key, 0, 10)
			for i := 0; i < 10; i++ {
				d := receive(t, s)
				if got := seqOf(t, d); got != i {
					t.Fatalf("delivery %d has sequence %d: partition order broken", i, got)
				}
				switch {
				case i != 3:
					if err := d.Ack(); err != nil {
						t.Fatal(err)
					}
				case settle == "NackedWithLongDelay":
					if err := d.Nack(time.Hour); err != nil {
						t.Fatal(err)
					}
				}
			}
			if err := s.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
			got := committed(t, topic, group)
			for part := 0; part < testPartitions; part++ {
				want := int64(0)
				if part == p {
					want = 3
				}
				if got[part] != want {
					t.Errorf("partition %d committed offset = %d, want %d (all: %v)", part, got[part], want, got)
				}
			}
			// A new member starts at the gap and sees 3..9 again, in order.
			c2 := openClient(t, "")
			s2 := subscribe(t, c2, topic, group)
			for want := 3; want < 10; want++ {
				d := receive(t, s2)
				if got := seqOf(t, d); got != want {
					t.Fatalf("after restart got sequence %d, want %d", got, want)
				}
				if err := d.Ack(); err != nil {
					t.Fatal(err)
				}
			}
			if err := s2.Close(); err != nil {
				t.Fatal(err)
			}
			if got := committed(t, topic, group)[p]; got != 10 {
				t.Errorf("after acking everything, partition %d committed offset = %d, want 10", p, got)
			}
		})
	}
}

// TestRestartedMemberResumesFromCommittedOffset pins that a group member
// restarted after acking a prefix receives exactly the rest: nothing acked
// comes back, nothing unacked is lost.
func TestRestartedMemberResumesFromCommittedOffset(t *testing.T) {
	c := openClient(t, "")
	topic := newTopic(t, c, uniqueName(t, "resume"))
	group := uniqueName(t, "g")
	const key = "resume"
	s := subscribe(t, c, topic, group)
	publishSeq(t, c, topic, key, 0, 20)
	for i := 0; i < 20; i++ {
		d := receive(t, s)
		if i < 12 {
			if err := d.Ack(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if got := committed(t, topic, group)[partitionOf(key)]; got != 12 {
		t.Fatalf("committed offset after acking 0..11 = %d, want 12", got)
	}
	c2 := openClient(t, "")
	s2 := subscribe(t, c2, topic, group)
	publishSeq(t, c, topic, key, 20, 21) // a sentinel after the backlog
	for want := 12; want <= 20; want++ {
		d := receive(t, s2)
		if got := seqOf(t, d); got != want {
			t.Fatalf("restarted member got sequence %d, want %d", got, want)
		}
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
}

// TestTwoMembersSplitPartitionsAndReceiveEachMessageOnce pins group
// membership on the real broker: two members of one group get disjoint
// partitions (so disjoint keys), both get some, and together they receive
// every message exactly once when all are acked.
func TestTwoMembersSplitPartitionsAndReceiveEachMessageOnce(t *testing.T) {
	c1, c2 := openClient(t, ""), openClient(t, "")
	topic := newTopic(t, c1, uniqueName(t, "split"))
	group := uniqueName(t, "g")
	s1 := subscribe(t, c1, topic, group)
	s2 := subscribe(t, c2, topic, group) // returns once the two-member generation runs
	const n, keys = 4000, 64
	var msgs []*pubsub.Message
	for i := 0; i < n; i++ {
		msgs = append(msgs, &pubsub.Message{Key: fmt.Sprintf("k%d", i%keys), Payload: []byte(strconv.Itoa(i))})
	}
	for i := 0; i < n; i += 500 {
		if err := c1.Publish(context.Background(), topic, msgs[i:i+500]...); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	seen := map[string]int{}
	keysBy := []map[string]bool{{}, {}}
	ctx, cancel := wait()
	defer cancel()
	pubsubtest.Consume(ctx, []*pubsub.Subscription{s1, s2}, func(i int, d *pubsub.Delivery) {
		if err := d.Ack(); err != nil {
			t.Errorf("ack: %v", err)
		}
		mu.Lock()
		seen[d.Message.ID]++
		keysBy[i][d.Message.Key] = true
		if len(seen) == n {
			cancel()
		}
		mu.Unlock()
	})
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("received %d distinct messages, want %d", len(seen), n)
	}
	for _, m := range msgs {
		if seen[m.ID] != 1 {
			t.Errorf("message %s received %d times, want exactly once", m.ID, seen[m.ID])
		}
	}
	if len(keysBy[0]) == 0 || len(keysBy[1]) == 0 {
		t.Fatalf("one member got nothing: member 1 saw %d keys, member 2 saw %d", len(keysBy[0]), len(keysBy[1]))
	}
	for k := range keysBy[0] {
		if keysBy[1][k] {
			t.Errorf("key %s reached both members: partitions were not split", k)
		}
	}
}

func TestMissingTopicIsNotFoundUnlessAutoCreate(t *testing.T) {
	c := openClient(t, "")
	topic := uniqueName(t, "missing")
	if err := c.Publish(context.Background(), topic, &pubsub.Message{Payload: []byte("x")}); !errors.Is(err, pubsub.ErrNotFound) || !strings.Contains(err.Error(), topic) {
		t.Errorf("publish to a missing topic: %v, want ErrNotFound naming the topic", err)
	}
	if _, err := c.Subscribe(context.Background(), topic, pubsub.Group("g")); !errors.Is(err, pubsub.ErrNotFound) || !strings.Contains(err.Error(), topic) {
		t.Errorf("subscribe to a missing topic: %v, want ErrNotFound naming the topic", err)
	}

	auto := openClient(t, "auto_create=true&partitions=3&replication_factor=1")
	s, err := auto.Subscribe(context.Background(), topic, pubsub.Group(uniqueName(t, "g")), pubsub.FromOldest())
	if err != nil {
		t.Fatalf("subscribe with auto_create: %v", err)
	}
	defer s.Close()
	m := &pubsub.Message{Payload: []byte("created")}
	if err := auto.Publish(context.Background(), topic, m); err != nil {
		t.Fatalf("publish with auto_create: %v", err)
	}
	if d := receive(t, s); d.Message.ID != m.ID {
		t.Errorf("got %s, want %s", d.Message.ID, m.ID)
	}
	ctx, cancel := wait()
	defer cancel()
	td, err := rawAdmin(t, integration.Kafka(t)).ListTopics(ctx, topic)
	if err != nil {
		t.Fatal(err)
	}
	if d := td[topic]; d.Err != nil || len(d.Partitions) != 3 {
		t.Errorf("auto-created topic: %v, %d partitions, want 3", d.Err, len(d.Partitions))
	}
}

// TestOversizeMessageIsAnErrorNotAHang pins both limits: the adapter's own
// (max_message_size, checked before sending) and the broker's (a topic
// whose max.message.bytes is lower than the client believes).
func TestOversizeMessageIsAnErrorNotAHang(t *testing.T) {
	admin := openClient(t, "")
	small := uniqueName(t, "small")
	ctx, cancel := wait()
	defer cancel()
	if _, err := rawAdmin(t, integration.Kafka(t)).CreateTopic(ctx, 1, 1, map[string]*string{"max.message.bytes": kadm.StringPtr("2048")}, small); err != nil {
		t.Fatalf("create topic: %v", err)
	}
	_ = admin
	limited := openClient(t, "max_message_size=4096")
	if got := limited.Capabilities().MaxMessageSize; got != 4096-1024 {
		t.Errorf("MaxMessageSize with max_message_size=4096 = %d, want %d", got, 4096-1024)
	}
	cases := []struct {
		name    string
		c       *pubsub.Client
		msg     *pubsub.Message
		mention string
	}{
		{"PayloadOverCapability", limited, &pubsub.Message{ID: "big-payload", Payload: make([]byte, 3073)}, "3073"},
		{"HeadersPushRecordOverLimit", limited, &pubsub.Message{ID: "big-headers", Payload: make([]byte, 3000),
			Metadata: map[string]string{"x-pad": strings.Repeat("p", 2000)}}, "big-headers"},
		{"BrokerTopicLimit", admin, &pubsub.Message{ID: "over-topic-limit", Payload: make([]byte, 4000)}, "partition 0"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() { done <- tc.c.Publish(context.Background(), small, tc.msg) }()
			select {
			case err := <-done:
				if !errors.Is(err, pubsub.ErrInvalid) {
					t.Fatalf("publish: %v, want ErrInvalid", err)
				}
				if !strings.Contains(err.Error(), tc.mention) {
					t.Errorf("error %q does not mention %q", err, tc.mention)
				}
			case <-time.After(60 * time.Second):
				t.Fatal("publish of an oversize message still blocked after 60s")
			}
		})
	}
}

// TestAnonymousSubscriptionSeesOnlyNewMessages pins the group-less mode:
// it starts at the end of every partition when it opens.
func TestAnonymousSubscriptionSeesOnlyNewMessages(t *testing.T) {
	c := openClient(t, "")
	topic := newTopic(t, c, uniqueName(t, "anon"))
	old := publishSeq(t, c, topic, "", 0, 5)
	s, err := c.Subscribe(context.Background(), topic)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	fresh := publishSeq(t, c, topic, "", 5, 10)
	oldIDs := map[string]bool{}
	for _, m := range old {
		oldIDs[m.ID] = true
	}
	want := map[string]bool{}
	for _, m := range fresh {
		want[m.ID] = true
	}
	for len(want) > 0 {
		d := receive(t, s)
		if oldIDs[d.Message.ID] {
			t.Fatalf("anonymous subscription got %s, published before it opened", d.Message.ID)
		}
		delete(want, d.Message.ID)
		_ = d.Ack()
	}
}

// TestRecordBatchesRoundTripWithEveryCodec: with every codec, records are
// accepted by the broker and read back with IDs, keys, payloads (empty ones
// too), metadata and per-key order intact.
func TestRecordBatchesRoundTripWithEveryCodec(t *testing.T) {
	for _, codec := range []string{"none", "gzip", "snappy", "lz4", "zstd"} {
		t.Run(codec, func(t *testing.T) {
			c := openClient(t, "compression="+codec)
			topic := newTopic(t, c, uniqueName(t, "codec"))
			const n = 60
			var sent []*pubsub.Message
			for i := 0; i < n; i++ {
				m := &pubsub.Message{Key: fmt.Sprintf("key-%d", i%7), Payload: []byte(strings.Repeat(strconv.Itoa(i), 1+i*13))}
				switch i % 5 {
				case 1:
					m.Key = "" // unkeyed
				case 2:
					m.Payload = nil
				case 3:
					m.Metadata = map[string]string{"a": strconv.Itoa(i), "long-header-name": strings.Repeat("v", 300), "empty": ""}
				}
				sent = append(sent, m)
			}
			ctx, cancel := wait()
			defer cancel()
			// Half in one call, the rest one per call: multi-record and
			// single-record batches.
			if err := c.Publish(ctx, topic, sent[:n/2]...); err != nil {
				t.Fatalf("publish: %v", err)
			}
			for _, m := range sent[n/2:] {
				if err := c.Publish(ctx, topic, m); err != nil {
					t.Fatalf("publish: %v", err)
				}
			}
			s := subscribe(t, c, topic, uniqueName(t, "g"))
			byID := map[string]*pubsub.Message{}
			for _, m := range sent {
				byID[m.ID] = m
			}
			last := map[string]int{}
			index := map[string]int{}
			for i, m := range sent {
				index[m.ID] = i
			}
			for range sent {
				d := receive(t, s)
				got := d.Message
				want, ok := byID[got.ID]
				if !ok {
					t.Fatalf("received unknown or duplicate ID %q", got.ID)
				}
				delete(byID, got.ID)
				if got.Key != want.Key || !bytes.Equal(got.Payload, want.Payload) {
					t.Fatalf("message %q: got key %q payload %d bytes, want key %q payload %d bytes", got.ID, got.Key, len(got.Payload), want.Key, len(want.Payload))
				}
				for k, v := range want.Metadata {
					if got.Metadata[k] != v {
						t.Fatalf("message %q: metadata %q = %q, want %q", got.ID, k, got.Metadata[k], v)
					}
				}
				if want.Key != "" {
					if i, seen := last[want.Key]; seen && index[got.ID] < i {
						t.Fatalf("key %q: message %d received after %d", want.Key, index[got.ID], i)
					}
					last[want.Key] = index[got.ID]
				}
				if err := d.Ack(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestKeysLandOnTheJavaClientsPartition pins the partitioner: javaMurmur2
// matches the Java client's own test vectors (Kafka's UtilsTest), and every
// key published through omnibus lands on the partition the Java client's
// formula picks, read back with a raw consumer.
func TestKeysLandOnTheJavaClientsPartition(t *testing.T) {
	vectors := map[string]int32{
		"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
		"a-little-bit-longer-string": -1486304829, "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971, "abc": 479470107,
	}
	for in, want := range vectors {
		if got := javaMurmur2([]byte(in)); got != want {
			t.Fatalf("javaMurmur2(%q) = %d, want %d (Kafka's UtilsTest)", in, got, want)
		}
	}
	c := openClient(t, "")
	topic := newTopic(t, c, uniqueName(t, "keys"))
	var msgs []*pubsub.Message
	for i := 0; i < 200; i++ {
		msgs = append(msgs, &pubsub.Message{Key: fmt.Sprintf("key-%d", i), Payload: []byte("x")})
	}
	if err := c.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{} // by ID, which Publish filled in
	for _, m := range msgs {
		want[m.ID] = partitionOf(m.Key)
	}
	recs := rawRecords(t, integration.Kafka(t), topic)
	if len(recs) != len(msgs) {
		t.Fatalf("read back %d records, want %d", len(recs), len(msgs))
	}
	for _, r := range recs {
		if p, ok := want[headerID(r)]; !ok || int(r.Partition) != p {
			t.Errorf("key %q landed on partition %d, the Java client picks %d", r.Key, r.Partition, p)
		}
	}
}

// TestNewGroupStartingAtLatestCommitsItsStart: a group with no committed
// offset starts at the newest message (start=latest), and that start is
// committed when the partition is assigned, so a member that takes over
// before anything was acked starts there too: it gets what was published
// after the first member joined, and nothing from before.
func TestNewGroupStartingAtLatestCommitsItsStart(t *testing.T) {
	c := openClient(t, "")
	topic := newTopic(t, c, uniqueName(t, "latest"))
	group := uniqueName(t, "g")
	const key = "latest"
	publishSeq(t, c, topic, key, 0, 5) // before the group exists
	first, err := c.Subscribe(context.Background(), topic, pubsub.Group(group))
	if err != nil {
		t.Fatal(err)
	}
	publishSeq(t, c, topic, key, 5, 15)
	if err := first.Close(); err != nil { // nothing acked
		t.Fatal(err)
	}
	next := openClient(t, "")
	s, err := next.Subscribe(context.Background(), topic, pubsub.Group(group))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for want := 5; want < 15; want++ {
		d := receive(t, s)
		if got := seqOf(t, d); got != want {
			t.Fatalf("the member that took over got %d, want %d", got, want)
		}
		if err := d.Ack(); err != nil {
			t.Fatal(err)
		}
	}
}
