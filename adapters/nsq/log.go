package nsq

import (
	"context"
	"log/slog"
	"strings"
	"sync/atomic"
)

// logBridge sends go-nsq's log lines to slog. go-nsq formats each line as
// "LVL  id [topic/channel] (addr) text"; the level prefix picks the slog
// level, except for lines that are expected: a lookupd that does not know
// a topic yet, and anything once quiet is set (a subscription closing).
type logBridge struct {
	log   *slog.Logger
	role  string
	quiet *atomic.Bool // nil: never quiet
}

func newLogBridge(l *slog.Logger, role string) *logBridge { return &logBridge{log: l, role: role} }

// Output implements go-nsq's logger interface.
func (l *logBridge) Output(_ int, s string) error {
	level := slog.LevelInfo
	switch {
	case strings.HasPrefix(s, "ERR"):
		level = slog.LevelError
	case strings.HasPrefix(s, "WRN"):
		level = slog.LevelWarn
	case strings.HasPrefix(s, "DBG"):
		level = slog.LevelDebug
	}
	if len(s) > 4 {
		s = strings.TrimSpace(s[4:])
	}
	if strings.Contains(s, "TOPIC_NOT_FOUND") || (l.quiet != nil && l.quiet.Load()) {
		level = slog.LevelDebug
	}
	l.log.Log(context.Background(), level, "nsq: "+s, "role", l.role)
	return nil
}
