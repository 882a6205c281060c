package kafka

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"slices"
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

// Records read back (take) as the messages
// toRecords made them from, also when the partition skips some of the
// fetched records (already delivered or committed) and for a record without
// an ID header (its position is its ID).
func TestFetchedRecordsReadBackAsTheMessagesTheyWereMadeFrom(t *testing.T) {
	msgs := []*driver.Message{
		{ID: "id-1", Key: "k", Payload: []byte("p"), Metadata: map[string]string{"a": "1", "b": "22"}},
		{ID: "id-2", Payload: []byte("no key")},
		{ID: "id-3", Key: "key-3", Metadata: map[string]string{"e": ""}},
		{ID: "id-4", Key: "k4"},
	}
	want := append(slices.Clone(msgs), &driver.Message{ID: "t/0/4", Key: "fk", Payload: []byte("v"), Metadata: map[string]string{"h": "hv"}})
	for _, from := range []int64{0, 1, 2, 4} {
		t.Run(fmt.Sprintf("partition committed up to %d", from), func(t *testing.T) {
			_, recs := toRecords("t", msgs)
			recs = append(recs, &kgo.Record{Topic: "t", Key: []byte("fk"), Value: []byte("v"),
				Headers: []kgo.RecordHeader{{Key: "h", Value: []byte("hv")}}})
			for i, r := range recs {
				r.Offset = int64(i)
			}
			s := &subscription{topic: "t", parts: map[int32]*partition{0: {tracker: newOffsetTracker(from)}}}
			fs := kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "t", Partitions: []kgo.FetchPartition{{Partition: 0, Records: recs}}}}}}
			got := s.take(fs, nil)
			if len(got) != len(want)-int(from) {
				t.Fatalf("%d deliveries, want %d", len(got), len(want)-int(from))
			}
			for i, dm := range got {
				w := want[int(from)+i]
				if dm.ID != w.ID || dm.Key != w.Key || string(dm.Payload) != string(w.Payload) || !maps.Equal(dm.Metadata, w.Metadata) {
					t.Errorf("delivery %d: id %q key %q payload %q metadata %v, want %q %q %q %v",
						i, dm.ID, dm.Key, dm.Payload, dm.Metadata, w.ID, w.Key, w.Payload, w.Metadata)
				}
			}
		})
	}
}

// take reuses its messages from one fetch to the next (the portable layer
// copies what it keeps); a delivery nacked after later fetches still comes
// back as itself, with the next attempt.
func TestANackedDeliveryComesBackAsItselfAfterLaterFetches(t *testing.T) {
	fetch := func(from int64, ids ...string) kgo.Fetches {
		msgs := make([]*driver.Message, len(ids))
		for i, id := range ids {
			msgs[i] = &driver.Message{ID: id, Key: "k-" + id, Payload: []byte("p-" + id)}
		}
		_, recs := toRecords("t", msgs)
		for i, r := range recs {
			r.Offset = from + int64(i)
		}
		return kgo.Fetches{{Topics: []kgo.FetchTopic{{Topic: "t", Partitions: []kgo.FetchPartition{{Partition: 0, Records: recs}}}}}}
	}
	s := &subscription{topic: "t", parts: map[int32]*partition{0: {tracker: newOffsetTracker(0)}}}
	first := s.take(fetch(0, "a", "b"), nil)
	nacked := first[1].AckID
	if second := s.take(fetch(2, "c", "d"), nil); len(second) != 2 || second[1].ID != "d" {
		t.Fatalf("second fetch: %d deliveries", len(second))
	}
	if err := s.SendNacks(context.Background(), []driver.AckID{nacked}, 0); err != nil {
		t.Fatal(err)
	}
	if len(s.redo) != 1 {
		t.Fatalf("%d redeliveries queued, want 1", len(s.redo))
	}
	if m := s.redo[0]; m.ID != "b" || m.Key != "k-b" || string(m.Payload) != "p-b" || m.Attempt != 2 {
		t.Errorf("redelivered id %q key %q payload %q attempt %d, want b, k-b, p-b, 2", m.ID, m.Key, m.Payload, m.Attempt)
	}
}
