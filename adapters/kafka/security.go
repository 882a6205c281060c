package kafka

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"

	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// TLSFiles describes a TLS client configuration by PEM files, as the tls_*
// URL parameters do. The zero value is TLS with the system's CAs.
type TLSFiles struct {
	// CAFile is a PEM bundle of CAs to trust; empty means the system pool.
	CAFile string
	// CertFile and KeyFile are a PEM client certificate and its key, for
	// brokers that authenticate clients by certificate. Both or neither.
	CertFile, KeyFile string
	// ServerName is the name to verify; empty means the host dialled.
	ServerName string
	// InsecureSkipVerify turns off server certificate verification. Only
	// for tests.
	InsecureSkipVerify bool
}

// Config loads the files and returns the TLS configuration. Errors name the
// file and the parameter, never the key material.
func (f TLSFiles) Config() (*tls.Config, error) {
	cfg := &tls.Config{
		MinVersion:         tls.VersionTLS12,
		ServerName:         f.ServerName,
		InsecureSkipVerify: f.InsecureSkipVerify, //nolint:gosec // opt-in, documented as tests only
	}
	if f.CAFile != "" {
		pem, err := os.ReadFile(f.CAFile)
		if err != nil {
			return nil, fmt.Errorf("kafka: tls_ca=%q: %v: %w", f.CAFile, err, driver.ErrInvalid)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("kafka: tls_ca=%q: no PEM certificate in the file: %w", f.CAFile, driver.ErrInvalid)
		}
		cfg.RootCAs = pool
	}
	if (f.CertFile == "") != (f.KeyFile == "") {
		return nil, fmt.Errorf("kafka: tls_cert=%q and tls_key=%q: give both or neither: %w", f.CertFile, f.KeyFile, driver.ErrInvalid)
	}
	if f.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(f.CertFile, f.KeyFile)
		if err != nil {
			// The error of LoadX509KeyPair names files and PEM problems, not key bytes.
			return nil, fmt.Errorf("kafka: tls_cert=%q tls_key=%q: %v: %w", f.CertFile, f.KeyFile, err, driver.ErrInvalid)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// SASLMechanism returns franz-go's SASL mechanism for name: "plain",
// "scram-sha-256" or "scram-sha-512". The password never appears in its
// errors.
func SASLMechanism(name, user, password string) (sasl.Mechanism, error) {
	switch name {
	case "plain":
		return plain.Auth{User: user, Pass: password}.AsMechanism(), nil
	case "scram-sha-256":
		return scram.Auth{User: user, Pass: password}.AsSha256Mechanism(), nil
	case "scram-sha-512":
		return scram.Auth{User: user, Pass: password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("kafka: sasl=%q: want plain, scram-sha-256 or scram-sha-512: %w", name, driver.ErrInvalid)
}
