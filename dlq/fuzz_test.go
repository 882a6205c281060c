package dlq_test

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/omnibusmq/omnibus/dlq"
	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
)

// FuzzPoisonRecordRoundTrip: the fault record Poison writes for any error,
// handler, topic and attempt count reads back the same with dlq.Parse, and
// its error text is valid UTF-8 (brokers refuse anything else in headers).
func FuzzPoisonRecordRoundTrip(f *testing.F) {
	f.Add("boom", "billing", "orders", 3, "k", "v")
	f.Add("caf\xc3", "h", "t", 0, "", "")
	f.Add(string(make([]byte, 20000)), "h\xff", "t", -1, "omnibus-attempt", "7")
	f.Fuzz(func(t *testing.T, errText, handler, topic string, attempt int, mk, mv string) {
		m := &pubsub.Message{ID: "id", Topic: topic, Attempt: attempt, Metadata: map[string]string{mk: mv}}
		now := time.Date(2026, 12, 7, 14, 0, 0, 123456789, time.UTC)
		pm := middleware.PoisonRecord(m, errors.New(errText), handler, now)
		text := pm.Metadata[middleware.MetaPoisonError]
		if !utf8.ValidString(text) || len(text) > 16<<10+len("…(truncated)") {
			t.Errorf("error text not valid UTF-8 or too long (%d bytes)", len(text))
		}
		if _, ok := pm.Metadata[pubsub.MetaAttempt]; ok {
			t.Errorf("poison record keeps %s", pubsub.MetaAttempt)
		}
		r := dlq.Parse(pm)
		handler, topic = strings.ToValidUTF8(handler, "\uFFFD"), strings.ToValidUTF8(topic, "\uFFFD")
		if r.Handler != handler || r.OriginalTopic != topic || !r.FailedAt.Equal(now) || r.Attempts != max(attempt, 1) {
			t.Errorf("Parse = handler %q topic %q failed %v attempts %d; want %q %q %v %d", r.Handler, r.OriginalTopic, r.FailedAt, r.Attempts, handler, topic, now, max(attempt, 1))
		}
		min := middleware.MinimalPoisonRecord(pm, errors.New("refused"))
		if r2 := dlq.Parse(min); r2.Handler != handler || r2.Attempts != r.Attempts || !utf8.ValidString(min.Metadata[middleware.MetaPoisonError]) {
			t.Errorf("minimal record reads back %+v", r2)
		}
	})
}

// FuzzParse: any metadata parses without panicking.
func FuzzParse(f *testing.F) {
	f.Add("permanent", "3", "2026-12-07T14:00:00Z")
	f.Add("", "x", "yesterday")
	f.Add("\xff", strconv.Itoa(-5), "")
	f.Fuzz(func(t *testing.T, reason, attempts, failedAt string) {
		r := dlq.Parse(&pubsub.Message{Metadata: map[string]string{
			dlq.MetaReason: reason, dlq.MetaAttempts: attempts, dlq.MetaFailedAt: failedAt,
		}})
		if r.Reason != reason {
			t.Errorf("Reason = %q, want %q", r.Reason, reason)
		}
		_ = dlq.Filter{Reason: "x", Since: time.Unix(0, 0)}.Match(r)
	})
}
