package activemq

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
)

// Other clients' management calls each own a temporary reply address that
// exists only for the call. A listing must neither show them nor fail
// when one vanishes between being listed and being counted.
func TestInspectorSkipsTemporaryAndVanishingAddresses(t *testing.T) {
	url := integration.ActiveMQ(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	open := func() *Broker {
		d, err := openURL(ctx, url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = d.Close() })
		return d.(*Broker)
	}
	lister, other := open(), open()

	// A reply address that stays for the whole test: never listed.
	held, err := other.openMgmt(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.close()

	// Reply addresses that come and go while the listings run.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if m, err := other.openMgmt(ctx); err == nil {
				_, _ = m.call(ctx, "broker", "getAddressNames")
				m.close()
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	for i := 0; i < 10; i++ {
		topics, err := lister.Topics(ctx)
		if err != nil {
			t.Fatalf("listing %d: Topics: %v", i, err)
		}
		for _, ti := range topics {
			if ti.Name == held.addr {
				t.Fatalf("listing %d: Topics lists the temporary reply address %s of another client", i, held.addr)
			}
		}
		groups, err := lister.Groups(ctx, "", nil)
		if err != nil {
			t.Fatalf("listing %d: Groups: %v", i, err)
		}
		for _, g := range groups {
			if g.Topic == held.addr {
				t.Fatalf("listing %d: Groups lists the temporary reply address %s of another client", i, held.addr)
			}
		}
	}
}
