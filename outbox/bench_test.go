package outbox

import (
	"context"
	"log/slog"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/omnibusmq/omnibus/pubsub"
)

// BenchmarkRelay_PostgresToMemory measures relay throughput: b.N committed
// rows (100 keys) drained from a Postgres outbox into mem://, received and
// acked by a group subscriber. Only the drain is timed.
func BenchmarkRelay_PostgresToMemory(b *testing.B) {
	for _, batch := range []int{500, 1000, 5000} {
		b.Run("batch="+strconv.Itoa(batch), func(b *testing.B) {
			ctx := context.Background()
			e := newEnv(b, "postgres-pgx")
			pool := e.store.be.(*pgxBackend).pool
			// Prefill in transactions of 1000 rows.
			for done := 0; done < b.N; {
				n := min(1000, b.N-done)
				msgs := make([]*pubsub.Message, n)
				for i := range msgs {
					msgs[i] = &pubsub.Message{Key: "k" + strconv.Itoa((done+i)%100), Payload: make([]byte, 100)}
				}
				if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return e.store.Publish(ctx, tx, "bench", msgs...) }); err != nil {
					b.Fatal(err)
				}
				done += n
			}
			client := newMemClient(b)
			got := collect(b, client, "bench", "g")
			r, err := NewRelay(e.store, client, RelayOptions{BatchSize: batch, LagLogInterval: -1, Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			start := time.Now()
			runRelay(b, r)
			got.waitDistinct(b, b.N)
			el := time.Since(start)
			b.StopTimer()
			b.ReportMetric(float64(b.N)/el.Seconds(), "rows/s")
		})
	}
}

// BenchmarkRelay_IdleLatency measures publish→delivery latency on an idle
// outbox: commit one row, wait for it at the subscriber (LISTEN/NOTIFY
// wake-up, fetch, publish to mem://). Reports p50 and p99.
func BenchmarkRelay_IdleLatency(b *testing.B) {
	ctx := context.Background()
	e := newEnv(b, "postgres-pgx")
	pool := e.store.be.(*pgxBackend).pool
	client := newMemClient(b)
	got := collect(b, client, "lat", "g")
	r, err := NewRelay(e.store, client, RelayOptions{LagLogInterval: -1, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Fatal(err)
	}
	runRelay(b, r)
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := range b.N {
		start := time.Now()
		m := &pubsub.Message{Payload: []byte("x")}
		if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error { return e.store.Publish(ctx, tx, "lat", m) }); err != nil {
			b.Fatal(err)
		}
		got.waitDistinct(b, i+1)
		lat = append(lat, time.Since(start))
	}
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds())/1000, "p50-ms")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds())/1000, "p99-ms")
}
