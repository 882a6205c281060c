// Package config loads the broker a service talks to from its environment or
// its configuration file, so that moving a service from RabbitMQ to Kafka is a
// one-line change.
//
// Sources, in the order Load consults them: OMNIBUS_URL, when set (the whole
// broker URL); then a YAML or JSON file (by extension), when a path is given:
//
//	# omnibus.yaml
//	url: amqp://app:${RABBIT_PASSWORD}@rabbit:5672/orders
//	require: [ordering, persistence]
//	params:
//	  prefetch: "200"
//
// Secrets stay out of files and URLs: ${NAME} anywhere in the URL or in a
// param value is replaced by the environment variable NAME (an unset variable
// is an error naming it). Print a Config with String: passwords are redacted.
package config

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/omnibusmq/omnibus/pubsub"
)

// EnvURL is the environment variable holding the broker URL.
const EnvURL = "OMNIBUS_URL"

// Config is a broker selection. The zero value is invalid (no URL).
type Config struct {
	// URL is the broker URL (mem://, kafka://, amqp://, postgres://...).
	// ${NAME} is expanded from the environment.
	URL string `yaml:"url" json:"url"`
	// Require lists capabilities the broker must honour (see pubsub.Open).
	Require []string `yaml:"require,omitempty" json:"require,omitempty"`
	// Params are extra URL query parameters, merged over the URL's own.
	// Values may use ${NAME}.
	Params map[string]string `yaml:"params,omitempty" json:"params,omitempty"`
}

// Load returns the configuration from OMNIBUS_URL if set, else from the file
// at path (YAML for .yaml/.yml, JSON for .json). path may be empty, in which
// case OMNIBUS_URL must be set.
func Load(path string) (Config, error) {
	if v := os.Getenv(EnvURL); v != "" {
		return Config{URL: v}, nil
	}
	if path == "" {
		return Config{}, fmt.Errorf("config: no broker configured: set %s (e.g. %s=mem://) or give a config file: %w", EnvURL, EnvURL, pubsub.ErrInvalid)
	}
	return LoadFile(path)
}

// LoadFile reads a YAML or JSON config file, rejecting unknown fields.
func LoadFile(path string) (Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Config{}, fmt.Errorf("config: %w", err)
	}
	var c Config
	switch ext := strings.ToLower(filepath.Ext(path)); ext {
	case ".yaml", ".yml":
		dec := yaml.NewDecoder(strings.NewReader(string(data)))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			return Config{}, fmt.Errorf("config: %s: %v: %w", path, err, pubsub.ErrInvalid)
		}
	case ".json":
		dec := json.NewDecoder(strings.NewReader(string(data)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&c); err != nil {
			return Config{}, fmt.Errorf("config: %s: %v: %w", path, err, pubsub.ErrInvalid)
		}
	default:
		return Config{}, fmt.Errorf("config: %s: extension %q: want .yaml, .yml or .json: %w", path, ext, pubsub.ErrInvalid)
	}
	if c.URL == "" {
		return Config{}, fmt.Errorf("config: %s: field url is empty: %w", path, pubsub.ErrInvalid)
	}
	return c, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

func expand(field, s string) (string, error) {
	var missing []string
	out := envRef.ReplaceAllStringFunc(s, func(ref string) string {
		name := envRef.FindStringSubmatch(ref)[1]
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
		}
		// %20, not QueryEscape's '+', for a space: '+' is a space only in
		// a query, and a literal '+' in the user info.
		return strings.ReplaceAll(url.QueryEscape(v), "+", "%20")
	})
	if len(missing) > 0 {
		return "", fmt.Errorf("config: %s refers to unset environment variable(s) %s: %w", field, strings.Join(missing, ", "), pubsub.ErrInvalid)
	}
	return out, nil
}

// Resolve returns the final URL: environment references expanded, Params
// merged in and Require added as require=.
func (c Config) Resolve() (string, error) {
	if c.URL == "" {
		return "", fmt.Errorf("config: url is empty: %w", pubsub.ErrInvalid)
	}
	raw, err := expand("url", c.URL)
	if err != nil {
		return "", err
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", fmt.Errorf("config: url %s: cannot parse: %w", pubsub.Redact(c.URL), pubsub.ErrInvalid)
	}
	q := u.Query()
	keys := make([]string, 0, len(c.Params))
	for k := range c.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v, err := expand("params."+k, c.Params[k])
		if err != nil {
			return "", err
		}
		uv, _ := url.QueryUnescape(v)
		q.Set(k, uv)
	}
	if len(c.Require) > 0 {
		q.Set("require", strings.Join(c.Require, ","))
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// String returns the resolved URL with passwords redacted (or the raw URL,
// redacted, when it does not resolve).
func (c Config) String() string {
	if s, err := c.Resolve(); err == nil {
		return pubsub.Redact(s)
	}
	return pubsub.Redact(c.URL)
}

// Open resolves c and opens a client on it.
func (c Config) Open(ctx context.Context, opts ...pubsub.ClientOption) (*pubsub.Client, error) {
	u, err := c.Resolve()
	if err != nil {
		return nil, err
	}
	return pubsub.Open(ctx, u, opts...)
}
