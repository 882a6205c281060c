package outbox

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/adapters/memory"
	"github.com/omnibusmq/omnibus/pubsub"
)

// A row the relay can never publish goes to the quarantine table with the
// reason, and the valid rows behind it (same topic, same key) go on in order.
func TestRelay_MalformedRowsGoToTheQuarantineAndTheRestGoOn(t *testing.T) {
	for _, backend := range allBackends {
		t.Run(backend, func(t *testing.T) {
			ctx := context.Background()
			e := newEnv(t, backend)
			client := memory.NewClient(memory.Options{MaxMessageSize: 1024})
			t.Cleanup(func() { client.Close() })
			got := collect(t, client, "orders", "g")
			tbl := e.store.w.t.quoted()
			// Postgres stores metadata as JSONB: valid JSON, but not an
			// object of strings. SQLite stores any text.
			badMeta, payload, created := `'{"n": 1}'`, `'\x00'::bytea`, ""
			if !e.pg {
				badMeta, payload, created = `'not json'`, `x'00'`, ", 0"
			}
			cols := "(topic, msg_id, msg_key, payload, metadata" + map[bool]string{true: ")", false: ", created_at)"}[e.pg]
			steps := []func(tx *txn) error{
				func(tx *txn) error { return e.store.Publish(ctx, tx.tx, "orders", okMsg("a1")) },
				func(tx *txn) error {
					return tx.exec(ctx, fmt.Sprintf(`INSERT INTO %s %s VALUES ('orders', 'bad-metadata', 'k', %s, %s%s)`, tbl, cols, payload, badMeta, created))
				},
				func(tx *txn) error { return e.store.Publish(ctx, tx.tx, "orders", okMsg("a2")) },
				func(tx *txn) error {
					return tx.exec(ctx, fmt.Sprintf(`INSERT INTO %s %s VALUES ('', 'bad-topic', 'k', %s, NULL%s)`, tbl, cols, payload, created))
				},
				func(tx *txn) error {
					return tx.exec(ctx, fmt.Sprintf(`INSERT INTO %s %s VALUES ('orders', 'too-big', 'k', %s, NULL%s)`, tbl, cols, strings.Replace(payload, "00", strings.Repeat("00", 2048), 1), created))
				},
				func(tx *txn) error { return e.store.Publish(ctx, tx.tx, "orders", okMsg("a3")) },
			}
			for i, step := range steps {
				tx, err := e.begin(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if err := step(tx); err != nil {
					_ = tx.rollback(ctx)
					t.Fatalf("step %d: %v", i, err)
				}
				if err := tx.commit(ctx); err != nil {
					t.Fatalf("step %d: commit: %v", i, err)
				}
			}
			r, err := NewRelay(e.store, client, RelayOptions{Logger: slog.New(slog.DiscardHandler)})
			if err != nil {
				t.Fatal(err)
			}
			stop := runRelay(t, r)
			got.waitDistinct(t, 3)
			stop()
			var order []string
			for _, m := range got.snapshot() {
				order = append(order, m.ID)
			}
			if strings.Join(order, ",") != "a1,a2,a3" {
				t.Errorf("delivered %v, want a1,a2,a3", order)
			}
			q := e.quarantined(t)
			want := []string{"bad-metadata: metadata is not a JSON object", "bad-topic: topic", "too-big: "}
			if len(q) != len(want) {
				t.Fatalf("quarantine holds %q, want %d rows", q, len(want))
			}
			for i := range want {
				if !strings.HasPrefix(q[i], want[i]) {
					t.Errorf("quarantine row %d = %q, want it to start with %q", i, q[i], want[i])
				}
			}
			if !strings.Contains(q[2], "over the broker's maximum") {
				t.Errorf("quarantine reason %q does not say the payload is too big", q[2])
			}
		})
	}
}

func okMsg(id string) *pubsub.Message {
	return &pubsub.Message{ID: id, Key: "k", Payload: []byte(id), Metadata: map[string]string{"ok": "1"}}
}

// FuzzDecodeRow: any column values decode without panicking; a row decodes
// clean only when its message can be published as it is.
func FuzzDecodeRow(f *testing.F) {
	f.Add("orders", "id-1", "k", []byte("x"), `{"a":"b"}`, true)
	f.Add("orders", "id-1", "", []byte{}, `not json`, true)
	f.Add("", "id", "k", []byte("x"), `null`, true)
	f.Add("ord\xffers", "id", "k", []byte("x"), `{"a":1}`, true)
	f.Add("orders", "", "k", []byte("x"), ``, false)
	f.Fuzz(func(t *testing.T, topic, msgID, key string, payload []byte, meta string, hasMeta bool) {
		var mp *string
		if hasMeta {
			mp = &meta
		}
		r := decodeRow(1, topic, msgID, key, payload, mp)
		if r.bad != nil {
			return
		}
		if err := pubsub.ValidateTopic(r.topic); err != nil {
			t.Errorf("row decoded clean with topic %q: %v", topic, err)
		}
		if r.msg.ID != msgID || r.msg.Key != key || string(r.msg.Payload) != string(payload) {
			t.Errorf("decoded message %+v differs from its columns", r.msg)
		}
	})
}
