package config_test

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/config"
	"github.com/omnibusmq/omnibus/pubsub"
)

// FuzzExpandKeepsAnyValueExact: a ${VAR} holding any text lands in the
// resolved URL as exactly that text, in the user info and in a parameter.
func FuzzExpandKeepsAnyValueExact(f *testing.F) {
	for _, v := range []string{"s3cret", "p@ss/word", "a b+c", "100%", "#?&=;:", "ünï", ""} {
		f.Add(v)
	}
	f.Fuzz(func(t *testing.T, v string) {
		if strings.ContainsRune(v, 0) {
			t.Skip() // an environment variable cannot hold NUL
		}
		t.Setenv("OMNIBUS_FUZZ_PW", v)
		c := config.Config{URL: "amqp://app:${OMNIBUS_FUZZ_PW}@h:5672/vh?sasl_password=${OMNIBUS_FUZZ_PW}", Params: map[string]string{"token": "${OMNIBUS_FUZZ_PW}"}}
		raw, err := c.Resolve()
		if err != nil {
			t.Fatalf("Resolve: %v", err)
		}
		u, err := url.Parse(raw)
		if err != nil {
			t.Fatalf("resolved URL %q does not parse: %v", raw, err)
		}
		if pw, _ := u.User.Password(); pw != v {
			t.Errorf("password = %q, want %q", pw, v)
		}
		if q := u.Query(); q.Get("sasl_password") != v || q.Get("token") != v {
			t.Errorf("sasl_password=%q token=%q, want %q", q.Get("sasl_password"), q.Get("token"), v)
		}
		if len(v) >= 6 && !strings.Contains("amqp://app:xxxxx@h:5672/vh?sasl_password=&token=", v) && strings.Contains(c.String(), v) {
			t.Errorf("Config.String %q shows the password", c.String())
		}
	})
}

// FuzzLoadFile: any file content loads or fails with ErrInvalid; it never
// panics.
func FuzzLoadFile(f *testing.F) {
	f.Add("url: mem://x\nrequire: [ordering]\nparams:\n  buffer: \"10\"\n", true)
	f.Add(`{"url": "mem://x", "params": {"buffer": "10"}}`, false)
	f.Add("url: [1, 2]\n", true)
	f.Add("bogus: 1\n", true)
	f.Add(`{"url": 1}`, false)
	f.Add("url: &a [*a]\n", true)
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, body string, yaml bool) {
		name := filepath.Join(dir, "c.json")
		if yaml {
			name = filepath.Join(dir, "c.yaml")
		}
		if err := os.WriteFile(name, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		c, err := config.LoadFile(name)
		if err != nil {
			if !errors.Is(err, pubsub.ErrInvalid) {
				t.Errorf("LoadFile error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if c.URL == "" {
			t.Errorf("LoadFile returned an empty URL without an error")
		}
		_, _ = c.Resolve()
		_ = c.String()
	})
}
