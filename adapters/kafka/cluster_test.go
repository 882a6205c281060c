package kafka_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

// The 3-node cluster of `scripts/brokers up kafka-cluster`.
const (
	envClusterBrokers = "OMNIBUS_KAFKA_CLUSTER_BROKERS"
	envClusterCtl     = "OMNIBUS_KAFKA_CLUSTER_CTL"
)

// cluster returns the cluster's brokers and its ctl script, or skips the
// test loudly (fails it under CI=true).
func cluster(t *testing.T) (brokers, ctl string) {
	t.Helper()
	brokers, ctl = os.Getenv(envClusterBrokers), os.Getenv(envClusterCtl)
	if brokers == "" || ctl == "" {
		msg := fmt.Sprintf("no 3-node Kafka cluster: set %s and %s, or run `eval \"$(scripts/brokers up kafka-cluster)\"` first", envClusterBrokers, envClusterCtl)
		if integration.InCI() {
			t.Fatalf("CI=true and %s", msg)
		}
		t.Skip("SKIPPED, " + msg)
	}
	return brokers, ctl
}

func runCtl(t *testing.T, ctl string, args ...string) string {
	t.Helper()
	out, err := exec.Command(ctl, args...).Output()
	if err != nil {
		var stderr string
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = string(ee.Stderr)
		}
		t.Fatalf("%s %s: %v %s", ctl, strings.Join(args, " "), err, stderr)
	}
	return strings.TrimSpace(string(out))
}

// TestLeaderChangeLosesNothingAndKeepsKeyOrder: 4 publishers and a group
// consumer run 100 000 keyed messages on the 3-node cluster (replication
// factor 3, min.insync.replicas=2); the leader of partition 0 is SIGKILLed
// after 20 000 acknowledged messages and started again after 60 000. Every
// Publish that returned nil is consumed, first deliveries keep per-key
// order, each record is in the log once (idempotent retries across the
// leader change), and no Publish outlasts write_timeout.
func TestLeaderChangeLosesNothingAndKeepsKeyOrder(t *testing.T) {
	if testing.Short() {
		t.Skip("kills a broker of the cluster; not in -short")
	}
	brokers, ctl := cluster(t)
	const (
		publishers   = 4
		perPublisher = 25_000
		batch        = 50
		keysPer      = 16
		writeTimeout = 20 * time.Second
	)
	ctx := context.Background()
	c, err := pubsub.Open(ctx, "kafka://"+brokers+"?write_timeout="+writeTimeout.String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := uniqueName(t, "leader")
	cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	if err := brokerOf(t, c).CreateTopic(cctx, topic, testPartitions, 3); err != nil {
		t.Fatal(err)
	}
	cancel()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = brokerOf(t, c).DeleteTopic(ctx, topic, nil)
	})

	// The consumer: one group member, one handler (the order of first
	// deliveries is recorded as they are received).
	sub, err := c.Subscribe(ctx, topic, pubsub.Group(uniqueName(t, "g")), pubsub.FromOldest())
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	allSeen := make(chan struct{})
	var cmu sync.Mutex
	firsts := map[string][]int{} // key → sequence numbers of first deliveries
	seen := map[string]bool{}
	deliveries := 0
	var consumers sync.WaitGroup
	for w := 0; w < 1; w++ {
		consumers.Add(1)
		go func() {
			defer consumers.Done()
			for {
				d, err := sub.Receive(ctx)
				if err != nil {
					return
				}
				seq, _ := strconv.Atoi(string(d.Message.Payload))
				cmu.Lock()
				deliveries++
				if !seen[d.Message.ID] {
					seen[d.Message.ID] = true
					firsts[d.Message.Key] = append(firsts[d.Message.Key], seq)
					if len(seen) == publishers*perPublisher {
						close(allSeen)
					}
				}
				cmu.Unlock()
				_ = d.Ack()
			}
		}()
	}

	// The publishers: disjoint keys, sequence numbers per key; a failed
	// call is counted and published again.
	var acked atomic.Int64
	at20k, at60k := make(chan struct{}), make(chan struct{})
	var pmu sync.Mutex
	var ackedIDs []string
	var publishErrs []string
	var longest time.Duration
	var lastAck atomic.Int64 // unix nanos of the latest successful Publish
	var maxGap atomic.Int64  // longest time between successful Publish calls after the kill
	var killedAt atomic.Int64
	var pubs sync.WaitGroup
	for p := 0; p < publishers; p++ {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			seq := map[string]int{}
			for i := 0; i < perPublisher; i += batch {
				msgs := make([]*pubsub.Message, batch)
				for j := range msgs {
					key := fmt.Sprintf("p%d-k%d", p, (i+j)%keysPer)
					msgs[j] = &pubsub.Message{Key: key, Payload: []byte(strconv.Itoa(seq[key]))}
					seq[key]++
				}
				for {
					start := time.Now()
					err := c.Publish(ctx, topic, msgs...)
					took := time.Since(start)
					pmu.Lock()
					longest = max(longest, took)
					if err != nil {
						publishErrs = append(publishErrs, err.Error())
						pmu.Unlock()
						if errors.Is(err, pubsub.ErrClosed) {
							return // the test ended early
						}
						continue
					}
					for _, m := range msgs {
						ackedIDs = append(ackedIDs, m.ID)
					}
					pmu.Unlock()
					now := time.Now().UnixNano()
					if k := killedAt.Load(); k != 0 {
						prev := max(lastAck.Swap(now), k)
						if gap := now - prev; gap > maxGap.Load() {
							maxGap.Store(gap)
						}
					} else {
						lastAck.Store(now)
					}
					switch n := acked.Add(batch); {
					case n-batch < 20_000 && n >= 20_000:
						close(at20k)
					case n-batch < 60_000 && n >= 60_000:
						close(at60k)
					}
					break
				}
			}
		}()
	}

	// Kill the leader of partition 0 after 20 000 acks, restart it after
	// 60 000.
	waitAcked := func(milestone chan struct{}, n int) {
		select {
		case <-milestone:
		case <-time.After(180 * time.Second):
			t.Fatalf("only %d messages acknowledged after 180 s, waiting for %d", acked.Load(), n)
		}
	}
	waitAcked(at20k, 20_000)
	leader := runCtl(t, ctl, "leader", topic, "0")
	runCtl(t, ctl, "kill", leader)
	killedAt.Store(time.Now().UnixNano())
	restarted := false
	t.Cleanup(func() {
		if !restarted {
			runCtl(t, ctl, "start", leader)
		}
	})
	t.Logf("SIGKILLed node %d, the leader of partition 0, after %d acknowledged messages", mustAtoi(t, leader), acked.Load())
	waitAcked(at60k, 60_000)
	t.Logf("starting node %s again after %d acknowledged messages", leader, acked.Load())
	startAt := time.Now()
	runCtl(t, ctl, "start", leader)
	restarted = true
	t.Logf("node %s back in the cluster after %v", leader, time.Since(startAt).Round(time.Millisecond))
	pubs.Wait()

	// Every acknowledged message is consumed.
	select {
	case <-allSeen:
	case <-time.After(120 * time.Second):
	}
	_ = sub.Close()
	consumers.Wait()

	cmu.Lock()
	defer cmu.Unlock()
	pmu.Lock()
	defer pmu.Unlock()
	lost := 0
	for _, id := range ackedIDs {
		if !seen[id] {
			lost++
		}
	}
	violations := 0
	for key, seqs := range firsts {
		for i := 1; i < len(seqs); i++ {
			if seqs[i] < seqs[i-1] {
				violations++
				if violations <= 5 {
					t.Errorf("key %s: first delivery of %d after %d", key, seqs[i], seqs[i-1])
				}
			}
		}
	}
	// Idempotence across the leader change: each record is in the log once.
	inLog := map[string]int{}
	for _, id := range readAll(t, brokers, topic) {
		inLog[id]++
	}
	logDups := 0
	for _, n := range inLog {
		logDups += n - 1
	}
	t.Logf("leader change: %d published (%d acknowledged), %d publish errors, %d lost, %d duplicate deliveries, %d records twice in the log, %d order violations, longest Publish %v, longest gap between acknowledgements after the kill %v",
		publishers*perPublisher, len(ackedIDs), len(publishErrs), lost, deliveries-len(seen), logDups, violations, longest.Round(time.Millisecond), time.Duration(maxGap.Load()).Round(time.Millisecond))
	if logDups > 0 {
		t.Errorf("%d records are in the log more than once: a retried produce was not idempotent", logDups)
	}
	for i, e := range publishErrs {
		if i == 5 {
			break
		}
		t.Logf("publish error: %s", e)
	}
	if lost > 0 {
		t.Errorf("%d acknowledged messages were never consumed", lost)
	}
	if longest > writeTimeout+2*time.Second {
		t.Errorf("a Publish took %v, past write_timeout %v", longest, writeTimeout)
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q is not a node ID", s)
	}
	return n
}
