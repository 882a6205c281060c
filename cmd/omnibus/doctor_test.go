package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/integration"
)

func TestDoctorPrintsCapabilitiesOnEveryBroker(t *testing.T) {
	brokers := []struct {
		name  string
		url   func(t *testing.T) string
		names string // the topic name rule doctor prints
	}{
		{"mem", func(*testing.T) string { return "mem://doctor-test" }, "any name"},
		{"kafka", func(t *testing.T) string { return "kafka://" + integration.Kafka(t) + "?auto_create=true" }, "at most 249 bytes"},
		{"rabbitmq", func(t *testing.T) string { return integration.AMQP(t) }, "at most 255 bytes"},
		{"postgres", func(t *testing.T) string { return integration.Postgres(t) }, "at most 1024 bytes"},
		{"nsq", func(t *testing.T) string { return integration.NSQ(t) }, "at most 64 bytes"},
		{"activemq", func(t *testing.T) string { return integration.ActiveMQ(t) }, "group names"},
		{"activemq-classic", func(t *testing.T) string { return integration.ActiveMQClassic(t) }, "group names"},
	}
	for _, b := range brokers {
		t.Run(b.name, func(t *testing.T) {
			url := b.url(t)
			var err error
			out := captureStdout(t, func() { err = (&DoctorCmd{URL: url}).Run(context.Background()) })
			if err != nil {
				t.Fatalf("doctor %s: %v\n%s", b.name, err, out)
			}
			for _, want := range []string{"connect: ok", "ordering", "persistence", "nackdelay", "replay", "groups", "max message size", "topic names", "group names", b.names, "round trip", "no problems found"} {
				if !strings.Contains(out, want) {
					t.Errorf("doctor output lacks %q:\n%s", want, out)
				}
			}
			if strings.Contains(out, "guest:guest") {
				t.Errorf("doctor printed a password:\n%s", out)
			}
		})
	}
}

func TestDoctorReportsAnUnreachableBroker(t *testing.T) {
	var err error
	out := captureStdout(t, func() { err = (&DoctorCmd{URL: "mem://x?no_such_param=1"}).Run(context.Background()) })
	if err == nil || !strings.Contains(out, "no_such_param") {
		t.Fatalf("doctor on a bad URL: err=%v\n%s", err, out)
	}
}

func TestBenchWritesTableAndCharts(t *testing.T) {
	dir := t.TempDir()
	var err error
	out := captureStdout(t, func() {
		err = (&BenchCmd{URL: "mem://bench-test", Messages: 2000, Size: 64, Batch: 50, Publishers: 2, Compare: true, Out: dir}).Run(context.Background())
	})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "| omnibus |") || !strings.Contains(out, "omnibus / driver") {
		t.Errorf("bench table missing rows:\n%s", out)
	}
	for _, f := range []string{"bench.md", "bench.svg", "bench.png"} {
		st, err := os.Stat(filepath.Join(dir, f))
		if err != nil || st.Size() < 100 {
			t.Errorf("%s not written (%v)", f, err)
		}
	}
	png, _ := os.ReadFile(filepath.Join(dir, "bench.png"))
	if len(png) < 8 || string(png[1:4]) != "PNG" {
		t.Errorf("bench.png is not a PNG")
	}
}
