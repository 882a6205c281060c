# NSQ: nsqd and nsqlookupd 1.3.0, built from the Go module (Debian has no
# package), nsqlookupd on 127.0.0.1:14160 (TCP) and 14161 (HTTP), nsqd on
# 127.0.0.1:14150 (TCP), 14151 (HTTP) and 14152 (HTTPS), data under DIR/data.
# Sourced by scripts/brokers; see the contract there.
#
# Build: github.com/nsqio/nsq replaces github.com/judwhite/go-svc with a fork
# in its own go.mod, and a replace only applies in the main module, so the
# binaries are built in a scratch module that repeats it. They are cached in
# ${XDG_CACHE_HOME:-~/.cache}/omnibus/nsq-1.3.0/bin (rebuilt when missing).
#
# nsqd runs with --mem-queue-size=0 --sync-every=1: every message goes to the
# disk queue and its metadata is synced after every write and read, so a
# message nsqd acknowledged survives kill -9 (the NSQ defaults lose up to
# 10000 messages kept in memory, and up to 2 s of disk writes). nsqd also
# offers TLS (negotiated after IDENTIFY on the same TCP port, not required)
# with a certificate signed by the throwaway CA of test_certs in DIR/tls.
#
# Besides DIR/env it writes DIR/ctl, exported as OMNIBUS_NSQ_CTL, so that
# tests can crash and restart nsqd without knowing any of this:
#   "$OMNIBUS_NSQ_CTL" kill    # SIGKILL nsqd, wait until it is gone
#   "$OMNIBUS_NSQ_CTL" stop    # SIGTERM nsqd (it writes in-flight and deferred messages to disk), wait
#   "$OMNIBUS_NSQ_CTL" start   # start nsqd on the same data, wait until ready
#   "$OMNIBUS_NSQ_CTL" ready   # exit 0 when nsqd stores and counts a message
NSQ_VERSION=1.3.0
NSQD_TCP=${OMNIBUS_NSQD_PORT:-14150}
NSQD_HTTP=$((NSQD_TCP + 1))
NSQD_HTTPS=$((NSQD_TCP + 2))
NSQLOOKUPD_TCP=$((NSQD_TCP + 10))
NSQLOOKUPD_HTTP=$((NSQD_TCP + 11))
# Larger than nsqd's defaults (1 MiB, 5 MiB) so that the conformance suite's
# 1 MiB payload fits with its envelope; the URL below says the same.
NSQ_MAX_MSG=4194304
NSQ_MAX_BODY=8388608

nsq_bindir() { echo "${XDG_CACHE_HOME:-$HOME/.cache}/omnibus/nsq-$NSQ_VERSION/bin"; }

# nsq_build: go install nsqd and nsqlookupd into nsq_bindir unless present.
nsq_build() {
  local bin build
  bin=$(nsq_bindir)
  [ -x "$bin/nsqd" ] && [ -x "$bin/nsqlookupd" ] && return 0
  command -v go >/dev/null || die "nsq: need the go toolchain to build nsqd $NSQ_VERSION"
  build=$(mktemp -d)
  log "building nsqd and nsqlookupd $NSQ_VERSION into $bin"
  cat >"$build/go.mod" <<'MOD'
module omnibus.local/nsqbuild

go 1.22

require github.com/nsqio/nsq v1.3.0

replace github.com/judwhite/go-svc => github.com/mreiferson/go-svc v1.2.2-0.20210815184239-7a96e00010f6
MOD
  cat >"$build/tools.go" <<'GO'
//go:build tools

package tools

import (
	_ "github.com/nsqio/nsq/apps/nsqd"
	_ "github.com/nsqio/nsq/apps/nsqlookupd"
)
GO
  mkdir -p "$bin"
  (
    cd "$build" &&
      GOFLAGS=-mod=mod go mod tidy &&
      GOBIN=$bin GOFLAGS=-mod=mod go install github.com/nsqio/nsq/apps/nsqd github.com/nsqio/nsq/apps/nsqlookupd
  ) >"$build/build.log" 2>&1 || { cat "$build/build.log" >&2; rm -rf "$build"; die "nsq: build of $NSQ_VERSION failed"; }
  rm -rf "$build"
  "$bin/nsqd" --version >&2
}

# nsq_ctl DIR: write DIR/ctl (see the header).
nsq_ctl() {
  local dir=$1 bin
  bin=$(nsq_bindir)
  cat >"$dir/ctl" <<CTL
#!/usr/bin/env bash
# Crash, start and probe the omnibus test nsqd (written by scripts/brokers.d/nsq.sh).
set -u
dir=$dir
topic=omnibus_ready
alive() { [ -s "\$dir/nsqd.pid" ] && kill -0 "\$(cat "\$dir/nsqd.pid")" 2>/dev/null; }
# ready: a message published over HTTP is stored and counted by a channel.
ready() {
  local q="topic=\$topic&channel=probe" base=http://127.0.0.1:$NSQD_HTTP out
  curl -sf -m 5 -X POST "\$base/topic/create?topic=\$topic" >/dev/null || return 1
  curl -sf -m 5 -X POST "\$base/channel/create?\$q" >/dev/null || return 1
  curl -sf -m 5 -X POST --data-binary ping "\$base/pub?topic=\$topic" >/dev/null || return 1
  out=\$(curl -sf -m 5 "\$base/stats?format=json&\$q") || return 1
  curl -sf -m 5 -X POST "\$base/topic/delete?topic=\$topic" >/dev/null || return 1
  case \$out in *'"depth":1'*) return 0 ;; esac
  return 1
}
case \${1:-} in
  kill)
    alive || exit 0
    pid=\$(cat "\$dir/nsqd.pid")
    kill -9 "\$pid"
    for _ in \$(seq 1 100); do kill -0 "\$pid" 2>/dev/null || exit 0; sleep 0.05; done
    echo "nsqd (pid \$pid) still alive 5 s after SIGKILL" >&2; exit 1
    ;;
  stop)
    alive || exit 0
    pid=\$(cat "\$dir/nsqd.pid")
    kill -TERM "\$pid"
    for _ in \$(seq 1 300); do kill -0 "\$pid" 2>/dev/null || exit 0; sleep 0.1; done
    echo "nsqd (pid \$pid) still alive 30 s after SIGTERM" >&2; exit 1
    ;;
  start)
    if ! alive; then
      setsid $bin/nsqd --tcp-address=127.0.0.1:$NSQD_TCP --http-address=127.0.0.1:$NSQD_HTTP \\
        --https-address=127.0.0.1:$NSQD_HTTPS --broadcast-address=127.0.0.1 \\
        --lookupd-tcp-address=127.0.0.1:$NSQLOOKUPD_TCP --data-path="\$dir/data" \\
        --mem-queue-size=0 --sync-every=1 --max-msg-size=$NSQ_MAX_MSG --max-body-size=$NSQ_MAX_BODY \\
        --tls-cert="\$dir/tls/server-cert.pem" --tls-key="\$dir/tls/server-key.pem" \\
        --log-level=warn >>"\$dir/nsqd.log" 2>&1 </dev/null &
      echo \$! >"\$dir/nsqd.pid"
    fi
    for _ in \$(seq 1 300); do
      ready && exit 0
      alive || { tail -20 "\$dir/nsqd.log" >&2; echo "nsqd exited during startup" >&2; exit 1; }
      sleep 0.1
    done
    echo "nsqd not ready after 30 s" >&2; exit 1
    ;;
  ready) ready ;;
  *) echo "usage: \$0 kill|stop|start|ready" >&2; exit 2 ;;
esac
CTL
  chmod 755 "$dir/ctl"
}

nsq_running() { pid_alive "$1/nsqd.pid" && pid_alive "$1/nsqlookupd.pid"; }

nsq_lookupd_ready() { curl -sf -m 5 "http://127.0.0.1:$NSQLOOKUPD_HTTP/ping"; }

# nsq_registered: nsqlookupd knows nsqd (it registered over TCP).
nsq_registered() {
  curl -sf -m 5 "http://127.0.0.1:$NSQLOOKUPD_HTTP/nodes" | grep -q "\"tcp_port\":$NSQD_TCP"
}

nsq_up() {
  local dir=$1 bin
  command -v curl >/dev/null || apt_install curl ca-certificates
  nsq_build
  bin=$(nsq_bindir)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  nsq_ctl "$dir" # always this script's version, also for a running nsqd
  if nsq_running "$dir" && "$dir/ctl" ready && nsq_registered; then
    log "nsq already running: nsqd 127.0.0.1:$NSQD_TCP, nsqlookupd HTTP 127.0.0.1:$NSQLOOKUPD_HTTP"
  else
    nsq_down "$dir"
    rm -rf "$dir/data"
    mkdir -p "$dir/data"
    test_certs "$dir"
    log "starting nsqlookupd on 127.0.0.1:$NSQLOOKUPD_TCP (HTTP $NSQLOOKUPD_HTTP)"
    setsid "$bin/nsqlookupd" --tcp-address=127.0.0.1:$NSQLOOKUPD_TCP --http-address=127.0.0.1:$NSQLOOKUPD_HTTP \
      --broadcast-address=127.0.0.1 --log-level=warn >"$dir/nsqlookupd.log" 2>&1 </dev/null &
    echo $! >"$dir/nsqlookupd.pid"
    wait_for "nsqlookupd" 30 nsq_lookupd_ready || { tail -20 "$dir/nsqlookupd.log" >&2; die "nsqlookupd not ready after 30 s"; }
    log "starting nsqd on 127.0.0.1:$NSQD_TCP (HTTP $NSQD_HTTP, HTTPS $NSQD_HTTPS)"
    : >"$dir/nsqd.log"
    "$dir/ctl" start || die "nsqd did not start; see $dir/nsqd.log"
    wait_for "nsqd registered with nsqlookupd" 30 nsq_registered || die "nsqd did not register with nsqlookupd"
    log "nsq ready (nsqd pid $(cat "$dir/nsqd.pid"), nsqlookupd pid $(cat "$dir/nsqlookupd.pid"))"
  fi
  {
    echo "export OMNIBUS_NSQ_URL='nsq://127.0.0.1:$NSQD_TCP?lookupd=127.0.0.1:$NSQLOOKUPD_HTTP&max_message_size=$NSQ_MAX_MSG&max_body_size=$NSQ_MAX_BODY'"
    printf 'export OMNIBUS_NSQ_CTL=%q\n' "$dir/ctl"
    printf 'export OMNIBUS_NSQ_TLS_CA=%q\n' "$dir/tls/ca.pem"
    printf 'export OMNIBUS_NSQ_NSQD=%q\n' "$bin/nsqd"
  } >"$dir/env"
}

nsq_down() {
  local dir=$1
  stop_pid "$dir/nsqd.pid" nsqd
  stop_pid "$dir/nsqlookupd.pid" nsqlookupd
}
