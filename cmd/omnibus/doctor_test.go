package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestDoctorPrintsCapabilitiesOnEveryBroker(t *testing.T) {
	// The topic name rule doctor prints, per broker.
	names := map[string]string{
		"mem": "any name", "kafka": "at most 249 bytes", "rabbitmq": "at most 255 bytes", "postgres": "at most 1024 bytes",
		"nsq": "at most 64 bytes", "activemq": "group names", "activemq-classic": "group names",
	}
	for _, b := range everyBroker("mem://doctor-test") {
		t.Run(b.name, func(t *testing.T) {
			url := b.url(t)
			var err error
			out := captureStdout(t, func() { err = (&DoctorCmd{URL: url}).Run(context.Background()) })
			if err != nil {
				t.Fatalf("doctor %s: %v\n%s", b.name, err, out)
			}
			for _, want := range []string{"connect: ok", "ordering", "persistence", "nackdelay", "replay", "groups", "max message size", "topic names", "group names", names[b.name], "round trip", "no problems found"} {
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
