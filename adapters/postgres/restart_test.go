//go:build unix

package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/postgres"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/internal/wait"
	"github.com/omnibusmq/omnibus/pubsub"
)

// cluster is a private PostgreSQL server for one test, so that crashing it
// disturbs nobody else: initdb into a temporary directory, loopback only, a
// free port below the ephemeral range.
type cluster struct {
	t    *testing.T
	bin  string
	data string
	port int
	as   []string // command prefix running as the postgres user
}

// privateCluster starts a cluster with the server binaries scripts/brokers
// installs. It runs them as the postgres user (initdb refuses root).
func privateCluster(t *testing.T) *cluster {
	t.Helper()
	integration.Postgres(t) // a broker test: skipped (or failed under CI) like the others
	unavailable := func(why string) {
		t.Helper()
		if integration.InCI() {
			t.Fatalf("CI=true and no private PostgreSQL cluster: %s", why)
		}
		t.Skipf("SKIPPED, no private PostgreSQL cluster: %s (run `scripts/brokers up postgres` as root to install the server)", why)
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		unavailable("no /usr/lib/postgresql/*/bin/initdb")
	}
	c := &cluster{t: t, bin: filepath.Dir(bins[len(bins)-1])}
	dir := t.TempDir()
	switch me, _ := user.Current(); {
	case me != nil && me.Username == "postgres":
	case os.Geteuid() == 0:
		c.as = []string{"runuser", "-u", "postgres", "--"}
		pg, err := user.Lookup("postgres")
		if err != nil {
			unavailable("no postgres user")
		}
		uid, _ := strconv.Atoi(pg.Uid)
		gid, _ := strconv.Atoi(pg.Gid)
		// The postgres user must reach the directory t.TempDir made 0700.
		for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.Chown(dir, uid, gid); err != nil {
			t.Fatal(err)
		}
	default:
		unavailable("initdb must run as root (through runuser) or as the postgres user")
	}
	c.data = filepath.Join(dir, "data")
	c.port = freePort(t)
	c.run("initdb", "-D", c.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = ''\nfsync = off\nmax_connections = 50\n", c.port)
	f, err := os.OpenFile(filepath.Join(c.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	c.start()
	t.Cleanup(func() {
		cmd := exec.Command(c.cmd("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")[0], c.cmd("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")[1:]...)
		_ = cmd.Run()
	})
	return c
}

// freePort returns a TCP port below 32768 nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	for p := 15433; p < 15533; p++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			_ = ln.Close()
			return p
		}
	}
	t.Fatal("no free port in 15433-15532")
	return 0
}

func (c *cluster) cmd(name string, args ...string) []string {
	return append(append(append([]string{}, c.as...), filepath.Join(c.bin, name)), args...)
}

func (c *cluster) run(name string, args ...string) {
	c.t.Helper()
	argv := c.cmd(name, args...)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		c.t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

func (c *cluster) url(kv ...string) string {
	return withParams(c.t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", c.port), kv...)
}

// start starts the server and waits until it accepts connections. After a
// SIGKILL of the postmaster its orphaned backends hold the shared memory
// until they notice and exit, and the server refuses to start meanwhile:
// start tries again for up to 30 s.
func (c *cluster) start() {
	c.t.Helper()
	argv := c.cmd("pg_ctl", "-D", c.data, "-l", filepath.Join(filepath.Dir(c.data), "server.log"), "-w", "-t", "30", "start")
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(filepath.Dir(c.data), "server.log"))
			c.t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
		}
		wait.Sleep(context.Background(), 200*time.Millisecond)
	}
}

// postmaster returns the server's PID from its postmaster.pid.
func (c *cluster) postmaster() int {
	c.t.Helper()
	b, err := os.ReadFile(filepath.Join(c.data, "postmaster.pid"))
	if err != nil {
		c.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		c.t.Fatalf("postmaster.pid: %v", err)
	}
	return pid
}

// Crashing the database server while a group consumes and a publisher
// publishes loses nothing: every message whose Publish returned nil is
// delivered, first deliveries of each key stay in publish order, and the
// subscription and publisher recover by themselves once the server is back
// (same client, same subscription, no reopening).
func TestConsumeSurvivesPostgresRestart(t *testing.T) {
	for _, tc := range []struct {
		name  string
		crash func(c *cluster)
	}{
		{"immediate shutdown", func(c *cluster) { c.run("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop") }},
		{"SIGKILL of the postmaster", func(c *cluster) {
			if err := syscall.Kill(c.postmaster(), syscall.SIGKILL); err != nil {
				c.t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := privateCluster(t)
			u := c.url("visibility_timeout", "2s", "poll_interval", "100ms", "connect_timeout", "2")
			pub := open(t, u)
			topic, group := uniq("restart"), uniq("g")
			sub := subscribe(t, open(t, u), topic, pubsub.Group(group))

			const total, per, keys = 3000, 10, 8
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			var mu sync.Mutex
			published := map[string]int{} // id -> index, once Publish returned nil
			delivered := map[string]int{} // id -> deliveries
			next := map[string]int{}      // key -> index of its next expected first delivery
			var violations []string
			half := make(chan struct{})
			restarted := make(chan time.Time, 1)
			var recovered time.Duration

			pubDone := make(chan error, 1)
			go func() {
				failures := 0
				for i := 0; i < total; i += per {
					if i == total/2 {
						close(half)
					}
					var batch []*pubsub.Message
					for j := i; j < i+per; j++ {
						batch = append(batch, &pubsub.Message{ID: fmt.Sprintf("m%d", j), Key: fmt.Sprintf("k%d", j%keys), Payload: []byte(strconv.Itoa(j))})
					}
					for {
						err := pub.Publish(ctx, topic, batch...)
						if err == nil {
							break
						}
						if ctx.Err() != nil {
							pubDone <- fmt.Errorf("publish %d: %w (after %d failed attempts)", i, err, failures)
							return
						}
						// Same IDs again: a publish that committed before its
						// answer was lost shows up as a duplicate, not a loss.
						failures++
						wait.Sleep(ctx, 50*time.Millisecond)
					}
					mu.Lock()
					for j := i; j < i+per; j++ {
						published[fmt.Sprintf("m%d", j)] = j
					}
					mu.Unlock()
				}
				t.Logf("publisher: %d failed publish attempts while the server was down", failures)
				pubDone <- nil
			}()

			go func() {
				<-half
				tc.crash(c)
				c.start()
				restarted <- time.Now()
			}()

			var restartedAt time.Time
			for {
				mu.Lock()
				done := len(published) == total && len(delivered) == total
				mu.Unlock()
				if done {
					break
				}
				d, err := sub.Receive(ctx)
				if err != nil {
					mu.Lock()
					t.Fatalf("receive: %v (published %d, delivered %d distinct)", err, len(published), len(delivered))
				}
				select {
				case restartedAt = <-restarted:
				default:
				}
				id := d.Message.ID
				n, _ := strconv.Atoi(string(d.Message.Payload))
				mu.Lock()
				if delivered[id] == 0 {
					k := d.Message.Key
					if n != next[k]*keys+int(k[1]-'0') {
						violations = append(violations, fmt.Sprintf("key %s: first delivery of %d, want %d", k, n, next[k]*keys+int(k[1]-'0')))
					}
					next[k]++
				}
				delivered[id]++
				if !restartedAt.IsZero() && recovered == 0 {
					recovered = time.Since(restartedAt)
				}
				mu.Unlock()
				if err := d.Ack(); err != nil && !errors.Is(err, pubsub.ErrClosed) {
					t.Errorf("ack: %v", err)
				}
			}
			if err := <-pubDone; err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			lost, dups := 0, 0
			for id := range published {
				if delivered[id] == 0 {
					lost++
				}
				dups += max(delivered[id]-1, 0)
			}
			for _, v := range violations {
				t.Error(v)
			}
			if lost > 0 {
				t.Errorf("%d of %d published messages never delivered", lost, total)
			}
			t.Logf("%s: published %d, lost %d, duplicates %d, per-key order violations %d, first delivery %v after the server was back",
				tc.name, total, lost, dups, len(violations), recovered.Round(time.Millisecond))
		})
	}
}

// An ack sent while the database server is down is sent again until the
// server is back (within the visibility timeout), instead of being logged
// and lost: the message is not redelivered.
func TestAckSentWhileServerDownLandsWhenItIsBack(t *testing.T) {
	c := privateCluster(t)
	u := c.url("visibility_timeout", "30s", "connect_timeout", "2")
	cl := open(t, u)
	topic := uniq("ackdown")
	s := subscribe(t, cl, topic, pubsub.Group(uniq("g")))
	publishN(t, cl, topic, 1, "")
	d := receive(t, s)
	c.run("pg_ctl", "-D", c.data, "-m", "immediate", "-w", "stop")
	if err := d.Ack(); err != nil {
		t.Fatalf("ack: %v", err)
	}
	c.start()
	if err := s.Close(); err != nil { // waits for the ack to be sent
		t.Fatalf("close: %v", err)
	}
	br := cl.Driver().(*postgres.Broker)
	var left int
	if err := pool(t, c.url()).QueryRow(context.Background(), `SELECT count(*) FROM `+br.QueueTable()+` WHERE topic = $1`, topic).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d row(s) left: the ack sent while the server was down was lost and the message will be redelivered", left)
	}
}
