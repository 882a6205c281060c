package nsq_test

import (
	"context"
	"fmt"
	neturl "net/url"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// Environment variables written by `scripts/brokers up nsq`.
const (
	envURL = "OMNIBUS_NSQ_URL" // nsq://host:port?lookupd=host:port&...
	envCtl = "OMNIBUS_NSQ_CTL" // executable: kill | start | ready
	envCA  = "OMNIBUS_NSQ_TLS_CA"
)

// brokerEnv returns the variables, all of which must be set; otherwise it
// skips the test loudly, or fails it under CI=true.
func brokerEnv(t testing.TB, names ...string) []string {
	t.Helper()
	var vals, unset []string
	for _, n := range names {
		v := os.Getenv(n)
		if v == "" {
			unset = append(unset, n)
		}
		vals = append(vals, v)
	}
	if len(unset) > 0 {
		msg := fmt.Sprintf("no nsq broker: set %s, or run `eval \"$(scripts/brokers up nsq)\"` first", strings.Join(unset, ", "))
		if ci := strings.ToLower(os.Getenv("CI")); ci == "true" || ci == "1" {
			t.Fatalf("CI=true and %s", msg)
		}
		t.Skip("SKIPPED, " + msg)
	}
	return vals
}

// withParams adds query parameters to an nsq:// URL.
func withParams(u string, kv ...string) string {
	var b strings.Builder
	b.WriteString(u)
	sep := "?"
	if strings.Contains(u, "?") {
		sep = "&"
	}
	for i := 0; i+1 < len(kv); i += 2 {
		b.WriteString(sep + kv[i] + "=" + kv[i+1])
		sep = "&"
	}
	return b.String()
}

// withoutLookupd removes the lookupd parameter from an nsq:// URL: the
// subscriptions then connect to the URL's nsqd only.
func withoutLookupd(t *testing.T, u string) string {
	t.Helper()
	pu, err := neturl.Parse(u)
	if err != nil {
		t.Fatal(err)
	}
	q := pu.Query()
	q.Del("lookupd")
	pu.RawQuery = q.Encode()
	return pu.String()
}

var seq atomic.Int64

var unsafe = regexp.MustCompile(`[^a-zA-Z0-9._-]+`)

// topicName returns a fresh NSQ topic name (at most 64 characters) that
// ends with the last characters of base.
func topicName(base string) string {
	base = unsafe.ReplaceAllString(base, "_")
	if len(base) > 36 {
		base = base[len(base)-36:]
	}
	return fmt.Sprintf("t%d-%d-%s", time.Now().UnixNano()%1e9, seq.Add(1), base)
}

func open(t testing.TB, url string) *pubsub.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := pubsub.Open(ctx, url)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}
