// Command kafkaready waits until a Kafka cluster answers a metadata request
// with at least one broker and a controller, the readiness check of
// scripts/brokers.d/kafka.sh (an open port alone is not ready).
//
//	kafkaready -brokers 127.0.0.1:19092 -timeout 60s
//
// It exits 0 when ready and 1 (with the last error on stderr) when the
// timeout passes first.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

func main() {
	brokers := flag.String("brokers", "127.0.0.1:19092", "comma-separated bootstrap brokers")
	timeout := flag.Duration("timeout", 60*time.Second, "give up after this long")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := wait(ctx, strings.Split(*brokers, ",")); err != nil {
		fmt.Fprintf(os.Stderr, "kafkaready: %s not ready after %v: %v\n", *brokers, *timeout, err)
		os.Exit(1)
	}
}

func wait(ctx context.Context, addrs []string) error {
	client := &kafka.Client{Addr: kafka.TCP(addrs...), Timeout: 2 * time.Second}
	var last error
	for {
		last = probe(ctx, client)
		if last == nil {
			return nil
		}
		t := time.NewTimer(200 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return last
		case <-t.C:
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
