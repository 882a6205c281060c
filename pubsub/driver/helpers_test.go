package driver

import (
	"errors"
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
