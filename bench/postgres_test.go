package bench_test

// Benchmarks: omnibus postgres vs raw pgx doing the same SKIP LOCKED queue vs
// watermill-sql v4's PostgreSQL queue (PostgreSQLQueueSchema, delete on ack),
// in one run on the same database. Run with
//
//	eval "$(scripts/brokers up postgres)"
//	go test -run XXX -bench . -benchtime 20000x ./adapters/postgres/
//
// and compare the msg/s metrics (and cpu-µs/msg, the test process's CPU
// time per message, for the publish scenarios). Nothing here asserts a time.

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ThreeDotsLabs/watermill"
	wsql "github.com/ThreeDotsLabs/watermill-sql/v4/pkg/sql"
	"github.com/ThreeDotsLabs/watermill/message"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

const (
	pgPublishers = 8   // concurrent publishing goroutines
	pgBenchBatch = 100 // messages per call in the batch scenarios, and claim size
)

var pgPayload = []byte(strings.Repeat("x", 100))

// runPublishers splits b.N messages over pgPublishers goroutines calling
// send with per messages at a time, and reports msg/s.
func runPublishers(b *testing.B, per int, send func(ctx context.Context, n int) error) {
	ctx := context.Background()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, pgPublishers)
	b.ResetTimer()
	cpu0 := integration.ProcessCPU()
	start := time.Now()
	for w := 0; w < pgPublishers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				hi := next.Add(int64(per))
				lo := hi - int64(per)
				if lo >= int64(b.N) {
					return
				}
				if err := send(ctx, int(min(hi, int64(b.N))-lo)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "msg/s")
	b.ReportMetric(float64((integration.ProcessCPU()-cpu0).Microseconds())/float64(b.N), "cpu-µs/msg")
}

// rawQueue is the hand-written baseline: a queue table of one topic and
// one group (no topic or group column, only the primary key index) and the
// same kind of queries as the adapter's unordered path, with pgx directly.
type rawQueue struct {
	pool  *pgxpool.Pool
	table string
}

func newRawQueue(b *testing.B, pool *pgxpool.Pool) *rawQueue {
	table := pgx.Identifier{fmt.Sprintf("omnibus_bench_raw_%d", time.Now().UnixNano()%1e9)}.Sanitize()
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `CREATE TABLE `+table+` (
		seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, msg_id text NOT NULL, key text NOT NULL,
		payload bytea NOT NULL, metadata jsonb, published_at timestamptz NOT NULL DEFAULT now(),
		visible_at timestamptz NOT NULL DEFAULT now(), attempt int NOT NULL DEFAULT 0)`); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE `+table) })
	return &rawQueue{pool: pool, table: table}
}

func (q *rawQueue) publish(ctx context.Context, n int) error {
	ids := make([]string, n)
	payloads := make([][]byte, n)
	for i := range ids {
		ids[i] = pubsub.NewID()
		payloads[i] = pgPayload
	}
	if n == 1 {
		_, err := q.pool.Exec(ctx, `INSERT INTO `+q.table+` (msg_id, key, payload) VALUES ($1, '', $2)`, ids[0], payloads[0])
		return err
	}
	_, err := q.pool.Exec(ctx, `INSERT INTO `+q.table+` (msg_id, key, payload) SELECT id, '', p FROM unnest($1::text[], $2::bytea[]) AS m(id, p)`, ids, payloads)
	return err
}

// consume claims batches with SKIP LOCKED and deletes each batch after
// "processing" it, until total messages were consumed.
func (q *rawQueue) consume(ctx context.Context, total int) error {
	claim := `WITH c AS (SELECT seq FROM ` + q.table + ` WHERE visible_at <= now() ORDER BY seq LIMIT $1 FOR UPDATE SKIP LOCKED)
UPDATE ` + q.table + ` t SET attempt = t.attempt + 1, visible_at = now() + interval '30 seconds' FROM c WHERE t.seq = c.seq
RETURNING t.seq, t.msg_id, t.payload, t.metadata, t.published_at`
	got := 0
	for got < total {
		rows, err := q.pool.Query(ctx, claim, pgBenchBatch)
		if err != nil {
			return err
		}
		var seqs []int64
		for rows.Next() {
			var (
				seq  int64
				id   string
				p    []byte
				md   map[string]string
				when time.Time
			)
			if err := rows.Scan(&seq, &id, &p, &md, &when); err != nil {
				rows.Close()
				return err
			}
			seqs = append(seqs, seq)
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return err
		}
		if _, err := q.pool.Exec(ctx, `DELETE FROM `+q.table+` WHERE seq = ANY($1)`, seqs); err != nil {
			return err
		}
		got += len(seqs)
	}
	return nil
}

func benchPool(b *testing.B) (*pgxpool.Pool, string) {
	u := integration.Postgres(b)
	p, err := pgxpool.New(context.Background(), u)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.Close)
	return p, u
}

func pgWatermillPublisher(b *testing.B, pool *pgxpool.Pool) (*wsql.Publisher, wsql.PostgreSQLQueueSchema) {
	schema := wsql.PostgreSQLQueueSchema{
		GeneratePayloadType: func(string) string { return "BYTEA" },
		SubscribeBatchSize:  pgBenchBatch,
	}
	pub, err := wsql.NewPublisher(wsql.BeginnerFromPgx(pool), wsql.PublisherConfig{SchemaAdapter: schema, AutoInitializeSchema: true}, watermill.NopLogger{})
	if err != nil {
		b.Fatal(err)
	}
	return pub, schema
}

func wmMessages(n int) []*message.Message {
	ms := make([]*message.Message, n)
	for i := range ms {
		ms[i] = message.NewMessage(watermill.NewUUID(), pgPayload)
	}
	return ms
}

func dropWatermill(b *testing.B, pool *pgxpool.Pool, schema wsql.PostgreSQLQueueSchema, topic string) {
	b.Cleanup(func() { _, _ = pool.Exec(context.Background(), `DROP TABLE IF EXISTS `+schema.MessagesTable(topic)) })
}

func cleanupTopic(b *testing.B, pool *pgxpool.Pool, c *pubsub.Client, topic string) {
	br := c.Driver().(*postgres.Broker)
	queue, groups := br.QueueTable(), br.GroupsTable()
	b.Cleanup(func() {
		_, _ = pool.Exec(context.Background(), `DELETE FROM `+queue+` WHERE topic = $1`, topic)
		_, _ = pool.Exec(context.Background(), `DELETE FROM `+groups+` WHERE topic = $1`, topic)
	})
}

func pgMessages(n int) []*pubsub.Message {
	ms := make([]*pubsub.Message, n)
	for i := range ms {
		ms[i] = &pubsub.Message{Payload: pgPayload}
	}
	return ms
}

func BenchmarkPostgresPublish(b *testing.B) {
	for _, per := range []int{1, pgBenchBatch} {
		name := "single"
		if per > 1 {
			name = fmt.Sprintf("batch%d", per)
		}
		b.Run(name+"/omnibus", func(b *testing.B) {
			pool, u := benchPool(b)
			c, err := pubsub.Open(context.Background(), withParams(b, u, "key_ordering", "false"))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			topic := uniq("bench-pub")
			s, err := c.Subscribe(context.Background(), topic, pubsub.Group("bench"))
			if err != nil {
				b.Fatal(err)
			}
			_ = s.Close() // registered: rows go to the group
			cleanupTopic(b, pool, c, topic)
			runPublishers(b, per, func(ctx context.Context, n int) error {
				return c.Publish(ctx, topic, pgMessages(n)...)
			})
		})
		b.Run(name+"/rawpgx", func(b *testing.B) {
			pool, _ := benchPool(b)
			q := newRawQueue(b, pool)
			runPublishers(b, per, q.publish)
		})
		b.Run(name+"/watermill-sql", func(b *testing.B) {
			pool, _ := benchPool(b)
			pub, schema := pgWatermillPublisher(b, pool)
			defer pub.Close()
			topic := strings.ReplaceAll(uniq("bench_wm"), "-", "_")
			dropWatermill(b, pool, schema, topic)
			// Create the topic's table before timing (concurrent first
			// publishes race on CREATE TABLE IF NOT EXISTS in watermill).
			if err := pub.Publish(topic, wmMessages(1)...); err != nil {
				b.Fatal(err)
			}
			runPublishers(b, per, func(ctx context.Context, n int) error {
				return pub.Publish(topic, wmMessages(n)...)
			})
		})
	}
}

// fill publishes b.N messages with send, 1000 per call (not timed).
func pgFill(b *testing.B, send func(ctx context.Context, n int) error) {
	ctx := context.Background()
	for i := 0; i < b.N; i += 1000 {
		if err := send(ctx, min(1000, b.N-i)); err != nil {
			b.Fatal(err)
		}
	}
}

// receiveAndAck times receiving and acking b.N messages from s and closing
// it (so that the last acks are in the database too), and reports msg/s.
func receiveAndAck(b *testing.B, s *pubsub.Subscription) {
	ctx := context.Background()
	b.ResetTimer()
	start := time.Now()
	for i := 0; i < b.N; i++ {
		d, err := s.Receive(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if err := d.Ack(); err != nil {
			b.Fatal(err)
		}
	}
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
}

// BenchmarkConsume pre-fills b.N messages (not timed), then times receiving
// and acking all of them with one consumer.
func BenchmarkPostgresConsume(b *testing.B) {
	b.Run("omnibus", func(b *testing.B) {
		pool, u := benchPool(b)
		c, err := pubsub.Open(context.Background(), withParams(b, u, "key_ordering", "false"))
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		topic := uniq("bench-consume")
		cleanupTopic(b, pool, c, topic)
		s, err := c.Subscribe(context.Background(), topic, pubsub.Group("bench"), pubsub.Prefetch(pgBenchBatch))
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		pgFill(b, func(ctx context.Context, n int) error { return c.Publish(ctx, topic, pgMessages(n)...) })
		receiveAndAck(b, s)
	})
	b.Run("rawpgx", func(b *testing.B) {
		pool, _ := benchPool(b)
		q := newRawQueue(b, pool)
		pgFill(b, q.publish)
		b.ResetTimer()
		start := time.Now()
		if err := q.consume(context.Background(), b.N); err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	})
	b.Run("watermill-sql", func(b *testing.B) {
		pool, _ := benchPool(b)
		pub, schema := pgWatermillPublisher(b, pool)
		defer pub.Close()
		topic := strings.ReplaceAll(uniq("bench_wm_consume"), "-", "_")
		dropWatermill(b, pool, schema, topic)
		pgFill(b, func(ctx context.Context, n int) error { return pub.Publish(topic, wmMessages(n)...) })
		sub, err := wsql.NewSubscriber(wsql.BeginnerFromPgx(pool), wsql.SubscriberConfig{
			SchemaAdapter:  schema,
			OffsetsAdapter: wsql.PostgreSQLQueueOffsetsAdapter{DeleteOnAck: true},
			PollInterval:   10 * time.Millisecond,
		}, watermill.NopLogger{})
		if err != nil {
			b.Fatal(err)
		}
		defer sub.Close()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		b.ResetTimer()
		start := time.Now()
		ch, err := sub.Subscribe(ctx, topic)
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < b.N; i++ {
			select {
			case m := <-ch:
				m.Ack()
			case <-time.After(30 * time.Second):
				b.Fatalf("watermill: %d of %d messages after 30s", i, b.N)
			}
		}
		b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "msg/s")
	})
}

// BenchmarkConsumeKeyed times receiving and acking b.N pre-filled messages
// spread over a few keys with key_ordering on (one message of a key out at
// a time per group), one consumer.
func BenchmarkPostgresConsumeKeyed(b *testing.B) {
	for _, keys := range []int{1, 8, 64} {
		b.Run(fmt.Sprintf("keys%d", keys), func(b *testing.B) {
			pool, u := benchPool(b)
			c, err := pubsub.Open(context.Background(), u)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			topic := uniq("bench-keyed")
			cleanupTopic(b, pool, c, topic)
			s, err := c.Subscribe(context.Background(), topic, pubsub.Group("bench"), pubsub.Prefetch(pgBenchBatch))
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			sent := 0
			pgFill(b, func(ctx context.Context, n int) error {
				ms := pgMessages(n)
				for _, m := range ms {
					m.Key = fmt.Sprintf("k%d", sent%keys)
					sent++
				}
				return c.Publish(ctx, topic, ms...)
			})
			receiveAndAck(b, s)
		})
	}
}

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

var pgSeq atomic.Int64

// uniq returns a name unique to this run.
func uniq(prefix string) string {
	return fmt.Sprintf("%s-%d-%d", prefix, time.Now().UnixNano()%1e9, pgSeq.Add(1))
}
