// Command kafkacluster answers questions about the test Kafka cluster of
// scripts/brokers.d/kafka-cluster.sh, for the harness and its ctl script:
//
//	kafkacluster ready  -brokers B -want 3 -timeout 60s   every seed answers a metadata request listing 3 brokers and a controller
//	kafkacluster leader -brokers B TOPIC PARTITION         print the node ID leading TOPIC's PARTITION
//	kafkacluster isr    -brokers B -want 3 -timeout 60s TOPIC   wait until every partition of TOPIC has 3 in-sync replicas
//
// It exits 0 on success, 1 (with the last error on stderr) when the
// timeout passes first, 2 on bad usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/twmb/franz-go/pkg/kadm"
	"github.com/twmb/franz-go/pkg/kgo"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	cmd := os.Args[1]
	fs := flag.NewFlagSet(cmd, flag.ExitOnError)
	brokers := fs.String("brokers", "127.0.0.1:21092,127.0.0.1:21192,127.0.0.1:21292", "comma-separated seed brokers")
	want := fs.Int("want", 3, "brokers (ready) or in-sync replicas (isr) to wait for")
	timeout := fs.Duration("timeout", 60*time.Second, "give up after this long")
	_ = fs.Parse(os.Args[2:])
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	seeds := strings.Split(*brokers, ",")
	var err error
	switch cmd {
	case "ready":
		err = ready(ctx, seeds, *want)
	case "leader":
		if fs.NArg() != 2 {
			usage()
		}
		p, perr := strconv.Atoi(fs.Arg(1))
		if perr != nil {
			usage()
		}
		err = leader(ctx, seeds, fs.Arg(0), int32(p))
	case "isr":
		if fs.NArg() != 1 {
			usage()
		}
		err = isr(ctx, seeds, fs.Arg(0), *want)
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "kafkacluster %s: %v\n", cmd, err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kafkacluster ready|leader|isr [-brokers B] [-want N] [-timeout D] [TOPIC [PARTITION]]")
	os.Exit(2)
}

func admin(seeds ...string) (*kadm.Client, func(), error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(seeds...), kgo.DialTimeout(2*time.Second), kgo.RequestRetries(0))
	if err != nil {
		return nil, nil, err
	}
	return kadm.NewClient(cl), cl.Close, nil
}

// poll calls f every 200ms until it returns nil or ctx ends.
func poll(ctx context.Context, f func(context.Context) error) error {
	for {
		rctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := f(rctx)
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func ready(ctx context.Context, seeds []string, want int) error {
	for _, s := range seeds {
		err := poll(ctx, func(ctx context.Context) error {
			adm, done, err := admin(s)
			if err != nil {
				return err
			}
			defer done()
			md, err := adm.BrokerMetadata(ctx)
			if err != nil {
				return err
			}
			if len(md.Brokers) < want || md.Controller < 0 {
				return fmt.Errorf("%s lists %d broker(s) and controller %d, want %d and one", s, len(md.Brokers), md.Controller, want)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// pollTopic calls check with topic's metadata every 200ms until it
// returns nil or ctx ends.
func pollTopic(ctx context.Context, seeds []string, topic string, check func(kadm.TopicDetail) error) error {
	return poll(ctx, func(ctx context.Context) error {
		adm, done, err := admin(seeds...)
		if err != nil {
			return err
		}
		defer done()
		td, err := adm.ListTopics(ctx, topic)
		if err != nil {
			return err
		}
		if d := td[topic]; d.Err != nil {
			return d.Err
		}
		return check(td[topic])
	})
}

func leader(ctx context.Context, seeds []string, topic string, p int32) error {
	return pollTopic(ctx, seeds, topic, func(d kadm.TopicDetail) error {
		pd, ok := d.Partitions[p]
		if !ok || pd.Leader < 0 {
			return errors.New("no leader yet")
		}
		fmt.Println(pd.Leader)
		return nil
	})
}

func isr(ctx context.Context, seeds []string, topic string, want int) error {
	return pollTopic(ctx, seeds, topic, func(d kadm.TopicDetail) error {
		for _, pd := range d.Partitions {
			if len(pd.ISR) < want {
				return fmt.Errorf("partition %d has ISR %v, want %d members", pd.Partition, pd.ISR, want)
			}
		}
		return nil
	})
}
