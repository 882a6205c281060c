package kafka

import (
	"context"
	"errors"
	"fmt"

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

	recs, ptrs := toRecords(topic, msgs)
	// ProduceSync buffers every record while their partitions linger, then
	// drains those partitions at once: one produce request per broker for
	// the whole batch, where producing record by record without a linger
	// would send the first record alone.
	firstIdx := -1
	var firstErr error
	for _, res := range b.cl.ProduceSync(ctx, ptrs...) {
		if res.Err == nil {
			continue
		}
		if i := recordIndex(recs, res.Record); firstIdx < 0 || i < firstIdx {
			firstIdx, firstErr = i, res.Err
		}
	}
	if firstErr == nil {
		return nil
	}
	failed := &recs[firstIdx]
	err := firstErr
	if errors.Is(err, kerr.UnknownTopicOrPartition) {
		b.known.Delete(topic) // deleted meanwhile: check again next time
	}
	where := fmt.Sprintf("topic %q", topic)
	if failed.Partition >= 0 && failed.Offset >= 0 || errors.Is(err, kerr.MessageTooLarge) || errors.Is(err, kerr.RecordListTooLarge) {
		where = fmt.Sprintf("topic %q partition %d", topic, failed.Partition)
	}
	return fmt.Errorf("kafka: publish to %s: message %d (id %q) of %d: %w", where, firstIdx, msgs[firstIdx].ID, len(msgs), classify(err))
}

// toRecords converts msgs into records of topic (Key, Payload, Message.ID
// in the HeaderID header, Metadata as headers). The records' keys and
// header values share one byte slice and their headers one header slice,
// so a batch costs five allocations whatever its length.
func toRecords(topic string, msgs []*driver.Message) ([]kgo.Record, []*kgo.Record) {
	nbytes, nheaders := 0, 0
	for _, m := range msgs {
		nbytes += len(m.Key) + len(m.ID)
		nheaders += 1 + len(m.Metadata)
		for _, v := range m.Metadata {
			nbytes += len(v)
		}
	}
	slab := make([]byte, 0, nbytes)
	bytesOf := func(s string) []byte {
		slab = append(slab, s...)
		return slab[len(slab)-len(s) : len(slab) : len(slab)]
	}
	headers := make([]kgo.RecordHeader, 0, nheaders)
	recs := make([]kgo.Record, len(msgs))
	ptrs := make([]*kgo.Record, len(msgs))
	for i, m := range msgs {
		r := &recs[i]
		r.Topic = topic
		if m.Key != "" {
			r.Key = bytesOf(m.Key)
		}
		r.Value = m.Payload
		first := len(headers)
		headers = append(headers, kgo.RecordHeader{Key: HeaderID, Value: bytesOf(m.ID)})
		for k, v := range m.Metadata {
			headers = append(headers, kgo.RecordHeader{Key: k, Value: bytesOf(v)})
		}
		r.Headers = headers[first:len(headers):len(headers)]
		ptrs[i] = r
	}
	return recs, ptrs
}

// recordIndex returns the index of r in recs (r points into it).
func recordIndex(recs []kgo.Record, r *kgo.Record) int {
	for i := range recs {
		if &recs[i] == r {
			return i
		}
	}
	return 0
}
