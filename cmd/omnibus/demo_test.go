package main

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"
)

// The demo runs on every broker by URL alone, and its numbers add up also
// where consumers see the last messages before the publisher's last
// confirmation arrives (ActiveMQ Classic syncs its journal before it
// confirms).
func TestDemoRunsOnEveryBrokerByURL(t *testing.T) {
	for _, b := range everyBroker("mem://demo-test") {
		t.Run(b.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			d := &DemoCmd{URL: b.url(t), Orders: 1000, Topic: fmt.Sprintf("demo-test-%d", time.Now().UnixNano()), Nack: 50}
			var err error
			out := captureStdout(t, func() { err = runBasicDemo(ctx, stdout, d) })
			if err != nil {
				t.Fatalf("demo on %s: %v\n%s", b.name, err, out)
			}
			if want := "published 1000; delivered 2000 = published × 2 groups"; !strings.Contains(out, want) {
				t.Errorf("demo output lacks %q:\n%s", want, out)
			}
		})
	}
}
