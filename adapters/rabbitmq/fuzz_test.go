package rabbitmq

import (
	"errors"
	"strconv"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// FuzzParseURL feeds ParseURL any password and query: it must not panic, a
// failure must wrap ErrInvalid, and no error may contain the password.
func FuzzParseURL(f *testing.F) {
	f.Add("s3cr3tPW", "queue_type=classic&groups=a,b")
	f.Add("pw#frag", "prefetch=70000")
	f.Add("p?w/x", "tls_ca=/nonexistent&tls_key=hunter22")
	f.Add("ünï\r\n", "unroutable=maybe&bogus=1")
	f.Add("%zz%41", "heartbeat=-1s&connection_timeout=soon")
	f.Fuzz(func(t *testing.T, pw, query string) {
		if len(pw) < 6 || strings.ContainsAny(pw, "@") || strings.Contains(query, pw) || strings.Contains("amqp://guest:@127.0.0.1:5672/vh?", pw) {
			t.Skip()
		}
		// Errors quote URLs with %q: an escape such as \x80 next to the
		// query's own characters could spell the password by chance.
		if q := strconv.Quote(query); q[1:len(q)-1] != query {
			t.Skip()
		}
		_, _, err := ParseURL("amqp://guest:" + pw + "@127.0.0.1:5672/vh?" + query)
		if err == nil {
			return
		}
		if !errors.Is(err, driver.ErrInvalid) {
			t.Errorf("ParseURL error %v does not wrap ErrInvalid", err)
		}
		if strings.Contains(err.Error(), pw) {
			t.Errorf("ParseURL error contains the password %q: %v", pw, err)
		}
	})
}
