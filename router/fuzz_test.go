package router_test

import (
	"context"
	"encoding/json"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

type fuzzOrder struct {
	ID    string            `json:"id"`
	Cents int64             `json:"cents"`
	Tags  map[string]string `json:"tags"`
}

// FuzzJSON: any payload either reaches the handler decoded exactly as
// encoding/json decodes it, or fails with a permanent error; never a panic.
func FuzzJSON(f *testing.F) {
	f.Add([]byte(`{"id":"o1","cents":100,"tags":{"a":"b"}}`))
	f.Add([]byte(`{"cents":1e400}`))
	f.Add([]byte(`[`))
	f.Add([]byte("\xff"))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, payload []byte) {
		called := false
		h := router.JSON(func(_ context.Context, _ *pubsub.Message, v fuzzOrder) error {
			called = true
			var want fuzzOrder
			if err := json.Unmarshal(payload, &want); err != nil {
				t.Errorf("handler called for a payload encoding/json rejects: %v", err)
			}
			if v.ID != want.ID || v.Cents != want.Cents || len(v.Tags) != len(want.Tags) {
				t.Errorf("decoded %+v, want %+v", v, want)
			}
			return nil
		})
		err := h(context.Background(), &pubsub.Message{ID: "m", Topic: "t", Payload: payload})
		if err != nil && (called || !pubsub.IsPermanent(err)) {
			t.Errorf("error %v (handler called: %v), want a permanent error without a call", err, called)
		}
		if err == nil && !called {
			t.Errorf("no error and no call")
		}
	})
}
