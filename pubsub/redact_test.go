package pubsub_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// leakyScheme is an adapter whose errors quote the whole URL it was given,
// the way a careless client library does.
const leakyScheme = "leaky"

func init() {
	pubsub.Register(leakyScheme, func(_ context.Context, raw string) (driver.Broker, error) {
		u, err := url.Parse(raw)
		if err != nil {
			return nil, fmt.Errorf("leaky: %w", err)
		}
		pw, _ := u.User.Password()
		return nil, fmt.Errorf("leaky: cannot log in to %s (%q) with %q, query %v: %w", raw, raw, pw, u.Query(), driver.ErrPermanent)
	})
}

// urlShapes puts the password PW into every place a broker URL holds one,
// written the ways people write them (unescaped, with a CRLF tail, ...).
var urlShapes = []string{
	"amqp://guest:PW@127.0.0.1:5672/",
	"amqp://guest:PW#x@127.0.0.1:5672/",
	"amqp://guest:PW?x@127.0.0.1:5672/",
	"amqp://guest:PW/x@127.0.0.1:5672/",
	"amqp://guest:PW@127.0.0.1:5672/\r",
	"amqp://guest:PW \"x@127.0.0.1:5672/",
	"amqp://guest:PWé#x@127.0.0.1:5672/",
	"postgres://app:PW@127.0.0.1:15432/db?sslmode=disable",
	"postgres://app:PW@127.0.0.1:15432/db?sslpassword=PW",
	"kafka://127.0.0.1:9092?sasl_user=bob&sasl_password=PW",
	"kafka://127.0.0.1:9092?sasl_user=bob&sasl_pasword=PW",
	"kafka://127.0.0.1:9092?sasl_user=bob@corp&sasl_passwd=PW#frag",
	"kafka://alice:PW?x@h:9092",
	"mem://x?token=PW",
	"mem://x?Secret=PW&buffer=1",
	"leaky://guest:PW@h/",
	"leaky://h/?api_key=PW",
	"leaky://guest:PW%zz@h/",
	"leaky://h/?auth=PW%zz",
	"guest:PW@127.0.0.1:5672",
}

var passwords = []string{"s3cr3tPW", "p@ss:w0rd", "ünïcødé-pw", "with space", "quote\"d\\pw", "123456", "%41%42%43xyz"}

func TestOpenErrorsNeverContainThePassword(t *testing.T) {
	for _, shape := range urlShapes {
		for _, pw := range passwords {
			raw := strings.ReplaceAll(shape, "PW", pw)
			t.Run(strconv.Quote(raw), func(t *testing.T) {
				c, err := pubsub.Open(context.Background(), raw)
				if err == nil {
					c.Close()
					return
				}
				assertNoSecret(t, "Open error", err.Error(), pw)
				assertNoSecret(t, "Redact", pubsub.Redact(raw), pw)
			})
		}
	}
}

func TestOpenParseErrorsNameTheProblemNotTheText(t *testing.T) {
	cases := []struct{ url, want string }{
		{"amqp://guest:s3cr3tPW#x@host/", "percent-encoded"},
		{"amqp://guest:s3cr3tPW@host/\r", "carriage return"},
		{"mem://x?sasl_password=%zzs3cr3tPW", "invalid URL escape"},
	}
	for _, tc := range cases {
		_, err := pubsub.Open(context.Background(), tc.url)
		if !errors.Is(err, pubsub.ErrInvalid) {
			t.Fatalf("Open(%q) = %v, want ErrInvalid", tc.url, err)
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%q) = %q, want it to mention %q", tc.url, err, tc.want)
		}
		assertNoSecret(t, "Open error", err.Error(), "s3cr3tPW")
	}
}

func TestRedactErrorKeepsTheChain(t *testing.T) {
	raw := "leaky://guest:hunter22@h/"
	_, err := pubsub.Open(context.Background(), raw)
	if !errors.Is(err, pubsub.ErrPermanent) {
		t.Fatalf("Open = %v, want it to wrap ErrPermanent", err)
	}
	if !strings.Contains(err.Error(), "guest:xxxxx@h") {
		t.Errorf("Open error %q does not show the redacted URL", err)
	}
}

func assertNoSecret(t *testing.T, what, text, pw string) {
	t.Helper()
	for _, form := range secretForms(pw) {
		if strings.Contains(text, form) {
			t.Errorf("%s contains the password (as %q): %q", what, form, text)
		}
	}
}

func secretForms(pw string) []string {
	q := strconv.Quote(pw)
	forms := []string{pw, q[1 : len(q)-1], url.QueryEscape(pw), url.PathEscape(pw)}
	if u, err := url.PathUnescape(pw); err == nil {
		forms = append(forms, u)
	}
	return forms
}

// FuzzRedact puts any password into every URL shape and asserts that neither
// Redact nor any error of Open contains it.
func FuzzRedact(f *testing.F) {
	for i, shape := range urlShapes {
		f.Add(shape, passwords[i%len(passwords)])
	}
	f.Fuzz(func(t *testing.T, shape, pw string) {
		// One password per URL: a URL holding it twice, cut differently,
		// lets a careless adapter quote a window across both.
		if len(pw) < 6 || strings.Count(shape, "PW") != 1 || strings.Contains(pw, "PW") {
			t.Skip()
		}
		raw := strings.ReplaceAll(shape, "PW", pw)
		// A password that is also written elsewhere in the URL (as a host,
		// a path, a parameter no one calls secret) is not a password there.
		rest := strings.ReplaceAll(shape, "PW", "")
		// Errors quote the URL with %q: an escape such as \x00 next to
		// other characters of the URL could spell the password by chance.
		if q := strconv.Quote(rest); q[1:len(q)-1] != rest {
			t.Skip()
		}
		for _, form := range secretForms(pw) {
			if form == "" || strings.Contains(strings.ToLower(rest), strings.ToLower(form)) || strings.Contains(form, "xxxxx") {
				t.Skip()
			}
			// Errors quote names with %q: the URL's own text next to a
			// quote (`scheme "a00000"`) can spell a password like `00000"`.
			if bare := strings.Trim(form, `"\`); bare != form && bare != "" && strings.Contains(strings.ToLower(rest), strings.ToLower(bare)) {
				t.Skip()
			}
		}
		// A password that completes a "://" (shape "A:PW@", password
		// "//0000") turns the text into a URL with a scheme and a user name
		// and no password at all.
		if strings.Contains(raw, "://") && !strings.Contains(shape, "://") {
			t.Skip()
		}
		// In a query, an unescaped '&' or ';' ends the value: what follows
		// is another parameter, not the password.
		if !passwordPlace(shape) || (strings.Contains(shape, "=PW") && strings.ContainsAny(pw, "&;")) {
			t.Skip()
		}
		assertNoSecret(t, "Redact", pubsub.Redact(raw), pw)
		if c, err := pubsub.Open(context.Background(), raw); err != nil {
			assertNoSecret(t, "Open error", err.Error(), pw)
		} else {
			c.Close()
		}
	})
}

// passwordPlace reports whether every PW in shape sits where a password
// goes: right after "user:" before an '@', or as the value of a secret-like
// parameter.
func passwordPlace(shape string) bool {
	for rest := shape; ; {
		i := strings.Index(rest, "PW")
		if i < 0 {
			return true
		}
		before, after := rest[:i], rest[i+2:]
		auth := before
		if i := strings.Index(before, "://"); i >= 0 {
			auth = before[i+3:]
		}
		inUserinfo := strings.HasSuffix(before, ":") && strings.Contains(after, "@") && !strings.ContainsAny(strings.TrimSuffix(auth, ":"), "@:/?#") || isUserinfo(before, after)
		if !inUserinfo && !secretParamBefore(before) {
			return false
		}
		rest = after
	}
}

func isUserinfo(before, after string) bool {
	s := before
	if i := strings.Index(s, "://"); i >= 0 {
		s = s[i+3:]
	}
	c := strings.IndexByte(s, ':')
	return c >= 0 && c == len(s)-1 && !strings.ContainsAny(s[:c], "@/?#&=") && strings.Contains(after, "@")
}

func secretParamBefore(before string) bool {
	i := strings.LastIndexAny(before, "?&;")
	if i < 0 || !strings.HasSuffix(before, "=") {
		return false
	}
	name := strings.ToLower(before[i+1 : len(before)-1])
	if strings.ContainsAny(name, "=&;?") || !strings.Contains(before[:i+1], "?") {
		return false
	}
	for _, w := range []string{"pas", "pw", "secr", "token", "cred", "auth", "apikey", "api_key", "access_key", "sig", "priv"} {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

func TestRedactErrorKeepsAUserNameThatEqualsThePassword(t *testing.T) {
	_, err := pubsub.Open(context.Background(), "leaky://guest:guest@h/")
	if err == nil {
		t.Fatal("Open succeeded")
	}
	if !strings.Contains(err.Error(), "guest:xxxxx@h") || strings.Contains(err.Error(), "guest:guest") {
		t.Errorf("Open error %q: want the user name shown and the password hidden", err)
	}
}
