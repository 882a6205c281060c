package config_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/config"
)

// A config file whose password sits in a field of the wrong type, or that
// does not parse, gives an error that does not quote the password.
func TestLoadFileErrorsNeverQuoteThePassword(t *testing.T) {
	cases := map[string]string{
		"url as a list.yaml":       "url: [amqp://guest:s3cr3tPW@h/]\n",
		"url in require.yaml":      "url: mem://x\nrequire: amqp://guest:s3cr3tPW@h/\n",
		"params as a string.yaml":  "url: mem://x\nparams: sasl_password=s3cr3tPW\n",
		"bad indentation.yaml":     "url: amqp://guest:s3cr3tPW@h/\n  params: x\n",
		"url as a list.json":       `{"url": ["amqp://guest:s3cr3tPW@h/"]}`,
		"truncated.json":           `{"url": "amqp://guest:s3cr3tPW@h/`,
		"unknown field value.yaml": "url: mem://x\npasword: s3cr3tPW\n",
	}
	dir := t.TempDir()
	for name, body := range cases {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := config.LoadFile(path)
			if err == nil {
				t.Fatal("LoadFile accepted a broken file")
			}
			if strings.Contains(err.Error(), "s3cr3tPW") {
				t.Errorf("LoadFile error quotes the password: %v", err)
			}
		})
	}
}
