package driver

import (
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestTLSConfigBadFilesAreErrorsNamingTheParameter(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, ca, cert, key, mention string
	}{
		{"MissingCA", filepath.Join(dir, "missing.pem"), "", "", "tls_ca="},
		{"CAWithoutPEM", notPEM, "", "", "no PEM certificate"},
		{"CertWithoutKey", "", notPEM, "", "give both or neither"},
		{"BadKeyPair", "", notPEM, notPEM, "tls_cert="},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TLSConfig("x", tc.ca, tc.cert, tc.key, "")
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.mention) || !strings.HasPrefix(err.Error(), "x: ") {
				t.Errorf("TLSConfig = %v, want ErrInvalid from x naming %q", err, tc.mention)
			}
		})
	}
}

func TestTLSConfigDefaultsToSystemRootsAndTLS12(t *testing.T) {
	cfg, err := TLSConfig("x", "", "", "", "mq.internal")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs != nil || cfg.MinVersion < 0x0303 || cfg.ServerName != "mq.internal" || len(cfg.Certificates) != 0 {
		t.Errorf("config = %+v", cfg)
	}
}

func TestDefaultDurationsFillsZeroAndRejectsNegative(t *testing.T) {
	a, b := time.Duration(0), 5*time.Second
	if err := DefaultDurations("x", DurationOption{"A", &a, time.Second}, DurationOption{"B", &b, time.Minute}); err != nil {
		t.Fatal(err)
	}
	if a != time.Second || b != 5*time.Second {
		t.Errorf("a=%v b=%v, want 1s (default) and 5s (kept)", a, b)
	}
	neg := -time.Second
	err := DefaultDurations("x", DurationOption{"Neg", &neg, time.Second})
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "x: Neg -1s") {
		t.Errorf("negative duration: %v, want ErrInvalid naming x: Neg", err)
	}
}

// A password with an unescaped '?', '/' or '#' cuts the user info short and
// puts the rest of it into the query: CheckURL refuses such a URL without
// quoting any of it; well-formed URLs pass.
func TestCheckURLRefusesAUserInfoCutShort(t *testing.T) {
	tests := []struct {
		name, raw string
		wantErr   bool
	}{
		{"plain credentials", "amqp://guest:s3cr3t@127.0.0.1:5672/vh?prefetch=1", false},
		{"escaped reserved characters", "amqp://guest:%3Fs%2F3%23cr%40t@127.0.0.1:5672/vh", false},
		{"no credentials, escaped @ in a value", "amqp://127.0.0.1/?connection_name=a%40b", false},
		{"? in the password", "amqp://guest:?00000@127.0.0.1:5672/vh?00000", true},
		{"? and & in the password", "amqp://guest:?abc&def@127.0.0.1:5672/vh?prefetch=1", true},
		{"?name= in the password", "amqp://guest:?prefetch=hunter2@127.0.0.1:5672/", true},
		{"@ and ? in the password", "amqp://guest:p@zz?qwx@127.0.0.1:5672/", true},
		{"unescaped @ in a value", "amqp://127.0.0.1/?connection_name=a@b", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, err := url.Parse(tt.raw)
			if err != nil {
				t.Fatal(err)
			}
			err = CheckURL("test", tt.raw, u)
			if (err != nil) != tt.wantErr {
				t.Fatalf("CheckURL(%q) = %v, want error %v", tt.raw, err, tt.wantErr)
			}
			if err == nil {
				return
			}
			if !errors.Is(err, ErrInvalid) {
				t.Errorf("error %v does not wrap ErrInvalid", err)
			}
			for _, piece := range []string{"00000", "abc", "def", "hunter2", "zz", "qwx"} {
				if strings.Contains(tt.raw, piece) && strings.Contains(err.Error(), piece) {
					t.Errorf("error %q quotes %q from the URL", err, piece)
				}
			}
		})
	}
}

func TestParamsListTrimsAndDropsEmptyItems(t *testing.T) {
	tests := []struct {
		query string
		want  []string
	}{
		{"", nil},
		{"groups=", nil},
		{"groups=a", []string{"a"}},
		{"groups=+a+,,b,+", []string{"a", "b"}},
	}
	for _, tt := range tests {
		q, _ := url.ParseQuery(tt.query)
		p := NewParams("test", q)
		got := p.List("groups")
		if strings.Join(got, "|") != strings.Join(tt.want, "|") || (got == nil) != (tt.want == nil) {
			t.Errorf("List(%q) = %q, want %q", tt.query, got, tt.want)
		}
		if err := p.Err(); err != nil {
			t.Errorf("%q: %v", tt.query, err)
		}
	}
}
