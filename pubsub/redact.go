package pubsub

import (
	"errors"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// redacted replaces every password Redact hides.
const redacted = "xxxxx"

// Redact returns rawURL with every password hidden: the password of the user
// info and the value of every query parameter whose name looks like a secret
// (it contains pas, pw, secr, token, cred, auth, apikey, api_key, access_key,
// sig or priv, in any case, so that a misspelling such as sasl_pasword is
// hidden too). Every URL that omnibus prints goes through it.
//
// Redact works on the text, not on a parsed URL, so that it also hides the
// password of a URL that does not parse (a password holding an unescaped
// '#', '?' or '/', a trailing carriage return from a CRLF file). When a URL
// is ambiguous it hides more: everything between "://" and the last '@' but
// the user name is treated as the password.
func Redact(rawURL string) string { return redact(rawURL, nil) }

// RedactFor is Redact that also hides the values of the query parameters
// err names as unknown (a driver.ParamsError): an unknown name may be a
// misspelled secret.
func RedactFor(rawURL string, err error) string { return redact(rawURL, unknownParams(err)) }

func unknownParams(err error) map[string]bool {
	var pe *driver.ParamsError
	if !errors.As(err, &pe) {
		return nil
	}
	m := make(map[string]bool, len(pe.Unknown))
	for _, n := range pe.Unknown {
		m[n] = true
	}
	return m
}

func redact(rawURL string, hide map[string]bool) string {
	head, rest := splitScheme(rawURL)
	var b strings.Builder
	b.Grow(len(rawURL))
	b.WriteString(head)
	parts := splitURL(rest)
	for _, part := range parts {
		if part.password {
			b.WriteString(redacted)
			continue
		}
		if !part.query {
			b.WriteString(part.text)
			continue
		}
		for k, pr := range splitPairs(part.text) {
			if k > 0 {
				b.WriteByte(pr.sep)
			}
			if k == 0 && part.continued && pr.text != "" {
				b.WriteString(redacted)
				continue
			}
			if name, _, hasValue := strings.Cut(pr.text, "="); hasValue && secretPair(pr.text, hide) {
				b.WriteString(name + "=" + redacted)
				continue
			}
			b.WriteString(pr.text)
		}
	}
	return b.String()
}

// urlPart is a piece of what follows "://": plain text, the password, or
// query text (name=value pairs).
type urlPart struct {
	text            string
	password, query bool
	// continued: query text whose first pair began before the '@' (it
	// may be the rest of a value): that pair is hidden whole.
	continued bool
}

// splitURL cuts rest (what follows "://") into its user name, password (up
// to the last '@'), and the rest, marking what is query text: what follows
// the first '?' — also when that '?' stands in the user info, which then
// makes all that follows the '@' query text too.
func splitURL(rest string) []urlPart {
	q0 := strings.IndexByte(rest, '?')
	user, pw, host, ok := splitUserinfo(rest)
	if !ok {
		return queryParts(rest)
	}
	at := len(user) + 1 + len(pw)
	parts := append(queryParts(user), urlPart{text: ":"}, urlPart{text: pw, password: true}, urlPart{text: "@"})
	if q0 >= 0 && q0 < at {
		return append(parts, urlPart{text: host, query: true, continued: true})
	}
	return append(parts, queryParts(host)...)
}

// queryParts splits s at its first '?' into plain text and query text.
func queryParts(s string) []urlPart {
	q := strings.IndexByte(s, '?')
	if q < 0 {
		return []urlPart{{text: s}}
	}
	return []urlPart{{text: s[:q+1]}, {text: s[q+1:], query: true}}
}

// splitScheme splits "scheme://rest" after "://"; without a scheme (letters,
// digits, '+', '-', '.'; a letter first) before "://", head is "".
func splitScheme(raw string) (head, rest string) {
	i := strings.Index(raw, "://")
	if i <= 0 {
		return "", raw
	}
	for j, c := range raw[:i] {
		letter := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
		if !letter && (j == 0 || !(c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return "", raw
		}
	}
	return raw[:i+3], raw[i+3:]
}

// splitUserinfo splits rest (what follows "://") at its last '@' into the
// user name, the password (raw, as written) and what follows the '@'. ok is
// false when there is no password: no '@', or no ':' before it.
func splitUserinfo(rest string) (user, password, host string, ok bool) {
	at := strings.LastIndexByte(rest, '@')
	if at < 0 {
		return "", "", rest, false
	}
	c := strings.IndexByte(rest[:at], ':')
	if c < 0 {
		return "", "", rest, false
	}
	return rest[:c], rest[c+1 : at], rest[at+1:], true
}

// pair is one name=value of query text: pairs are separated by '&' and ';'.
type pair struct {
	text string
	sep  byte // the separator before text (unused for the first)
}

func splitPairs(query string) []pair {
	var out []pair
	sep := byte('&')
	for {
		i := strings.IndexAny(query, "&;")
		if i < 0 {
			return append(out, pair{text: query, sep: sep})
		}
		out = append(out, pair{text: query[:i], sep: sep})
		sep = query[i]
		query = query[i+1:]
	}
}

var secretWords = []string{"pas", "pw", "secr", "token", "cred", "auth", "apikey", "api_key", "access_key", "sig", "priv"}

// secretPair reports whether the value of a name=value pair is to be
// hidden: its name, or a name after a '?' inside it (a URL written
// carelessly), looks like a secret or is one of hide.
func secretPair(text string, hide map[string]bool) bool {
	for _, piece := range strings.Split(text, "?") {
		if name, _, ok := strings.Cut(piece, "="); ok && (secretName(name) || hide[unescapeName(name)]) {
			return true
		}
	}
	return false
}

func unescapeName(name string) string {
	if u, err := url.QueryUnescape(name); err == nil {
		return u
	}
	return name
}

// secretName reports whether a query parameter name looks like it holds a
// secret, misspellings included.
func secretName(name string) bool {
	name = strings.ToLower(unescapeName(name))
	for _, w := range secretWords {
		if strings.Contains(name, w) {
			return true
		}
	}
	return false
}

// secrets returns every form in which a secret of rawURL may appear in an
// error text: as written, unescaped, escaped again and Go-quoted; longest
// first so that replacing them in order leaves no part behind.
func secrets(rawURL string, hide map[string]bool) []string {
	var raw []string
	_, rest := splitScheme(rawURL)
	// Both readings of an ambiguous URL: with its user info up to the last
	// '@', and as plain text and query (an '@' inside a parameter's value).
	for _, part := range append(splitURL(rest), queryParts(rest)...) {
		switch {
		case part.password:
			raw = append(raw, part.text)
			// A parser cuts a password with unescaped delimiters into
			// pieces that an error may quote one by one.
			for _, piece := range strings.FieldsFunc(part.text, func(r rune) bool { return strings.ContainsRune(":?#/@&;=", r) }) {
				if len(piece) >= 4 {
					raw = append(raw, piece)
				}
			}
		case part.query:
			for k, p := range splitPairs(part.text) {
				if k == 0 && part.continued {
					raw = append(raw, p.text)
					continue
				}
				if _, v, ok := strings.Cut(p.text, "="); ok && secretPair(p.text, hide) {
					raw = append(raw, v)
				}
			}
		}
	}
	// And the reading of a URL parser, whose user info ends at the first
	// '@' before the first '/', '?' or '#' (a later '@' may sit in the
	// fragment) and whose query ends at the first '#': the adapter saw
	// that password and those values.
	if u, err := url.Parse(rawURL); err == nil {
		if u.User != nil {
			if pw, ok := u.User.Password(); ok {
				raw = append(raw, pw)
			}
		}
		for name, values := range u.Query() {
			if secretName(name) || hide[name] {
				raw = append(raw, values...)
			}
		}
	}
	seen := map[string]bool{}
	var out []string
	add := func(s string) {
		if len(s) >= 2 && !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	for _, s := range raw {
		forms := []string{s}
		if u, err := url.PathUnescape(s); err == nil {
			forms = append(forms, u)
		}
		if u, err := url.QueryUnescape(s); err == nil {
			forms = append(forms, u)
		}
		for _, f := range forms {
			q := strconv.Quote(f)
			add(f)
			add(q[1 : len(q)-1])
			add(url.QueryEscape(f))
			add(url.PathEscape(f))
			add(url.UserPassword("u", f).String()[2:])
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// urlForms returns rawURL and the forms url.Parse and pubsub.Open write it
// in again, longest first.
func urlForms(rawURL string) []string {
	forms := []string{rawURL}
	if u, err := url.Parse(rawURL); err == nil {
		forms = append(forms, u.String())
		if q, err := url.ParseQuery(u.RawQuery); err == nil {
			q.Del("require")
			u.RawQuery = q.Encode()
			forms = append(forms, u.String())
		}
	}
	out := forms[:0]
	for _, f := range forms {
		if len(f) >= 2 {
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out
}

// redactedError is an error whose text has the URL's secrets removed; errors.Is
// and errors.As still see the error it was made from.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// RedactError returns err with every secret of rawURL (see RedactFor) removed
// from its text, in any form the secret may have been quoted or escaped in;
// errors.Is and errors.As still see err. It returns err itself when its text
// holds no secret, and nil for nil.
func RedactError(err error, rawURL string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	clean := msg
	// First the whole URL, as written and as a URL parser writes it again
	// (an adapter may quote the URL it was given): a password cut in two by
	// that re-encoding would otherwise leave its pieces.
	shownURL := RedactFor(rawURL, err)
	for _, full := range urlForms(rawURL) {
		q := strconv.Quote(full)
		clean = strings.ReplaceAll(clean, q[1:len(q)-1], shownURL)
		clean = strings.ReplaceAll(clean, full, shownURL)
	}
	// Keep the user name of an already redacted "user:xxxxx@" readable when
	// the password is (a part of) it: user names are shown by design.
	const keep = "\x00omnibus-user\x00"
	_, rest := splitScheme(rawURL)
	user, _, _, hasUser := splitUserinfo(rest)
	shown := user + ":" + redacted + "@"
	secrets := secrets(rawURL, unknownParams(err))
	protect := hasUser && user != ""
	for _, s := range secrets {
		protect = protect && !strings.Contains(keep, s) // scrubbing must not touch the placeholder
	}
	if protect {
		clean = strings.ReplaceAll(clean, shown, keep)
	}
	for _, s := range secrets {
		clean = strings.ReplaceAll(clean, s, redacted)
	}
	if protect {
		clean = strings.ReplaceAll(clean, keep, shown)
	}
	if clean == msg {
		return err
	}
	return &redactedError{msg: clean, err: err}
}

var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// parseProblem describes why url.Parse rejected a URL without quoting any
// part of it (url.Parse's errors quote the part they stumbled on, which may
// be a piece of the password).
func parseProblem(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	s := strings.Join(strings.Fields(quoted.ReplaceAllString(err.Error(), "")), " ")
	switch {
	case strings.Contains(s, "invalid port"):
		s += " (a password holding '#', '?' or '/' must be percent-encoded)"
	case strings.Contains(s, "control character"):
		s += " (a trailing carriage return from a CRLF file?)"
	}
	return s
}
