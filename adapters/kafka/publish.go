package kafka

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// recordOverhead bounds the bytes a record adds to its key, value and
// headers in a record batch (length, attributes, timestamp and offset
// deltas, key and value lengths, header count: varints of at most 5 bytes,
// 10 for the deltas), and batchOverhead is a record batch's header (magic
// v2).
const (
	recordOverhead = 40
	headerOverhead = 10
	batchOverhead  = 61
)

// recordSize is an upper bound of m's size in a record batch.
func recordSize(m *driver.Message) int {
	n := recordOverhead + len(m.Key) + len(m.Payload) + headerOverhead + len(HeaderID) + len(m.ID)
	for k, v := range m.Metadata {
		n += headerOverhead + len(k) + len(v)
	}
	return n
}

// sendState collects the outcome of one SendBatch's records.
type sendState struct {
	wg       sync.WaitGroup
	mu       sync.Mutex
	firstErr error
	firstIdx int
	failed   *kgo.Record
}

// SendBatch implements driver.Broker. It hands every message to franz-go
// as one batch of records and returns after the broker acknowledged each
// (acks=all by default), or with an error naming topic, partition and the
// first message that failed. franz-go retries retriable errors (leader
// changes, timeouts, dropped connections) without duplicating records
// (idempotent producing) until WriteTimeout; a permanent error returns at
// once.
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if err := b.enter(); err != nil {
		return fmt.Errorf("kafka: publish to %q: %w", topic, err)
	}
	defer b.pending.Done()
	ctx, cancel := context.WithTimeout(ctx, b.opts.WriteTimeout)
	defer cancel()
	for i, m := range msgs {
		if size := recordSize(m); size+batchOverhead > b.maxRecord {
			return fmt.Errorf("kafka: publish to %q: message %d (id %q) is %d bytes with key and headers, over the broker's limit of %d (message.max.bytes or max_message_size): %w",
				topic, i, m.ID, size, b.maxRecord-batchOverhead, driver.ErrInvalid)
		}
	}
	if err := b.ensureTopic(ctx, topic); err != nil {
		return err
	}

	recs := make([]kgo.Record, len(msgs))
	st := &sendState{}
	st.wg.Add(len(msgs))
	for i, m := range msgs {
		r := &recs[i]
		r.Topic = topic
		if m.Key != "" {
			r.Key = []byte(m.Key)
		}
		r.Value = m.Payload
		r.Headers = make([]kgo.RecordHeader, 0, 1+len(m.Metadata))
		r.Headers = append(r.Headers, kgo.RecordHeader{Key: HeaderID, Value: []byte(m.ID)})
		for k, v := range m.Metadata {
			r.Headers = append(r.Headers, kgo.RecordHeader{Key: k, Value: []byte(v)})
		}
		idx := i
		b.cl.Produce(ctx, r, func(r *kgo.Record, err error) {
			if err != nil {
				st.mu.Lock()
				if st.firstErr == nil || idx < st.firstIdx {
					st.firstErr, st.firstIdx, st.failed = err, idx, r
				}
				st.mu.Unlock()
			}
			st.wg.Done()
		})
	}
	st.wg.Wait()
	if st.firstErr == nil {
		return nil
	}
	err := st.firstErr
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		b.known.Delete(topic) // deleted meanwhile: check again next time
	}
	where := fmt.Sprintf("topic %q", topic)
	if st.failed.Partition >= 0 && st.failed.Offset >= 0 || errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
		where = fmt.Sprintf("topic %q partition %d", topic, st.failed.Partition)
	}
	return fmt.Errorf("kafka: publish to %s: message %d (id %q) of %d: %w", where, st.firstIdx, msgs[st.firstIdx].ID, len(msgs), classify(err))
}
