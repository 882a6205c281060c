package kafka

import (
	"bytes"
	"errors"
	"fmt"
	"testing"

	kafkago "github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceAPI "github.com/segmentio/kafka-go/protocol/produce"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Our produce request must read back, field for field, through kafka-go's
// independent (reflective) decoder, for every version we may send.
func TestProduceRequestDecodesWithKafkaGo(t *testing.T) {
	msgs := []*driver.Message{
		{ID: "a", Key: "k1", Payload: []byte("one")},
		{ID: "b", Key: "k2", Payload: []byte("two"), Metadata: map[string]string{"h": "v"}},
		{ID: "c", Payload: []byte("three")},
	}
	for v := int16(minProduceVersion); v <= maxProduceVersion; v++ {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			b := produceHeader(nil, v, 77, "omnibus-test", -1, 1500, "orders", 2)
			for _, p := range []struct {
				partition int32
				idx       []int
			}{{5, []int{0, 2}}, {9, []int{1}}} {
				var at int
				b, at = startPartition(b, p.partition)
				var err error
				if b, err = appendRecordBatch(b, msgs, p.idx, 1700000000000, 0); err != nil {
					t.Fatal(err)
				}
				finishPartition(b, at)
			}
			finishRequest(b)

			gotV, corr, client, m, err := protocol.ReadRequest(bytes.NewReader(b))
			if err != nil {
				t.Fatalf("kafka-go cannot read our request: %v", err)
			}
			req, ok := m.(*produceAPI.Request)
			if !ok {
				t.Fatalf("decoded %T, want a produce request", m)
			}
			if gotV != v || corr != 77 || client != "omnibus-test" || req.Acks != -1 || req.Timeout != 1500 || req.TransactionalID != "" {
				t.Fatalf("header/body: version %d corr %d client %q acks %d timeout %d txn %q", gotV, corr, client, req.Acks, req.Timeout, req.TransactionalID)
			}
			if len(req.Topics) != 1 || req.Topics[0].Topic != "orders" || len(req.Topics[0].Partitions) != 2 {
				t.Fatalf("topics: %+v", req.Topics)
			}
			want := map[int32][]string{5: {"k1=one", "=three"}, 9: {"k2=two"}}
			for _, p := range req.Topics[0].Partitions {
				var got []string
				for {
					r, err := p.RecordSet.Records.ReadRecord()
					if err != nil {
						break
					}
					k, _ := protocol.ReadAll(r.Key)
					val, _ := protocol.ReadAll(r.Value)
					got = append(got, string(k)+"="+string(val))
				}
				if fmt.Sprint(got) != fmt.Sprint(want[p.Partition]) {
					t.Errorf("partition %d records %v, want %v", p.Partition, got, want[p.Partition])
				}
			}
		})
	}
}

// kafka-go's encoding of a produce response must parse to the same
// per-partition answers, for every version we may receive.
func TestProduceResponseParsesKafkaGoEncoding(t *testing.T) {
	for v := int16(minProduceVersion); v <= maxProduceVersion; v++ {
		t.Run(fmt.Sprintf("v%d", v), func(t *testing.T) {
			res := &produceAPI.Response{
				Topics: []produceAPI.ResponseTopic{{Topic: "orders", Partitions: []produceAPI.ResponsePartition{
					{Partition: 5, BaseOffset: 42, LogAppendTime: -1, LogStartOffset: 0},
					{Partition: 9, ErrorCode: int16(kafkago.MessageSizeTooLarge), BaseOffset: -1,
						RecordErrors: []produceAPI.ResponseError{{BatchIndex: 0, BatchIndexErrorMessage: "record 0 too big"}}},
				}}},
				ThrottleTimeMs: 3,
			}
			var buf bytes.Buffer
			if err := protocol.WriteResponse(&buf, v, 1234, res); err != nil {
				t.Fatal(err)
			}
			body := buf.Bytes()[4:] // after the size
			topic, results, err := parseProduceResponse(body, v, 1234)
			if err != nil {
				t.Fatalf("parse: %v", err)
			}
			want := []partitionResult{{partition: 5}, {partition: 9, code: int16(kafkago.MessageSizeTooLarge)}}
			if v >= 8 {
				want[1].message = "record 0 too big"
			}
			if topic != "orders" || fmt.Sprint(results) != fmt.Sprint(want) {
				t.Fatalf("parsed %q %+v, want orders %+v", topic, results, want)
			}

			// Every truncation is an error, never a panic or a short answer.
			for n := 0; n < len(body); n++ {
				if _, _, err := parseProduceResponse(body[:n], v, 1234); !errors.Is(err, errMalformed) {
					t.Fatalf("body cut to %d of %d bytes: err %v, want errMalformed", n, len(body), err)
				}
			}
			if _, _, err := parseProduceResponse(body, v, 1235); !errors.Is(err, errMalformed) {
				t.Fatalf("wrong correlation ID: err %v, want errMalformed", err)
			}
		})
	}
}
