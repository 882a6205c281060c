// Command kafkaready waits until a Kafka cluster answers a metadata request
// with at least one broker and a controller, the readiness check of
// scripts/brokers.d/kafka.sh (an open port alone is not ready). Besides the
// plaintext listener it can check a SASL listener (once per mechanism), a
// TLS listener, and a SASL-over-TLS listener (once per mechanism, trusting
// -tls-ca, without a client certificate), so a broker whose security
// listeners are misconfigured is not reported ready.
//
//	kafkaready -brokers 127.0.0.1:19092 -timeout 60s \
//	  -sasl-brokers 127.0.0.1:19094 -sasl plain,scram-sha-256 -sasl-user omnibus \
//	  -tls-brokers 127.0.0.1:19095 -tls-ca ca.pem -tls-cert client-cert.pem -tls-key client-key.pem \
//	  -sasl-ssl-brokers 127.0.0.1:19096
//
// The SASL password is read from $KAFKAREADY_SASL_PASSWORD (not argv). It
// exits 0 when every listener is ready and 1 (with the last error on stderr)
// when the timeout passes first.
package main

import (
	"github.com/omnibusmq/omnibus/internal/wait"

	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/segmentio/kafka-go/sasl/scram"
)

// target is one listener to probe, described for error messages.
type target struct {
	desc   string
	client *kafka.Client
}

func main() {
	brokers := flag.String("brokers", "127.0.0.1:19092", "comma-separated bootstrap brokers (plaintext)")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long (for all listeners together)")
	saslBrokers := flag.String("sasl-brokers", "", "SASL_PLAINTEXT bootstrap brokers to check too")
	saslMechs := flag.String("sasl", "plain", "comma-separated SASL mechanisms to check: plain, scram-sha-256, scram-sha-512")
	saslUser := flag.String("sasl-user", "", "SASL user (password: $KAFKAREADY_SASL_PASSWORD)")
	tlsBrokers := flag.String("tls-brokers", "", "SSL bootstrap brokers to check too")
	tlsCA := flag.String("tls-ca", "", "PEM CA file for -tls-brokers")
	tlsCert := flag.String("tls-cert", "", "PEM client certificate for -tls-brokers")
	tlsKey := flag.String("tls-key", "", "PEM client key for -tls-brokers")
	saslSSLBrokers := flag.String("sasl-ssl-brokers", "", "SASL_SSL bootstrap brokers to check too (with -sasl, -sasl-user and -tls-ca; no client certificate)")
	flag.Parse()

	targets := []target{{"plaintext " + *brokers, newClient(*brokers, nil, nil)}}
	if *saslBrokers != "" {
		for _, name := range strings.Split(*saslMechs, ",") {
			m, err := mechanism(name, *saslUser, os.Getenv("KAFKAREADY_SASL_PASSWORD"))
			if err != nil {
				fatal(err)
			}
			targets = append(targets, target{fmt.Sprintf("sasl %s as %q on %s", name, *saslUser, *saslBrokers), newClient(*saslBrokers, nil, m)})
		}
	}
	if *tlsBrokers != "" {
		cfg, err := tlsConfig(*tlsCA, *tlsCert, *tlsKey)
		if err != nil {
			fatal(err)
		}
		targets = append(targets, target{"tls " + *tlsBrokers, newClient(*tlsBrokers, cfg, nil)})
	}
	if *saslSSLBrokers != "" {
		cfg, err := tlsConfig(*tlsCA, "", "")
		if err != nil {
			fatal(err)
		}
		for _, name := range strings.Split(*saslMechs, ",") {
			m, err := mechanism(name, *saslUser, os.Getenv("KAFKAREADY_SASL_PASSWORD"))
			if err != nil {
				fatal(err)
			}
			targets = append(targets, target{fmt.Sprintf("sasl_ssl %s as %q on %s", name, *saslUser, *saslSSLBrokers), newClient(*saslSSLBrokers, cfg, m)})
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	for _, tg := range targets {
		if err := awaitReady(ctx, tg.client); err != nil {
			fmt.Fprintf(os.Stderr, "kafkaready: %s not ready after %v: %v\n", tg.desc, *timeout, err)
			os.Exit(1)
		}
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "kafkaready: %v\n", err)
	os.Exit(2)
}

func newClient(brokers string, cfg *tls.Config, m sasl.Mechanism) *kafka.Client {
	return &kafka.Client{
		Addr:      kafka.TCP(strings.Split(brokers, ",")...),
		Timeout:   2 * time.Second,
		Transport: &kafka.Transport{DialTimeout: 2 * time.Second, TLS: cfg, SASL: m},
	}
}

func mechanism(name, user, password string) (sasl.Mechanism, error) {
	switch name {
	case "plain":
		return plain.Mechanism{Username: user, Password: password}, nil
	case "scram-sha-256":
		return scram.Mechanism(scram.SHA256, user, password)
	case "scram-sha-512":
		return scram.Mechanism(scram.SHA512, user, password)
	}
	return nil, fmt.Errorf("unknown SASL mechanism %q", name)
}

func tlsConfig(ca, cert, key string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if ca != "" {
		pem, err := os.ReadFile(ca)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate", ca)
		}
	}
	if cert != "" {
		c, err := tls.LoadX509KeyPair(cert, key)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{c}
	}
	return cfg, nil
}

func awaitReady(ctx context.Context, client *kafka.Client) error {
	var last error
	for {
		last = probe(ctx, client)
		if last == nil {
			return nil
		}
		if !wait.Sleep(ctx, 200*time.Millisecond) {
			return last
		}
	}
}

func probe(ctx context.Context, client *kafka.Client) error {
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	md, err := client.Metadata(pctx, &kafka.MetadataRequest{})
	if err != nil {
		return err
	}
	if len(md.Brokers) == 0 {
		return errors.New("metadata lists no brokers")
	}
	if md.Controller.Host == "" {
		return errors.New("metadata names no controller")
	}
	return nil
}
