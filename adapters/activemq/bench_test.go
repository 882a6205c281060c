package activemq_test

// Benchmarks against a real ActiveMQ Artemis and a real ActiveMQ Classic
// (one sub-benchmark per flavor), comparing in one run the raw go-amqp client
// and omnibus on the same messages (256-byte durable payload, a message ID
// and one application property) and the same topology (Artemis: a multicast
// address and one durable group queue, attached by its fully qualified name;
// Classic: a virtual topic and its group's Consumer.<group>.VirtualTopic.<topic>
// queue). Run:
//
//	eval "$(scripts/brokers up activemq activemq-classic)"
//	OMNIBUS_BENCH_ROUNDS=3 go test -run XXX -bench . -benchtime 20000x ./adapters/activemq/
//
// Publish: 8 goroutines share b.N messages in calls of 1 or 64 messages.
// "raw" sends each call's messages on one shared sender link with
// SendWithReceipt and then waits for every disposition to be Accepted (the
// guarantee omnibus's Publish gives); "omnibus" calls Client.Publish with
// the same messages. Consume: the queue is filled first (untimed), then
// b.N messages are received and settled one by one with a link credit of
// 256: raw Receive + AcceptMessage, omnibus Receive + Delivery.Ack. Besides
// msg/s each run reports cpu-µs/msg: the client process's user+system CPU
// per message. Each parent benchmark prints the ratios of its last run.

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/adapters/activemq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

const (
	benchPublishers = 8
	benchCredit     = 256
	benchGroup      = "bench"
)

var benchPayload = make([]byte, 256)

var lastRate sync.Map // "publish-64/raw" → msg/s of the last run

func report(b *testing.B, name string, start time.Time, cpu0 time.Duration) {
	el := time.Since(start)
	rate := float64(b.N) / el.Seconds()
	b.ReportMetric(rate, "msg/s")
	b.ReportMetric(float64((integration.ProcessCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/msg")
	b.ReportMetric(0, "ns/op")
	lastRate.Store(name, rate)
}

func logRatio(b *testing.B, what string) {
	r, ok1 := lastRate.Load(what + "/raw")
	o, ok2 := lastRate.Load(what + "/omnibus")
	if ok1 && ok2 {
		b.Logf("ratio %s: omnibus %.0f msg/s = %.2fx raw (%.0f msg/s)", what, o.(float64), o.(float64)/r.(float64), r.(float64))
	}
}

// rawSession dials the flavor's test broker with go-amqp and begins a session.
func rawSession(b testing.TB, f flavor) *amqp.Session {
	b.Helper()
	u, err := url.Parse(f.url(b))
	if err != nil {
		b.Fatal(err)
	}
	pass, _ := u.User.Password()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := amqp.Dial(ctx, "amqp://"+u.Host, &amqp.ConnOptions{SASLType: amqp.SASLTypePlain(u.User.Username(), pass)})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { conn.Close() })
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		b.Fatal(err)
	}
	return sess
}

// benchTopic returns a fresh topic whose group queue exists.
func benchTopic(b *testing.B, f flavor, sess *amqp.Session, lib string) string {
	b.Helper()
	topic := fmt.Sprintf("omnibus-bench-%s-%d", lib, time.Now().UnixNano())
	ctx := context.Background()
	src, caps := f.groupQueue(topic, benchGroup)
	r, err := sess.NewReceiver(ctx, src, &amqp.ReceiverOptions{Credit: -1, SourceCapabilities: caps})
	if err != nil {
		b.Fatal(err)
	}
	_ = r.Close(ctx)
	if f.name == "artemis" {
		b.Cleanup(func() { destroyQueue(b, sess, activemq.QueueName(topic, benchGroup)) })
	} else {
		b.Cleanup(func() { drainQueue(b, sess, src, caps) })
	}
	return topic
}

// drainQueue settles every message left in a Classic group queue (Classic
// cannot delete a queue over AMQP), so that rounds of benchmarks do not
// pile up stored messages in the broker's heap.
func drainQueue(b testing.TB, sess *amqp.Session, src string, caps []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	r, err := sess.NewReceiver(ctx, src, &amqp.ReceiverOptions{Credit: 1000, SourceCapabilities: caps})
	if err != nil {
		b.Errorf("drain %s: %v", src, err)
		return
	}
	defer r.Close(ctx)
	for {
		rctx, rcancel := context.WithTimeout(ctx, time.Second)
		m, err := r.Receive(rctx, nil)
		rcancel()
		if err != nil {
			return // nothing arrived for a second: drained
		}
		if err := r.AcceptMessage(ctx, m); err != nil {
			b.Errorf("drain %s: %v", src, err)
			return
		}
	}
}

// destroyQueue deletes queue and its address through the broker's
// management address, so that a benchmark leaves no messages behind (the
// broker's journal recovery holds every stored message in memory).
func destroyQueue(b testing.TB, sess *amqp.Session, queue string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	reply, err := sess.NewReceiver(ctx, "", &amqp.ReceiverOptions{DynamicAddress: true, Credit: 1})
	if err != nil {
		b.Errorf("destroy queue %s: %v", queue, err)
		return
	}
	defer reply.Close(ctx)
	snd, err := sess.NewSender(ctx, "activemq.management", nil)
	if err != nil {
		b.Errorf("destroy queue %s: %v", queue, err)
		return
	}
	defer snd.Close(ctx)
	replyTo := reply.Address()
	req := &amqp.Message{
		Properties:            &amqp.MessageProperties{ReplyTo: &replyTo},
		ApplicationProperties: map[string]any{"_AMQ_ResourceName": "broker", "_AMQ_OperationName": "destroyQueue"},
		Value:                 fmt.Sprintf("[%q,true,true]", queue),
	}
	if err := snd.Send(ctx, req, nil); err != nil {
		b.Errorf("destroy queue %s: %v", queue, err)
		return
	}
	res, err := reply.Receive(ctx, nil)
	if err != nil {
		b.Errorf("destroy queue %s: no answer: %v", queue, err)
		return
	}
	_ = reply.AcceptMessage(ctx, res)
	if ok, _ := res.ApplicationProperties["_AMQ_OperationSucceeded"].(bool); !ok {
		b.Errorf("destroy queue %s: %v", queue, res.Value)
	}
}

func rawMessage(i int) *amqp.Message {
	now := time.Now()
	return &amqp.Message{
		Header:                &amqp.MessageHeader{Durable: true},
		Properties:            &amqp.MessageProperties{MessageID: "bench-" + strconv.Itoa(i), CreationTime: &now},
		ApplicationProperties: map[string]any{"x-bench": "1"},
		Data:                  [][]byte{benchPayload},
	}
}

// rawSendCall sends msgs on snd and waits until every one is Accepted.
func rawSendCall(ctx context.Context, snd *amqp.Sender, msgs []*amqp.Message) error {
	receipts := make([]amqp.SendReceipt, len(msgs))
	for i, m := range msgs {
		r, err := snd.SendWithReceipt(ctx, m, nil)
		if err != nil {
			return err
		}
		receipts[i] = r
	}
	for i := range receipts {
		st, err := receipts[i].Wait(ctx)
		if err != nil {
			return err
		}
		if _, ok := st.(*amqp.StateAccepted); !ok {
			return fmt.Errorf("message %d: %T", i, st)
		}
	}
	return nil
}

// shard runs fn on benchPublishers goroutines that share n messages in
// calls of per messages; fn gets the first index and the call's size.
func shard(b *testing.B, n, per int, fn func(first, size int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchPublishers)
	for g := 0; g < benchPublishers; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				first := int(next.Add(int64(per))) - per
				if first >= n {
					return
				}
				if err := fn(first, min(per, n-first)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

// benchRounds is how many times each benchmark runs all its rows, one
// row after the other (OMNIBUS_BENCH_ROUNDS, default 1), so that raw and
// omnibus go through the broker's swings alike; -count runs each row's
// samples back to back.
var benchRounds = func() int {
	if n, err := strconv.Atoi(os.Getenv("OMNIBUS_BENCH_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 1
}()

func BenchmarkPublish(b *testing.B) {
	for round := range benchRounds {
		for _, f := range flavors {
			b.Run(f.name, func(b *testing.B) { benchPublish(b, f, round) })
		}
	}
}

// inTurn runs the raw row and the omnibus row of one comparison: raw first
// in even rounds, omnibus first in odd ones, so that a broker whose rate
// drifts within a round favours neither.
func inTurn(b *testing.B, round int, prefix string, raw, omnibus func(b *testing.B)) {
	if round%2 == 0 {
		b.Run(prefix+"raw", raw)
		b.Run(prefix+"omnibus", omnibus)
	} else {
		b.Run(prefix+"omnibus", omnibus)
		b.Run(prefix+"raw", raw)
	}
}

func benchPublish(b *testing.B, f flavor, round int) {
	for _, per := range []int{1, 64} {
		what := fmt.Sprintf("publish-%d", per)
		inTurn(b, round, fmt.Sprintf("%d-per-call/", per), func(b *testing.B) {
			sess := rawSession(b, f)
			topic := benchTopic(b, f, sess, "raw")
			target, caps := f.publishTarget(topic)
			snd, err := sess.NewSender(context.Background(), target, &amqp.SenderOptions{TargetCapabilities: caps})
			if err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			cpu0, start := integration.ProcessCPU(), time.Now()
			shard(b, b.N, per, func(first, size int) error {
				msgs := make([]*amqp.Message, size)
				for i := range msgs {
					msgs[i] = rawMessage(first + i)
				}
				return rawSendCall(ctx, snd, msgs)
			})
			report(b, what+"/raw", start, cpu0)
		}, func(b *testing.B) {
			sess := rawSession(b, f)
			topic := benchTopic(b, f, sess, "omnibus")
			c := open(b, f, "")
			ctx := context.Background()
			cpu0, start := integration.ProcessCPU(), time.Now()
			shard(b, b.N, per, func(first, size int) error {
				msgs := make([]*pubsub.Message, size)
				for i := range msgs {
					msgs[i] = &pubsub.Message{ID: "bench-" + strconv.Itoa(first+i), Payload: benchPayload, Metadata: map[string]string{"x-bench": "1"}}
				}
				return c.Publish(ctx, topic, msgs...)
			})
			report(b, what+"/omnibus", start, cpu0)
		})
		logRatio(b, what)
	}
}

// fill puts n messages into topic's group queue (untimed).
func fill(b *testing.B, f flavor, sess *amqp.Session, topic string, n int) {
	b.Helper()
	target, caps := f.publishTarget(topic)
	snd, err := sess.NewSender(context.Background(), target, &amqp.SenderOptions{TargetCapabilities: caps})
	if err != nil {
		b.Fatal(err)
	}
	shard(b, n, 256, func(first, size int) error {
		msgs := make([]*amqp.Message, size)
		for i := range msgs {
			msgs[i] = rawMessage(first + i)
		}
		return rawSendCall(context.Background(), snd, msgs)
	})
	_ = snd.Close(context.Background())
}

func BenchmarkConsume(b *testing.B) {
	for round := range benchRounds {
		for _, f := range flavors {
			b.Run(f.name, func(b *testing.B) { benchConsume(b, f, round) })
		}
	}
}

func benchConsume(b *testing.B, f flavor, round int) {
	inTurn(b, round, "", func(b *testing.B) {
		sess := rawSession(b, f)
		topic := benchTopic(b, f, sess, "raw")
		b.StopTimer()
		fill(b, f, sess, topic, b.N)
		b.StartTimer()
		ctx := context.Background()
		cpu0, start := integration.ProcessCPU(), time.Now()
		src, caps := f.groupQueue(topic, benchGroup)
		r, err := sess.NewReceiver(ctx, src, &amqp.ReceiverOptions{Credit: benchCredit, SourceCapabilities: caps})
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < b.N; i++ {
			m, err := r.Receive(ctx, nil)
			if err != nil {
				b.Fatal(err)
			}
			if err := r.AcceptMessage(ctx, m); err != nil {
				b.Fatal(err)
			}
		}
		report(b, "consume/raw", start, cpu0)
	}, func(b *testing.B) {
		sess := rawSession(b, f)
		topic := benchTopic(b, f, sess, "omnibus")
		b.StopTimer()
		fill(b, f, sess, topic, b.N)
		b.StartTimer()
		c := open(b, f, "")
		ctx := context.Background()
		cpu0, start := integration.ProcessCPU(), time.Now()
		s, err := c.Subscribe(ctx, topic, pubsub.Group(benchGroup), pubsub.Prefetch(benchCredit))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		for i := 0; i < b.N; i++ {
			d, err := s.Receive(ctx)
			if err != nil {
				b.Fatal(err)
			}
			if err := d.Ack(); err != nil {
				b.Fatal(err)
			}
		}
		report(b, "consume/omnibus", start, cpu0)
	})
	logRatio(b, "consume")
}
