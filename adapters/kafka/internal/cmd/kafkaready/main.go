// Command kafkaready waits until a Kafka cluster answers a metadata request
// with at least one broker and a controller, the readiness check of
// scripts/brokers.d/kafka.sh (an open port alone is not ready). Besides the
// plaintext listener it can check a SASL listener (once per mechanism), a
// TLS listener, and a SASL-over-TLS listener (once per mechanism, trusting
// -tls-ca, without a client certificate), so a broker whose security
// listeners are misconfigured is not reported ready. It uses franz-go with
// the adapter's own TLS and SASL set-up.
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
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/sasl"

	"github.com/omnibusmq/omnibus/adapters/kafka"
)

// target is one listener to probe, described for error messages.
type target struct {
	desc    string
	brokers string
	tls     *tls.Config
	sasl    sasl.Mechanism
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

	mechs := func() []sasl.Mechanism {
		var ms []sasl.Mechanism
		for _, name := range strings.Split(*saslMechs, ",") {
			m, err := kafka.SASLMechanism(name, *saslUser, os.Getenv("KAFKAREADY_SASL_PASSWORD"))
			if err != nil {
				fatal(err)
			}
			ms = append(ms, m)
		}
		return ms
	}
	tlsConfig := func(f kafka.TLSFiles) *tls.Config {
		cfg, err := f.Config()
		if err != nil {
			fatal(err)
		}
		return cfg
	}
	targets := []target{{desc: "plaintext " + *brokers, brokers: *brokers}}
	if *saslBrokers != "" {
		for _, m := range mechs() {
			targets = append(targets, target{fmt.Sprintf("sasl %s as %q on %s", m.Name(), *saslUser, *saslBrokers), *saslBrokers, nil, m})
		}
	}
	if *tlsBrokers != "" {
		cfg := tlsConfig(kafka.TLSFiles{CAFile: *tlsCA, CertFile: *tlsCert, KeyFile: *tlsKey})
		targets = append(targets, target{"tls " + *tlsBrokers, *tlsBrokers, cfg, nil})
	}
	if *saslSSLBrokers != "" {
		cfg := tlsConfig(kafka.TLSFiles{CAFile: *tlsCA})
		for _, m := range mechs() {
			targets = append(targets, target{fmt.Sprintf("sasl_ssl %s as %q on %s", m.Name(), *saslUser, *saslSSLBrokers), *saslSSLBrokers, cfg, m})
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	for _, tg := range targets {
		if err := awaitReady(ctx, tg); err != nil {
			fmt.Fprintf(os.Stderr, "kafkaready: %s not ready after %v: %v\n", tg.desc, *timeout, err)
			os.Exit(1)
		}
	}
}

func fatal(err error) {
	fmt.Fprintf(os.Stderr, "kafkaready: %v\n", err)
	os.Exit(2)
}

func awaitReady(ctx context.Context, tg target) error {
	var last error
	for {
		err := probe(ctx, tg)
		if err == nil {
			return nil
		}
		if last == nil || ctx.Err() == nil {
			last = err // keep the broker's answer over the deadline's
		}
		select {
		case <-ctx.Done():
			return last
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// probe asks tg for metadata once, on a fresh client.
func probe(ctx context.Context, tg target) error {
	opts := []kgo.Opt{kgo.SeedBrokers(strings.Split(tg.brokers, ",")...), kgo.DialTimeout(2 * time.Second), kgo.RequestRetries(0)}
	if tg.tls != nil {
		opts = append(opts, kgo.DialTLSConfig(tg.tls))
	}
	if tg.sasl != nil {
		opts = append(opts, kgo.SASL(tg.sasl))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return err
	}
	defer cl.Close()
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	md, err := kadm.NewClient(cl).BrokerMetadata(pctx)
	if err != nil {
		return err
	}
	if len(md.Brokers) == 0 {
		return errors.New("metadata lists no brokers")
	}
	if md.Controller < 0 {
		return errors.New("metadata names no controller")
	}
	return nil
}
