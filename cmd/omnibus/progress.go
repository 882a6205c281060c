package main

import (
	"fmt"
	"io"
	"os"
	"time"
)

// liveLine prints a progress line: rewritten in place on a terminal, and at
// most once a second as ordinary lines elsewhere (CI logs, pipes).
type liveLine struct {
	w    io.Writer
	tty  bool
	last time.Time
	text string
}

func newLiveLine(w io.Writer) *liveLine {
	tty := false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			tty = true
		}
	}
	return &liveLine{w: w, tty: tty}
}

// update shows the line (throttled when not on a terminal).
func (l *liveLine) update(format string, args ...any) {
	l.text = fmt.Sprintf(format, args...)
	if l.tty {
		fmt.Fprint(l.w, "\r"+l.text)
		return
	}
	if now := time.Now(); now.Sub(l.last) >= time.Second {
		l.last = now
		fmt.Fprintln(l.w, l.text)
	}
}

// done shows the final state and ends the line.
func (l *liveLine) done(format string, args ...any) {
	l.text = fmt.Sprintf(format, args...)
	if l.tty {
		fmt.Fprintln(l.w, "\r"+l.text)
		return
	}
	fmt.Fprintln(l.w, l.text)
}

// progress counts toward a total on stderr with a liveLine: redrawn on a
// terminal (at most ten times a second), plain lines once a second
// elsewhere. Totals under 100 show nothing.
type progress struct {
	line     *liveLine
	what     string
	n, total int
	drawn    time.Time
}

func newProgress(total int, what string) *progress {
	p := &progress{what: what, total: total}
	if total >= 100 {
		p.line = newLiveLine(stderr)
	}
	return p
}

func (p *progress) add(n int) {
	p.n += n
	if p.line == nil {
		return
	}
	if now := time.Now(); now.Sub(p.drawn) >= 100*time.Millisecond {
		p.drawn = now
		p.line.update("%s %d/%d", p.what, p.n, p.total)
	}
}

// stop ends the line (on a terminal) with the final count.
func (p *progress) stop() {
	if p.line != nil && p.line.tty {
		p.line.done("%s %d/%d", p.what, p.n, p.total)
	}
}
