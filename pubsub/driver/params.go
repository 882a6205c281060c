package driver

import (
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Params reads URL query parameters for an adapter and reports any it did not
// read, so that a typo such as ?acks=al or ?partitons=3 is an error naming the
// parameter instead of being silently ignored.
//
// Call the getters for every parameter the adapter knows, then Err.
type Params struct {
	scheme string
	q      url.Values
	used   map[string]bool
	errs   []string
}

// NewParams returns a reader over q for the adapter of scheme (used in errors).
func NewParams(scheme string, q url.Values) *Params {
	return &Params{scheme: scheme, q: q, used: map[string]bool{}}
}

// String returns the parameter's value, or def when it is absent.
func (p *Params) String(name, def string) string {
	p.used[name] = true
	if v, ok := p.q[name]; ok && len(v) > 0 {
		return v[len(v)-1]
	}
	return def
}

// Has reports whether the parameter is present.
func (p *Params) Has(name string) bool {
	_, ok := p.q[name]
	return ok
}

// Int returns the parameter as an int within [min, max], or def when absent.
func (p *Params) Int(name string, def, min, max int) int {
	s := p.String(name, "")
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < min || n > max {
		p.errs = append(p.errs, fmt.Sprintf("%s=%q: want an integer in [%d, %d]", name, s, min, max))
		return def
	}
	return n
}

// Bool returns the parameter as a bool (true/false/1/0), or def when absent.
func (p *Params) Bool(name string, def bool) bool {
	s := p.String(name, "")
	if s == "" {
		return def
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		p.errs = append(p.errs, fmt.Sprintf("%s=%q: want true or false", name, s))
		return def
	}
	return b
}

// Duration returns the parameter as a time.Duration ("250ms", "2s"), or def.
func (p *Params) Duration(name string, def time.Duration) time.Duration {
	s := p.String(name, "")
	if s == "" {
		return def
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		p.errs = append(p.errs, fmt.Sprintf("%s=%q: want a non-negative duration such as 250ms or 2s", name, s))
		return def
	}
	return d
}

// Enum returns the parameter when it is one of allowed, or def when absent.
func (p *Params) Enum(name, def string, allowed ...string) string {
	s := p.String(name, "")
	if s == "" {
		return def
	}
	for _, a := range allowed {
		if s == a {
			return s
		}
	}
	p.errs = append(p.errs, fmt.Sprintf("%s=%q: want one of %s", name, s, strings.Join(allowed, ", ")))
	return def
}

// Err returns an error wrapping ErrInvalid that names every bad value and
// every parameter that no getter asked for, or nil.
func (p *Params) Err() error {
	var unknown []string
	for k := range p.q {
		if !p.used[k] {
			unknown = append(unknown, k)
		}
	}
	sort.Strings(unknown)
	errs := append([]string(nil), p.errs...)
	if len(unknown) > 0 {
		known := make([]string, 0, len(p.used))
		for k := range p.used {
			known = append(known, k)
		}
		sort.Strings(known)
		errs = append(errs, fmt.Sprintf("unknown parameter(s) %s (known: %s)", strings.Join(unknown, ", "), strings.Join(known, ", ")))
	}
	if len(errs) == 0 {
		return nil
	}
	return &ParamsError{Unknown: unknown, msg: fmt.Sprintf("%s: bad URL: %s", p.scheme, strings.Join(errs, "; "))}
}

// DurationOption is one duration field of an adapter's Options, for
// DefaultDurations.
type DurationOption struct {
	Name    string         // the field's name, for errors
	Value   *time.Duration // the field
	Default time.Duration  // what zero means
}

// DefaultDurations sets every zero duration to its default and rejects a
// negative one with an error wrapping ErrInvalid that names the field,
// prefixed with the adapter's name.
func DefaultDurations(adapter string, opts ...DurationOption) error {
	for _, o := range opts {
		if *o.Value < 0 {
			return fmt.Errorf("%s: %s %v: want a positive duration (0 for the default %v): %w", adapter, o.Name, *o.Value, o.Default, ErrInvalid)
		}
		if *o.Value == 0 {
			*o.Value = o.Default
		}
	}
	return nil
}

// ParamsError is the error of Params.Err; it wraps ErrInvalid. Unknown
// names the parameters no getter asked for: their values may be secrets
// under a misspelled name, so whoever prints the URL hides them
// (pubsub.Open does).
type ParamsError struct {
	Unknown []string
	msg     string
}

func (e *ParamsError) Error() string { return e.msg + ": " + ErrInvalid.Error() }
func (e *ParamsError) Unwrap() error { return ErrInvalid }

// ParseURL parses an adapter's URL and applies CheckURL. shown is the URL as
// errors may print it (redacted by the caller): a parse error names the
// adapter and shown, never url.Parse's text, which quotes raw parts of the
// URL.
func ParseURL(adapter, raw, shown string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: bad URL %s: %w", adapter, shown, ErrInvalid)
	}
	if err := CheckURL(adapter, raw, u); err != nil {
		return nil, err
	}
	return u, nil
}

// List reads a comma-separated parameter: its items trimmed of spaces,
// empty items dropped; nil when the parameter is absent or empty.
func (p *Params) List(name string) []string {
	var out []string
	for _, item := range strings.Split(p.String(name, ""), ",") {
		if item = strings.TrimSpace(item); item != "" {
			out = append(out, item)
		}
	}
	return out
}

// CheckURL rejects a URL u (parsed from raw) whose user info was cut short
// by an unescaped '/', '?' or '#' in the user name or password, which puts
// the rest of the password into the host, path or query where an error
// message would print it: an '@' in the query, or an '@' after the scheme
// with no user info parsed. Its error never quotes the URL. An '@' inside a
// parameter value must then be written %40.
func CheckURL(adapter, raw string, u *url.URL) error {
	_, rest, _ := strings.Cut(raw, "://")
	if strings.Contains(u.RawQuery, "@") || (u.User == nil && strings.Contains(rest, "@")) {
		return fmt.Errorf("%s: bad URL (not shown): an '@' outside the user info; percent-encode '/', '?' and '#' in the user name and password (%%2F, %%3F, %%23) and '@' in parameters (%%40): %w", adapter, ErrInvalid)
	}
	return nil
}
