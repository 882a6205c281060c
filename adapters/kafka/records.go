package kafka

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"

	kafkago "github.com/segmentio/kafka-go"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Record batches are encoded here (magic v2, the format of every Kafka
// since 0.11) straight from the driver messages, and sent with kafka-go's
// raw produce request: no intermediate kafka-go Record, header slice or
// value reader per message, one buffer per request.

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

func varintLen(v int64) int {
	u := uint64((v << 1) ^ (v >> 63))
	n := 1
	for u >= 0x80 {
		u >>= 7
		n++
	}
	return n
}

func bytesLen(n int) int { return varintLen(int64(n)) + n }

// recordBody returns the encoded length of m as a record whose offset delta
// takes odLen bytes (length prefix excluded), and its header count.
func recordBody(m *driver.Message, odLen int) (body, headers int) {
	body = 1 + 1 + odLen // attributes, timestamp delta (always 0), offset delta
	if m.Key == "" {
		body++
	} else {
		body += bytesLen(len(m.Key))
	}
	if m.Payload == nil {
		body++
	} else {
		body += bytesLen(len(m.Payload))
	}
	headers = 1
	body += bytesLen(len(HeaderID)) + bytesLen(len(m.ID))
	for k, v := range m.Metadata {
		if k == HeaderID {
			continue
		}
		headers++
		body += bytesLen(len(k)) + bytesLen(len(v))
	}
	body += varintLen(int64(headers))
	return body, headers
}

// recordSize is an upper bound of the encoded size of m as a record, its
// length prefix included (offset deltas counted at their widest).
func recordSize(m *driver.Message) int {
	body, _ := recordBody(m, 5)
	return 5 + body
}

func appendVarint(b []byte, v int64) []byte { return binary.AppendVarint(b, v) }

func appendVarString(b []byte, s string) []byte {
	b = binary.AppendVarint(b, int64(len(s)))
	return append(b, s...)
}

// appendRecord appends msgs[i] as the record at offsetDelta.
func appendRecord(b []byte, m *driver.Message, offsetDelta int) []byte {
	body, hs := recordBody(m, varintLen(int64(offsetDelta)))
	b = appendVarint(b, int64(body))
	b = append(b, 0) // attributes (unused)
	b = append(b, 0) // timestamp delta: every record has the batch's
	b = appendVarint(b, int64(offsetDelta))
	if m.Key == "" {
		b = appendVarint(b, -1)
	} else {
		b = appendVarString(b, m.Key)
	}
	if m.Payload == nil {
		b = appendVarint(b, -1)
	} else {
		b = appendVarint(b, int64(len(m.Payload)))
		b = append(b, m.Payload...)
	}
	b = appendVarint(b, int64(hs))
	b = appendVarString(b, HeaderID)
	b = appendVarString(b, m.ID)
	for k, v := range m.Metadata {
		if k == HeaderID {
			continue
		}
		b = appendVarString(b, k)
		b = appendVarString(b, v)
	}
	return b
}

// appendRecordBatch appends one record batch holding msgs[idx...] in order,
// all with timestamp ts (Unix ms, CreateTime), compressed with codec, to b.
func appendRecordBatch(b []byte, msgs []*driver.Message, idx []int, ts int64, codec kafkago.Compression) ([]byte, error) {
	start := len(b)
	b = binary.BigEndian.AppendUint64(b, 0)          // base offset
	b = binary.BigEndian.AppendUint32(b, 0)          // batch length, below
	b = binary.BigEndian.AppendUint32(b, 0xffffffff) // partition leader epoch: -1
	b = append(b, 2)                                 // magic
	b = binary.BigEndian.AppendUint32(b, 0)          // crc, below
	crcFrom := len(b)
	b = binary.BigEndian.AppendUint16(b, uint16(codec)&0x7)  // attributes: codec, CreateTime, not transactional
	b = binary.BigEndian.AppendUint32(b, uint32(len(idx)-1)) // last offset delta
	b = binary.BigEndian.AppendUint64(b, uint64(ts))         // base timestamp
	b = binary.BigEndian.AppendUint64(b, uint64(ts))         // max timestamp
	b = binary.BigEndian.AppendUint64(b, 0xffffffffffffffff) // producer id: -1
	b = binary.BigEndian.AppendUint16(b, 0xffff)             // producer epoch: -1
	b = binary.BigEndian.AppendUint32(b, 0xffffffff)         // base sequence: -1
	b = binary.BigEndian.AppendUint32(b, uint32(len(idx)))   // records
	if codec == 0 {
		for j, i := range idx {
			b = appendRecord(b, msgs[i], j)
		}
	} else {
		var raw []byte
		for j, i := range idx {
			raw = appendRecord(raw, msgs[i], j)
		}
		out := bytes.NewBuffer(b)
		w := codec.Codec().NewWriter(out)
		if _, err := w.Write(raw); err != nil {
			return b[:start], err
		}
		if err := w.Close(); err != nil {
			return b[:start], err
		}
		b = out.Bytes()
	}
	binary.BigEndian.PutUint32(b[start+8:], uint32(len(b)-start-12))
	binary.BigEndian.PutUint32(b[start+17:], crc32.Checksum(b[crcFrom:], castagnoli))
	return b, nil
}
