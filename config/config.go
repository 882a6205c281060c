// Package config loads the broker a service talks to from its environment or
// its configuration file, so that moving a service from RabbitMQ to Kafka is a
// one-line change.
//
// Sources: a YAML or JSON file (by extension), when a path is given, and
// OMNIBUS_URL, when set, which overrides the file's url (the file's require
// and params still apply):
//
//	# omnibus.yaml
//	url: amqp://app:${RABBIT_PASSWORD}@rabbit:5672/orders
//	require: [ordering, persistence]
//	params:
//	  prefetch: "200"
//
// Secrets stay out of files and URLs: ${NAME} anywhere in the URL or in a
// param value is replaced by the environment variable NAME (an unset variable
// is an error naming it). The value arrives byte for byte: it is
// percent-encoded for the part of the URL it sits in (user info, path,
// query), inserted as it is in the host part (a broker list; @ / ? # are
// rejected there) and in param values. Print a Config with String:
// passwords are redacted.
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

// Load returns the configuration from the file at path (YAML for
// .yaml/.yml, JSON for .json) with OMNIBUS_URL, when set, overriding the
// file's url: the file's require and params still apply. path may be empty,
// in which case OMNIBUS_URL must be set.
func Load(path string) (Config, error) {
	env := os.Getenv(EnvURL)
	if path == "" {
		if env == "" {
			return Config{}, fmt.Errorf("config: no broker configured: set %s (e.g. %s=mem://) or give a config file: %w", EnvURL, EnvURL, pubsub.ErrInvalid)
		}
		return Config{URL: env}, nil
	}
	c, err := loadFile(path, env != "")
	if err != nil {
		return Config{}, err
	}
	if env != "" {
		c.URL = env
	}
	return c, nil
}

// LoadFile reads a YAML or JSON config file, rejecting unknown fields.
func LoadFile(path string) (Config, error) { return loadFile(path, false) }

// loadFile reads path; urlOptional lets the file leave url out (OMNIBUS_URL
// gives it).
func loadFile(path string, urlOptional bool) (Config, error) {
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
	if c.URL == "" && !urlOptional {
		return Config{}, fmt.Errorf("config: %s: field url is empty: %w", path, pubsub.ErrInvalid)
	}
	return c, nil
}

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}`)

// urlPart is where in a URL a ${NAME} reference sits; it decides how the
// variable's value is escaped.
type urlPart int

const (
	partRaw      urlPart = iota // a param value: inserted as it is (Resolve encodes the query)
	partUserInfo                // user or password
	partHost                    // host[:port][,host:port...]: inserted as it is, structure checked
	partRest                    // path, query, fragment
)

// escapeValue percent-encodes every byte but the unreserved characters
// (RFC 3986: letters, digits, - . _ ~), which is valid in the user info, a
// path segment and a query value alike, and decodes back to the value there
// (a space is %20, never '+').
func escapeValue(v string) string {
	const hex = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		c := v[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-' || c == '.' || c == '_' || c == '~' {
			b.WriteByte(c)
			continue
		}
		b.WriteByte('%')
		b.WriteByte(hex[c>>4])
		b.WriteByte(hex[c&15])
	}
	return b.String()
}

// partAt tells which part of the URL template s the byte at i is in.
func partAt(s string, i int) urlPart {
	start := 0
	if j := strings.Index(s, "://"); j >= 0 {
		start = j + 3
	}
	if i < start {
		return partRest
	}
	end := len(s)
	if j := strings.IndexAny(s[start:], "/?#"); j >= 0 {
		end = start + j
	}
	if i >= end {
		return partRest
	}
	if at := strings.LastIndex(s[start:end], "@"); at >= 0 && i < start+at {
		return partUserInfo
	}
	return partHost
}

// expand replaces each ${NAME} in s by the environment variable NAME,
// escaped for the part of the URL it sits in (partRaw: not escaped, for a
// param value; url: by position in the URL template).
func expand(field, s string, url bool) (string, error) {
	var missing, bad []string
	var b strings.Builder
	last := 0
	for _, m := range envRef.FindAllStringSubmatchIndex(s, -1) {
		b.WriteString(s[last:m[0]])
		last = m[1]
		name := s[m[2]:m[3]]
		v, ok := os.LookupEnv(name)
		if !ok {
			missing = append(missing, name)
			continue
		}
		part := partRaw
		if url {
			part = partAt(s, m[0])
		}
		switch part {
		case partUserInfo, partRest:
			v = escapeValue(v)
		case partHost:
			if strings.ContainsAny(v, "@/?#") {
				bad = append(bad, name)
				continue
			}
		}
		b.WriteString(v)
	}
	b.WriteString(s[last:])
	if len(missing) > 0 {
		return "", fmt.Errorf("config: %s refers to unset environment variable(s) %s: %w", field, strings.Join(missing, ", "), pubsub.ErrInvalid)
	}
	if len(bad) > 0 {
		return "", fmt.Errorf("config: %s: environment variable(s) %s in the host part contain @, /, ? or #: %w", field, strings.Join(bad, ", "), pubsub.ErrInvalid)
	}
	return b.String(), nil
}

// Resolve returns the final URL: environment references expanded, Params
// merged in and Require added as require=.
func (c Config) Resolve() (string, error) {
	if c.URL == "" {
		return "", fmt.Errorf("config: url is empty: %w", pubsub.ErrInvalid)
	}
	raw, err := expand("url", c.URL, true)
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
		v, err := expand("params."+k, c.Params[k], false)
		if err != nil {
			return "", err
		}
		q.Set(k, v)
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
