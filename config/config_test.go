package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/config"
	"github.com/omnibusmq/omnibus/pubsub"
)

func TestLoadFile(t *testing.T) {
	t.Setenv(config.EnvURL, "")
	t.Setenv("TEST_RABBIT_PW", "p@ss/word")
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases := []struct {
		name, file, body string
		wantURL          string
		wantErr          string
	}{
		{"YAMLWithSecretFromEnv", "a.yaml", "url: amqp://app:${TEST_RABBIT_PW}@rabbit:5672/\nrequire: [ordering]\nparams:\n  prefetch: \"200\"\n",
			"amqp://app:p%40ss%2Fword@rabbit:5672/?prefetch=200&require=ordering", ""},
		{"JSON", "b.json", `{"url":"kafka://k:9092","params":{"start":"earliest"}}`, "kafka://k:9092?start=earliest", ""},
		{"UnknownFieldIsAnError", "c.yaml", "url: mem://\nrequires: [x]\n", "", "requires"},
		{"MissingEnvVarIsNamed", "d.yaml", "url: amqp://app:${NOPE_UNSET_VAR}@h/\n", "", "NOPE_UNSET_VAR"},
		{"EmptyURL", "e.json", `{"params":{}}`, "", "url is empty"},
		{"BadExtension", "f.toml", "url = 'mem://'", "", ".toml"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := config.Load(write(tc.file, tc.body))
			var u string
			if err == nil {
				u, err = c.Resolve()
			}
			if tc.wantErr != "" {
				if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want ErrInvalid mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u != tc.wantURL {
				t.Errorf("URL = %q, want %q", u, tc.wantURL)
			}
			if strings.Contains(c.String(), "p@ss") || strings.Contains(c.String(), "p%40ss") {
				t.Errorf("String() leaks the password: %s", c.String())
			}
		})
	}
}

func TestNoConfigurationIsAClearError(t *testing.T) {
	t.Setenv(config.EnvURL, "")
	_, err := config.Load("")
	if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), config.EnvURL) {
		t.Fatalf("err = %v", err)
	}
}
