package kafka

import (
	"bytes"
	"maps"
	"testing"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestToRecordsKeepsEachMessagesKeyIDAndMetadataApart(t *testing.T) {
	for _, tc := range []struct {
		name string
		msgs []*driver.Message
	}{
		{name: "one message with everything", msgs: []*driver.Message{
			{ID: "id-1", Key: "k", Payload: []byte("p"), Metadata: map[string]string{"a": "1", "b": "22"}},
		}},
		{name: "no key stays a nil key (sticky partitioning)", msgs: []*driver.Message{
			{ID: "id-1", Payload: []byte("p")},
			{ID: "id-2", Key: "k2", Payload: []byte("q")},
		}},
		{name: "empty values and metadata", msgs: []*driver.Message{
			{ID: "", Key: "", Payload: nil, Metadata: map[string]string{"e": ""}},
			{ID: "x", Key: "y", Payload: []byte{}, Metadata: map[string]string{}},
		}},
		{name: "many messages share nothing visible", msgs: func() []*driver.Message {
			var ms []*driver.Message
			for i := range 50 {
				ms = append(ms, &driver.Message{ID: string(rune('a' + i%26)), Key: string(rune('A' + i%26)), Payload: []byte{byte(i)},
					Metadata: map[string]string{"i": string(rune('0' + i%10))}})
			}
			return ms
		}()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			recs, ptrs := toRecords("t", tc.msgs)
			if len(recs) != len(tc.msgs) || len(ptrs) != len(tc.msgs) {
				t.Fatalf("%d records, %d pointers for %d messages", len(recs), len(ptrs), len(tc.msgs))
			}
			for i, m := range tc.msgs {
				r := ptrs[i]
				if r != &recs[i] || r.Topic != "t" {
					t.Fatalf("record %d: pointer or topic wrong: %+v", i, r)
				}
				if m.Key == "" && r.Key != nil || string(r.Key) != m.Key {
					t.Errorf("record %d: key %q (nil %v), want %q", i, r.Key, r.Key == nil, m.Key)
				}
				if !bytes.Equal(r.Value, m.Payload) {
					t.Errorf("record %d: value %q, want %q", i, r.Value, m.Payload)
				}
				got := map[string]string{}
				for _, h := range r.Headers {
					got[h.Key] = string(h.Value)
				}
				want := maps.Clone(m.Metadata)
				if want == nil {
					want = map[string]string{}
				}
				want[HeaderID] = m.ID
				if len(r.Headers) != len(want) || !maps.Equal(got, want) {
					t.Errorf("record %d: headers %v, want %v", i, got, want)
				}
				// Appending to one record's slices must not reach the next
				// record's bytes or headers.
				if len(r.Key) > 0 {
					_ = append(r.Key, '!')
				}
				_ = append(r.Headers, kgo.RecordHeader{Key: "x", Value: []byte("!")})
			}
			for i, m := range tc.msgs {
				if string(recs[i].Key) != m.Key || string(recs[i].Headers[0].Value) != m.ID {
					t.Errorf("record %d changed by an append to another record: key %q, id %q", i, recs[i].Key, recs[i].Headers[0].Value)
				}
			}
		})
	}
}
