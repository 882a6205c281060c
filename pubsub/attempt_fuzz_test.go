package pubsub

import (
	"strconv"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// FuzzAttemptHeader: the Attempt of a delivery is the broker's count when it
// gives one, else a positive omnibus-attempt header, else 1; never below 1.
func FuzzAttemptHeader(f *testing.F) {
	f.Add(0, "3", true)
	f.Add(2, "9", true)
	f.Add(0, "-4", true)
	f.Add(0, "99999999999999999999", true)
	f.Add(0, " 7", true)
	f.Add(-3, "", false)
	f.Fuzz(func(t *testing.T, brokerCount int, header string, hasHeader bool) {
		dm := &driver.Message{ID: "m", Attempt: brokerCount, Metadata: map[string]string{}}
		if hasHeader {
			dm.Metadata[MetaAttempt] = header
		}
		s := &Subscription{topic: "t"}
		got := s.delivery(&Delivery{}, dm).Message.Attempt
		want := 1
		if brokerCount > 0 {
			want = brokerCount
		} else if n, err := strconv.Atoi(header); hasHeader && err == nil && n > 0 {
			want = n
		}
		if got != want || got < 1 {
			t.Errorf("Attempt = %d, want %d (broker %d, header %q present %v)", got, want, brokerCount, header, hasHeader)
		}
	})
}
