package driver

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// TLSConfig builds the client tls.Config of an adapter's tls_ca, tls_cert,
// tls_key and tls_server_name URL parameters: TLS 1.2 or later, the PEM CA
// bundle in caFile as roots (system roots when empty), the client key pair
// in certFile and keyFile (both or neither) and serverName to verify (the
// dialed host when empty). A bad file is an error wrapping ErrInvalid that
// names the parameter, prefixed with the adapter's name.
func TLSConfig(adapter, caFile, certFile, keyFile, serverName string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("%s: tls_ca=%q: %v: %w", adapter, caFile, err, ErrInvalid)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: tls_ca=%q: no PEM certificate in the file: %w", adapter, caFile, ErrInvalid)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, fmt.Errorf("%s: tls_cert=%q tls_key=%q: give both or neither: %w", adapter, certFile, keyFile, ErrInvalid)
	}
	if certFile != "" {
		kp, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, fmt.Errorf("%s: tls_cert=%q tls_key=%q: %v: %w", adapter, certFile, keyFile, err, ErrInvalid)
		}
		cfg.Certificates = []tls.Certificate{kp}
	}
	return cfg, nil
}
