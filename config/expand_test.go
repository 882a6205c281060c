package config_test

import (
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/omnibusmq/omnibus/config"
)

// A secret from the environment arrives byte for byte wherever it sits in
// the URL: in the user info, the path or a query value, and through params.
func TestResolveKeepsSecretsIntactInEveryURLPart(t *testing.T) {
	secrets := []string{"a b", "p@ss", "p:ss", "p/ss", "100%", "a+b", "x?y#z", "pässwörd", `q"&=;`}
	for _, secret := range secrets {
		t.Run(secret, func(t *testing.T) {
			t.Setenv("OMNIBUS_TEST_SECRET", secret)
			cases := []struct {
				name string
				cfg  config.Config
				get  func(u *url.URL) string
			}{
				{"password", config.Config{URL: "amqp://app:${OMNIBUS_TEST_SECRET}@rabbit:5672/orders"}, func(u *url.URL) string {
					p, _ := u.User.Password()
					return p
				}},
				{"user", config.Config{URL: "amqp://${OMNIBUS_TEST_SECRET}:pw@rabbit:5672/"}, func(u *url.URL) string { return u.User.Username() }},
				{"path", config.Config{URL: "amqp://rabbit:5672/${OMNIBUS_TEST_SECRET}"}, func(u *url.URL) string { return u.Path[1:] }},
				{"query", config.Config{URL: "kafka://k1:9092?sasl_password=${OMNIBUS_TEST_SECRET}&x=1"}, func(u *url.URL) string { return u.Query().Get("sasl_password") }},
				{"param", config.Config{URL: "kafka://k1:9092", Params: map[string]string{"sasl_password": "${OMNIBUS_TEST_SECRET}"}}, func(u *url.URL) string { return u.Query().Get("sasl_password") }},
			}
			for _, tc := range cases {
				s, err := tc.cfg.Resolve()
				if err != nil {
					t.Fatalf("%s: Resolve: %v", tc.name, err)
				}
				u, err := url.Parse(s)
				if err != nil {
					t.Fatalf("%s: the resolved URL does not parse: %v", tc.name, err)
				}
				if got := tc.get(u); got != secret {
					t.Errorf("%s: got %q, want %q", tc.name, got, secret)
				}
			}
		})
	}
}

// A host from the environment is inserted as it is (a list of brokers), but
// a value that would change the URL's structure is an error.
func TestResolveHostFromEnvironment(t *testing.T) {
	t.Setenv("OMNIBUS_TEST_HOSTS", "k1:9092,k2:9092")
	s, err := config.Config{URL: "kafka://${OMNIBUS_TEST_HOSTS}?acks=all"}.Resolve()
	if err != nil || s != "kafka://k1:9092,k2:9092?acks=all" {
		t.Fatalf("Resolve = %q, %v", s, err)
	}
	t.Setenv("OMNIBUS_TEST_HOSTS", "evil@host/x")
	if _, err := (config.Config{URL: "kafka://${OMNIBUS_TEST_HOSTS}"}).Resolve(); err == nil {
		t.Fatal("a host with @ and / resolved without error")
	}
}

// OMNIBUS_URL overrides the file's url, and the file's require and params
// still apply.
func TestLoadEnvironmentURLKeepsTheFilesRequireAndParams(t *testing.T) {
	path := filepath.Join(t.TempDir(), "omnibus.yaml")
	if err := os.WriteFile(path, []byte("url: mem://file\nrequire: [ordering]\nparams:\n  buffer: \"10\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv(config.EnvURL, "mem://env")
	c, err := config.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.URL != "mem://env" || !slices.Equal(c.Require, []string{"ordering"}) || c.Params["buffer"] != "10" {
		t.Fatalf("Load = %+v, want the environment's URL with the file's require and params", c)
	}
}
