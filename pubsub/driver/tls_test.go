package driver

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTLSFromFilesRejectsBadFilesNamingTheParameter(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name                 string
		ca, cert, key, wants string
	}{
		{"MissingCA", filepath.Join(dir, "none.pem"), "", "", "tls_ca"},
		{"CAWithoutPEM", notPEM, "", "", "no PEM certificate"},
		{"CertWithoutKey", "", filepath.Join(dir, "c.pem"), "", "give both or neither"},
		{"MissingKeyPair", "", filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem"), "tls_cert"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := TLSConfig("x", tc.ca, tc.cert, tc.key, "")
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.wants) || !strings.HasPrefix(err.Error(), "x: ") {
				t.Errorf("TLSFromFiles: %v, want ErrInvalid starting with the scheme and mentioning %q", err, tc.wants)
			}
		})
	}
}

func TestTLSFromFilesDefaultsToSystemRootsAndTLS12(t *testing.T) {
	cfg, err := TLSConfig("x", "", "", "", "broker.example")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.RootCAs != nil || cfg.ServerName != "broker.example" || cfg.MinVersion < 0x0303 {
		t.Errorf("config %+v: want system roots, the server name, TLS 1.2+", cfg)
	}
}
