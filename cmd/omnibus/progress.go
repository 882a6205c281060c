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
