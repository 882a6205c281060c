package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/omnibusmq/omnibus/internal/wait"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// batchOverhead is the size of a record batch's header (magic v2).
const batchOverhead = 61

var stickyPartition atomic.Uint64

// chunk is a run of consecutive records of one partition that fits in one
// record batch.
type chunk struct {
	partition int
	first     int // index in the SendBatch of the first message
	idx       []int
	bytes     int
}

// SendBatch implements driver.Broker. It returns after the broker
// acknowledged every message (acks=all by default). Messages are written as
// one produce request per partition leader and round: a partition's records
// go out in order, each partition's next chunk only after the previous one
// was acknowledged, so a retried chunk never overtakes nor is overtaken.
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if err := b.enter(); err != nil {
		return fmt.Errorf("kafka: publish to %q: %w", topic, err)
	}
	defer b.pending.Done()
	ctx, cancel := context.WithTimeout(ctx, b.opts.WriteTimeout)
	defer cancel()

	now := time.Now().UnixMilli()
	sizes := make([]int, len(msgs))
	for i, m := range msgs {
		size := recordSize(m)
		if size+batchOverhead > b.maxRecord {
			return fmt.Errorf("kafka: publish to %q: message %d (id %q) is %d bytes with key and headers, over the broker's limit of %d (message.max.bytes or max_message_size): %w",
				topic, i, m.ID, size, b.maxRecord-batchOverhead, driver.ErrInvalid)
		}
		sizes[i] = size
	}

	tm, err := b.topic(ctx, topic, false)
	if err != nil {
		return err
	}
	queues := b.partitionChunks(tm, msgs, sizes)

	backoff := 20 * time.Millisecond
	refresh := false
	for {
		if refresh {
			if tm, err = b.topic(ctx, topic, true); err != nil {
				return err
			}
			refresh = false
		}
		// One round: the head chunk of every partition still to write,
		// grouped by leader into one request each.
		byLeader := map[int][]*chunk{}
		for p, q := range queues {
			if len(q) > 0 {
				byLeader[tm.leader[p]] = append(byLeader[tm.leader[p]], q[0])
			}
		}
		if len(byLeader) == 0 {
			return nil
		}
		type result struct {
			c   *chunk
			err error
		}
		var results []result
		if len(byLeader) == 1 {
			// The common case: one leader, written on this goroutine.
			for leader, cs := range byLeader {
				errs := b.produce(ctx, tm.addr[leader], topic, cs, msgs, now)
				for i, c := range cs {
					results = append(results, result{c, errs[i]})
				}
			}
		} else {
			var mu sync.Mutex
			var wg sync.WaitGroup
			for leader, cs := range byLeader {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs := b.produce(ctx, tm.addr[leader], topic, cs, msgs, now)
					mu.Lock()
					for i, c := range cs {
						results = append(results, result{c, errs[i]})
					}
					mu.Unlock()
				}()
			}
			wg.Wait()
		}
		retry := false
		for _, r := range results {
			if r.err == nil {
				queues[r.c.partition] = queues[r.c.partition][1:]
				continue
			}
			if retriable(r.err) && ctx.Err() == nil {
				retry = true
				b.log.Debug("omnibus: kafka: produce failed, retrying", "topic", topic, "partition", r.c.partition, "error", r.err)
				continue
			}
			return b.sendError(topic, msgs, r.c, r.err, ctx.Err())
		}
		if retry {
			refresh = true
			wait.Sleep(ctx, backoff) // an ended ctx fails the next round
			backoff = min(backoff*2, time.Second)
		}
	}
}

func (b *Broker) sendError(topic string, msgs []*driver.Message, c *chunk, err, ctxErr error) error {
	var kind error
	var kerr kafkago.Error
	switch {
	case errors.As(err, &kerr) && (kerr == kafkago.MessageSizeTooLarge || kerr == kafkago.RecordListTooLarge || kerr == kafkago.InvalidRecord):
		kind = driver.ErrInvalid
	case errors.As(err, &kerr) && kerr == kafkago.UnknownTopicOrPartition:
		kind = driver.ErrNotFound
	}
	what := fmt.Sprintf("message %q", msgs[c.first].ID)
	if len(c.idx) > 1 {
		what = fmt.Sprintf("messages %q and %d more", msgs[c.first].ID, len(c.idx)-1)
	}
	if ctxErr != nil && retriable(err) {
		err = fmt.Errorf("%w (gave up after write_timeout %v: %v)", err, b.opts.WriteTimeout, ctxErr)
	}
	if kind != nil {
		return fmt.Errorf("kafka: publish to topic %q partition %d: %s: %w: %w", topic, c.partition, what, err, kind)
	}
	return fmt.Errorf("kafka: publish to topic %q partition %d: %s: %w", topic, c.partition, what, err)
}

// retriable reports whether a produce error may go away on retry.
func retriable(err error) bool {
	var kerr kafkago.Error
	if errors.As(err, &kerr) {
		// A topic deleted under us is final (UnknownTopicOrPartition is
		// "temporary" to kafka-go; the metadata was just checked).
		return kerr.Temporary() && kerr != kafkago.UnknownTopicOrPartition
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return false
	}
	// Network errors and "leader moved" answers from the transport.
	return true
}

// partitionChunks assigns every message a partition (murmur2 of the key, as
// the Java client does; unkeyed messages of one call stick to one
// partition) and cuts each partition's records into chunks that fit a
// record batch.
func (b *Broker) partitionChunks(tm *topicMeta, msgs []*driver.Message, sizes []int) map[int][]*chunk {
	parts := tm.partitions
	sticky := parts[int(stickyPartition.Add(1)%uint64(len(parts)))]
	bal := kafkago.Murmur2Balancer{}
	queues := map[int][]*chunk{}
	for i, m := range msgs {
		p := sticky
		if m.Key != "" {
			p = bal.Balance(kafkago.Message{Key: []byte(m.Key)}, parts...)
		}
		q := queues[p]
		var c *chunk
		if n := len(q); n > 0 && q[n-1].bytes+sizes[i] <= b.maxRecord-batchOverhead {
			c = q[n-1]
		} else {
			c = &chunk{partition: p, first: i}
			queues[p] = append(q, c)
		}
		c.idx = append(c.idx, i)
		c.bytes += sizes[i]
	}
	return queues
}

// produce writes one chunk per partition in one request (all partitions
// share a leader) and returns each chunk's error. Each chunk is encoded
// here, from the messages, as one record batch (see appendRecordBatch), so
// a retry re-encodes it and never depends on consumed buffers.
func (b *Broker) produce(ctx context.Context, addr, topic string, cs []*chunk, msgs []*driver.Message, now int64) []error {
	errs := make([]error, len(cs))
	fail := func(err error) []error {
		for i := range errs {
			errs[i] = err
		}
		return errs
	}
	if addr == "" {
		return fail(kafkago.LeaderNotAvailable) // retried after a metadata refresh
	}
	acks := int16(-1)
	if b.opts.Acks == AcksLeader {
		acks = 1
	}
	timeout := int32(b.opts.WriteTimeout / time.Millisecond)
	if dl, ok := ctx.Deadline(); ok {
		timeout = int32(max(time.Until(dl), time.Millisecond) / time.Millisecond)
	}
	c, err := b.conns.get(ctx, addr)
	if err != nil {
		return fail(err)
	}
	bp := requestBuffers.Get().(*[]byte)
	buf := (*bp)[:0]
	defer func() {
		if cap(buf) <= maxPooledRequest {
			*bp = buf[:0]
			requestBuffers.Put(bp)
		}
	}()
	c.corr++
	buf = produceHeader(buf, c.version, c.corr, b.opts.ClientID, acks, timeout, topic, len(cs))
	for _, ch := range cs {
		var at int
		buf, at = startPartition(buf, int32(ch.partition))
		if buf, err = appendRecordBatch(buf, msgs, ch.idx, now, b.codec); err != nil {
			b.conns.release(addr, c, true) // nothing was written
			return fail(err)
		}
		finishPartition(buf, at)
	}
	finishRequest(buf)
	body, err := c.exchange(ctx, buf)
	var got string
	var results []partitionResult
	if err == nil {
		got, results, err = parseProduceResponse(body, c.version, c.corr)
	}
	b.conns.release(addr, c, err == nil)
	if err != nil {
		return fail(err)
	}
	if got != topic {
		results = nil // every chunk: no result
	}
	return chunkErrors(errs, cs, results)
}

// chunkErrors sets each chunk's error from the broker's per-partition
// answers.
func chunkErrors(errs []error, cs []*chunk, results []partitionResult) []error {
	for i, c := range cs {
		var p *partitionResult
		for j := range results {
			if int(results[j].partition) == c.partition {
				p = &results[j]
			}
		}
		switch {
		case p == nil:
			errs[i] = fmt.Errorf("the broker's answer has no result for partition %d", c.partition)
		case p.code != 0:
			errs[i] = kafkago.Error(p.code)
			if p.message != "" {
				errs[i] = fmt.Errorf("%w: %s", errs[i], p.message)
			}
		}
	}
	return errs
}

// requestBuffers holds produce request buffers for reuse; one larger than
// maxPooledRequest is left to the garbage collector.
var requestBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 16<<10); return &b }}

const maxPooledRequest = 1 << 20
