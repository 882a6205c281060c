package postgres_test

import (
	"context"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
)

// FuzzOpenURL feeds the postgres:// URL parser any password and query (the
// context is already cancelled, so nothing connects): it must not panic,
// and no error may contain the password in any form.
func FuzzOpenURL(f *testing.F) {
	f.Add("s3cr3tPW", "sslmode=disable&visibility_timeout=2s")
	f.Add("pw#frag", "sslmode=bogus")
	f.Add("p?w/x", "sslpassword=hunter22&connect_timeout=x")
	f.Add("ünï\r\n", "key_ordering=maybe&bogus=1")
	f.Add("%zz%41", "pool_max_conns=-1")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	f.Fuzz(func(t *testing.T, pw, query string) {
		if len(pw) < 6 || strings.ContainsAny(pw, "@") || strings.Contains(query, pw) || strings.Contains("postgres://app:@127.0.0.1:1/db?", pw) {
			t.Skip()
		}
		// Errors quote URLs with %q: an escape such as \x80 next to the
		// query's own characters could spell the password by chance.
		if q := strconv.Quote(query); q[1:len(q)-1] != query {
			t.Skip()
		}
		c, err := pubsub.Open(ctx, "postgres://app:"+pw+"@127.0.0.1:1/db?"+query)
		if err == nil {
			_ = c.Close()
			return
		}
		forms := []string{pw, url.QueryEscape(pw), url.PathEscape(pw)}
		if u, uerr := url.PathUnescape(pw); uerr == nil && len(u) >= 6 {
			forms = append(forms, u)
		}
		for _, form := range forms {
			if strings.Contains(query, form) || strings.Contains("postgres://app:xxxxx@127.0.0.1:1/db?", form) {
				return // written elsewhere in the URL too: not only a password there
			}
		}
		for _, form := range forms {
			if strings.Contains(err.Error(), form) {
				t.Errorf("Open error contains the password (as %q): %v", form, err)
			}
		}
	})
}
