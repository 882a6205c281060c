package driver

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// TLSFromFiles builds the client TLS configuration that adapters read from
// their tls_ca, tls_cert, tls_key and tls_server_name URL parameters:
// TLS 1.2 or later; caFile (PEM) as the only trusted roots, or the system
// roots when empty; certFile and keyFile (PEM) as the client certificate,
// both or neither; serverName as the name to verify, or the dialed host
// when empty. Errors wrap ErrInvalid and name the parameter (file names,
// never key material); scheme starts them.
func TLSFromFiles(scheme, caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s: tls_ca=%q: %v: %w", scheme, caFile, err, ErrInvalid)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: tls_ca=%q: no PEM certificate in the file: %w", scheme, caFile, ErrInvalid)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("%s: tls_cert=%q tls_key=%q: give both or neither: %w", scheme, certFile, keyFile, ErrInvalid)
	}
	if certFile != "" {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: tls_cert=%q tls_key=%q: %v: %w", scheme, certFile, keyFile, err, ErrInvalid)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}
