// Package routertest helps test handlers and middleware with a real router:
// run it in the background for the length of a test and stop it cleanly.
package routertest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// StopTimeout bounds how long Start's stop function waits for Run to return
// before it fails the test.
var StopTimeout = 30 * time.Second

// Start runs r in the background, waits until its subscriptions are open
// (so messages published next are seen), and returns a function that stops
// it and returns Run's error. The function is idempotent and also runs when
// the test ends.
func Start(t testing.TB, r *router.Router) (stop func() error) {
	t.Helper()
	stop, errc := run(t, r)
	select {
	case <-r.Running():
	case err := <-errc:
		errc <- err
		t.Fatalf("routertest: router stopped before it was running: %v", err)
	case <-time.After(StopTimeout):
		t.Fatal("routertest: router did not start")
	}
	return stop
}

// Run is Start without the wait: for tests of a router that may fail to
// start, or that publish before it subscribes.
func Run(t testing.TB, r *router.Router) (stop func() error) {
	t.Helper()
	stop, _ = run(t, r)
	return stop
}

func run(t testing.TB, r *router.Router) (stop func() error, errc chan error) {
	ctx, cancel := context.WithCancel(context.Background())
	errc = make(chan error, 1)
	go func() { errc <- r.Run(ctx) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-errc:
			case <-time.After(StopTimeout):
				err = errors.New("routertest: Run did not return after its context was cancelled")
				t.Error(err)
			}
		})
		return err
	}
	t.Cleanup(func() { _ = stop() })
	return stop, errc
}

// Publish publishes msgs or fails the test.
func Publish(t testing.TB, c *pubsub.Client, topic string, msgs ...*pubsub.Message) {
	t.Helper()
	if err := c.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatalf("routertest: publish to %q: %v", topic, err)
	}
}
