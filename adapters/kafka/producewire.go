package kafka

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The produce request and response, versions 3 to 8 (one layout for the
// request; the response grows a field at 5 and two at 8), written and read
// here so that a request is one buffer and one write, and its answer is
// parsed without reflection. Field names follow the Kafka protocol guide.

const produceAPIKey = 0

// produceHeader appends the start of a produce request — size (patched by
// finishRequest), request header v1, body up to the partitions' count — for
// one topic with parts partitions.
func produceHeader(b []byte, version int16, correlationID int32, clientID string, acks int16, timeoutMs int32, topic string, parts int) []byte {
	b = binary.BigEndian.AppendUint32(b, 0) // size, patched
	b = binary.BigEndian.AppendUint16(b, produceAPIKey)
	b = binary.BigEndian.AppendUint16(b, uint16(version))
	b = binary.BigEndian.AppendUint32(b, uint32(correlationID))
	b = appendString(b, clientID)
	b = binary.BigEndian.AppendUint16(b, 0xffff) // transactional_id: null
	b = binary.BigEndian.AppendUint16(b, uint16(acks))
	b = binary.BigEndian.AppendUint32(b, uint32(timeoutMs))
	b = binary.BigEndian.AppendUint32(b, 1) // topics
	b = appendString(b, topic)
	return binary.BigEndian.AppendUint32(b, uint32(parts))
}

// startPartition appends a partition's index and a placeholder for its
// records' size, and returns where the size goes (for finishPartition).
func startPartition(b []byte, partition int32) ([]byte, int) {
	b = binary.BigEndian.AppendUint32(b, uint32(partition))
	at := len(b)
	return binary.BigEndian.AppendUint32(b, 0), at
}

// finishPartition patches the records' size of the partition started at at.
func finishPartition(b []byte, at int) {
	binary.BigEndian.PutUint32(b[at:], uint32(len(b)-at-4))
}

// finishRequest patches the request's size; b starts at the request.
func finishRequest(b []byte) {
	binary.BigEndian.PutUint32(b, uint32(len(b)-4))
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint16(b, uint16(len(s)))
	return append(b, s...)
}

// partitionResult is one partition's answer in a produce response.
type partitionResult struct {
	partition int32
	code      int16
	message   string // error_message (v8), or the first record error's
}

var errMalformed = errors.New("malformed produce response")

// wireReader reads big-endian fields from a response body; the first read
// past the end sets err and every later read returns zero.
type wireReader struct {
	b   []byte
	err error
}

func (r *wireReader) take(n int) []byte {
	if r.err != nil || n < 0 || n > len(r.b) {
		r.err = errMalformed
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *wireReader) int16() int16 {
	if v := r.take(2); v != nil {
		return int16(binary.BigEndian.Uint16(v))
	}
	return 0
}

func (r *wireReader) int32() int32 {
	if v := r.take(4); v != nil {
		return int32(binary.BigEndian.Uint32(v))
	}
	return 0
}

// count reads an array length; -1 (null) is an empty array.
func (r *wireReader) count() int {
	n := r.int32()
	if n < -1 || int64(n) > int64(len(r.b)) { // every element is at least a byte
		r.err = errMalformed
		return 0
	}
	return max(int(n), 0)
}

// string reads a STRING or NULLABLE_STRING (null reads as "").
func (r *wireReader) string() string {
	n := r.int16()
	if n == -1 {
		return ""
	}
	return string(r.take(int(n)))
}

// parseProduceResponse parses a produce response body (after its size) of
// the given version and checks its correlation ID.
func parseProduceResponse(body []byte, version int16, correlationID int32) (topic string, results []partitionResult, err error) {
	r := &wireReader{b: body}
	if got := r.int32(); r.err == nil && got != correlationID {
		return "", nil, fmt.Errorf("%w: correlation ID %d, want %d", errMalformed, got, correlationID)
	}
	topics := r.count()
	for range topics {
		name := r.string()
		parts := r.count()
		for range parts {
			p := partitionResult{partition: r.int32(), code: r.int16()}
			r.take(8) // base_offset
			r.take(8) // log_append_time_ms (v2+)
			if version >= 5 {
				r.take(8) // log_start_offset
			}
			if version >= 8 {
				for range r.count() { // record_errors
					r.int32() // batch_index
					if msg := r.string(); p.message == "" {
						p.message = msg
					}
				}
				if msg := r.string(); msg != "" {
					p.message = msg
				}
			}
			results = append(results, p)
		}
		topic = name
	}
	r.int32() // throttle_time_ms
	if r.err != nil {
		return "", nil, r.err
	}
	if topics != 1 {
		return "", nil, fmt.Errorf("%w: %d topics, want 1", errMalformed, topics)
	}
	return topic, results, nil
}

// maxResponse bounds a produce response's size: a few dozen bytes per
// partition, so anything near this is not a produce response.
const maxResponse = 64 << 20
