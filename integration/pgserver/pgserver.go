//go:build unix

// Package pgserver runs a private PostgreSQL server for one test, so that a
// test can crash, stop and restart it without disturbing the shared server
// of scripts/brokers (or any other test): initdb into a temporary
// directory, listening on 127.0.0.1 only, on a free port below the
// ephemeral range, with the server binaries `scripts/brokers up postgres`
// installs. It needs those binaries and either root (the server then runs
// as the postgres user through runuser, since initdb refuses root) or the
// postgres user; without them the test is skipped, or fails under CI=true.
//
//	s := pgserver.New(t)            // running; stopped when the test ends
//	pool, _ := pgxpool.New(ctx, s.URL())
//	s.Stop("immediate")             // pg_ctl -m immediate stop (a crash)
//	s.Start()                       // back, same data and port
package pgserver

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/internal/wait"
)

// Server is a private PostgreSQL server (one cluster).
type Server struct {
	t    testing.TB
	bin  string   // directory of initdb, pg_ctl
	data string   // the cluster's data directory
	port int      // its TCP port on 127.0.0.1
	as   []string // command prefix running as the postgres user
}

// New initialises a cluster in a temporary directory, starts it and
// returns once it accepts connections. The server is stopped (immediate
// mode) when the test ends. Like integration.Postgres, New skips the test
// (fails it under CI=true) where there is no PostgreSQL test broker; it
// also does so where the server binaries or the postgres user are missing.
func New(t testing.TB) *Server {
	t.Helper()
	integration.Postgres(t) // a broker test: skipped (or failed under CI) like the others
	unavailable := func(why string) {
		t.Helper()
		if integration.InCI() {
			t.Fatalf("CI=true and no private PostgreSQL server: %s", why)
		}
		t.Skipf("SKIPPED, no private PostgreSQL server: %s (run `scripts/brokers up postgres` as root to install the server)", why)
	}
	bins, _ := filepath.Glob("/usr/lib/postgresql/*/bin/initdb")
	if len(bins) == 0 {
		unavailable("no /usr/lib/postgresql/*/bin/initdb")
	}
	s := &Server{t: t, bin: filepath.Dir(bins[len(bins)-1])}
	dir := t.TempDir()
	switch me, _ := user.Current(); {
	case me != nil && me.Username == "postgres":
	case os.Geteuid() == 0:
		s.as = []string{"runuser", "-u", "postgres", "--"}
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
	s.data = filepath.Join(dir, "data")
	s.port = freePort(t)
	s.run("initdb", "-D", s.data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync")
	conf := fmt.Sprintf("listen_addresses = '127.0.0.1'\nport = %d\nunix_socket_directories = ''\nfsync = off\nmax_connections = 50\n", s.port)
	f, err := os.OpenFile(filepath.Join(s.data, "postgresql.conf"), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(conf); err != nil {
		t.Fatal(err)
	}
	_ = f.Close()
	s.Start()
	t.Cleanup(func() {
		argv := s.cmd("pg_ctl", "-D", s.data, "-m", "immediate", "-w", "stop")
		_ = exec.Command(argv[0], argv[1:]...).Run()
	})
	return s
}

// freePort returns a TCP port below 32768 nothing listens on, trying from
// a point that depends on the process so that test binaries running at
// once start apart.
func freePort(t testing.TB) int {
	t.Helper()
	const lo, n = 15433, 500
	off := os.Getpid() % n
	for i := 0; i < n; i++ {
		p := lo + (off+i)%n
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err == nil {
			_ = ln.Close()
			return p
		}
	}
	t.Fatalf("no free port in %d-%d", lo, lo+n-1)
	return 0
}

func (s *Server) cmd(name string, args ...string) []string {
	return append(append(append([]string{}, s.as...), filepath.Join(s.bin, name)), args...)
}

func (s *Server) run(name string, args ...string) {
	s.t.Helper()
	argv := s.cmd(name, args...)
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		s.t.Fatalf("%s: %v\n%s", strings.Join(argv, " "), err, out)
	}
}

// URL is the server's database "postgres" as user postgres (trust
// authentication), without TLS.
func (s *Server) URL() string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", s.port)
}

// Start starts the server and waits until it accepts connections. After a
// SIGKILL of the postmaster its orphaned backends hold the shared memory
// until they notice and exit, and the server refuses to start meanwhile:
// Start tries again for up to 30 s.
func (s *Server) Start() {
	s.t.Helper()
	logFile := filepath.Join(filepath.Dir(s.data), "server.log")
	argv := s.cmd("pg_ctl", "-D", s.data, "-l", logFile, "-w", "-t", "30", "start")
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logFile)
			s.t.Fatalf("pg_ctl start: %v\n%s\n%s", err, out, log)
		}
		wait.Sleep(context.Background(), 200*time.Millisecond)
	}
}

// Stop stops the server with pg_ctl's shutdown mode ("smart", "fast" or
// "immediate": the last is a crash, with recovery at the next start) and
// waits until it is down.
func (s *Server) Stop(mode string) {
	s.t.Helper()
	s.run("pg_ctl", "-D", s.data, "-m", mode, "-w", "stop")
}

// Kill SIGKILLs the postmaster (its backends exit when they notice).
func (s *Server) Kill() {
	s.t.Helper()
	b, err := os.ReadFile(filepath.Join(s.data, "postmaster.pid"))
	if err != nil {
		s.t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		s.t.Fatalf("postmaster.pid: %v", err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		s.t.Fatal(err)
	}
}
