package middleware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/omnibusmq/omnibus/pubsub"
	"github.com/omnibusmq/omnibus/router"
)

// Metadata keys of the fault record Poison adds to a poisoned message.
const (
	MetaPoisonReason        = "omnibus-poison-reason"
	MetaPoisonError         = "omnibus-poison-error"
	MetaPoisonOriginalTopic = "omnibus-poison-original-topic"
	MetaPoisonHandler       = "omnibus-poison-handler"
	MetaPoisonAttempts      = "omnibus-poison-attempts"
	MetaPoisonFirstFailedAt = "omnibus-poison-first-failed-at"
	MetaPoisonFailedAt      = "omnibus-poison-failed-at"
)

// maxErrorLen bounds the error text in the record (brokers limit header size).
const maxErrorLen = 16 << 10

// PoisonOptions configure Poison. Zero values mean the defaults; Poison
// panics on a negative PublishTimeout.
type PoisonOptions struct {
	// PublishTimeout bounds the publish to the poison topic (default 30s).
	// It is not cut short by the router's shutdown.
	PublishTimeout time.Duration
	// ReaderGroup is the consumer group the DLQ tools (`omnibus dlq`,
	// package dlq) read the poison topic with. Before its first publish,
	// Poison makes sure the group exists on the poison topic (it subscribes
	// and closes, when the publisher is a *pubsub.Client), so that brokers
	// whose groups only receive what is published after they exist
	// (RabbitMQ, Postgres, memory) keep every poisoned message for the
	// tools. Default PoisonReaderGroup; "-" skips this.
	ReaderGroup string
}

// PoisonReaderGroup is the default PoisonOptions.ReaderGroup, and the group
// package dlq reads with.
const PoisonReaderGroup = "omnibus-dlq"

// ensureGroup subscribes once (successfully) to the poison topic with the
// reader group, so the group exists before anything is poisoned.
type ensureGroup struct {
	mu   sync.Mutex
	done bool
}

func (e *ensureGroup) run(ctx context.Context, pub router.Publisher, topic, group string) {
	if group == "-" {
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.done {
		return
	}
	c, ok := pub.(*pubsub.Client)
	if !ok {
		e.done = true
		return
	}
	s, err := c.Subscribe(ctx, topic, pubsub.Group(group))
	if err != nil {
		logger(ctx).Warn("middleware: poison: could not create the DLQ reader group; poisoned messages are still published",
			"poison_topic", topic, "group", group, "error", err)
		return
	}
	_ = s.Close()
	e.done = true
}

// Poison moves a message whose handler failed for good to topic, then acks
// it. "For good" means every error that reaches Poison, except requests for
// redelivery (router.Redeliver, e.g. from Retry in redelivery mode or a busy
// Dedup claim) and failures while the handler's context was ending (the
// router shutting down): those are passed on and the message is nacked. Put
// Retry inside Poison so that only the last attempt's error reaches it.
//
// The poisoned message keeps the original ID, Key, Payload and Metadata
// (except omnibus-attempt) and gets the fault record: omnibus-poison-reason
// (permanent, panic, max-attempts, max-elapsed, not-retryable, failed),
// -error (the error text; for a panic it includes the stack), -original-topic,
// -handler, -attempts, -first-failed-at and -failed-at (RFC 3339, UTC).
//
// The error text is valid UTF-8, cut on a rune boundary at 16 KiB. When the
// poison topic refuses the record as invalid (ErrInvalid: a header the
// broker cannot carry), Poison publishes MinimalPoisonRecord instead, so the
// message is not redelivered and failed forever. If a publish fails
// otherwise, Poison returns an error, so the router nacks the message: it is
// never dropped.
//
// It panics if pub is nil, topic is empty or o.PublishTimeout is negative.
// Its rank is router.RankPoison: outside Retry, Dedup, Timeout and Recover
// (Use panics otherwise).
func Poison(pub router.Publisher, topic string, o PoisonOptions) router.Ranked {
	switch {
	case pub == nil:
		invalid("Poison: the publisher is nil")
	case topic == "":
		invalid("Poison: the poison topic is empty")
	case o.PublishTimeout < 0:
		invalid("Poison: PoisonOptions.PublishTimeout = %v: want 0 (default 30s) or more", o.PublishTimeout)
	}
	if o.PublishTimeout == 0 {
		o.PublishTimeout = 30 * time.Second
	}
	if o.ReaderGroup == "" {
		o.ReaderGroup = PoisonReaderGroup
	}
	ensure := &ensureGroup{}
	return router.Ranked{Name: "middleware.Poison", Rank: router.RankPoison, Middleware: func(next router.Handler) router.Handler {
		return func(ctx context.Context, m *pubsub.Message) error {
			err := next(ctx, m)
			if err == nil || passThrough(ctx, err) {
				return err
			}
			pm := PoisonRecord(m, err, router.HandlerName(ctx), time.Now())
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.PublishTimeout)
			defer cancel()
			ensure.run(pctx, pub, topic, o.ReaderGroup)
			perr := pub.Publish(pctx, topic, pm)
			if errors.Is(perr, pubsub.ErrInvalid) {
				// The broker refuses the record itself (a header it cannot
				// carry, say): nacking would run the handler again and again.
				// Publish the minimal record instead.
				logger(ctx).Warn("middleware: poison: the poison topic refused the full record; publishing a minimal one",
					"id", m.ID, "topic", m.Topic, "poison_topic", topic, "error", perr)
				pm = MinimalPoisonRecord(pm, perr)
				perr = pub.Publish(pctx, topic, pm)
			}
			if perr != nil {
				return fmt.Errorf("middleware: poison: moving message %q to %q failed, nacking it: %w (handler error: %v)", m.ID, topic, perr, err)
			}
			logger(ctx).Warn("middleware: message moved to the poison topic",
				"id", m.ID, "topic", m.Topic, "handler", pm.Metadata[MetaPoisonHandler], "poison_topic", topic,
				"reason", pm.Metadata[MetaPoisonReason], "attempts", pm.Metadata[MetaPoisonAttempts])
			return nil
		}
	}}
}

// PoisonRecord returns the message Poison publishes for m after err: a copy
// of m with the fault record in its metadata (see Poison).
func PoisonRecord(m *pubsub.Message, err error, handler string, now time.Time) *pubsub.Message {
	reason, attempts, first := ReasonFailed, max(m.Attempt, 1), now
	var re *RetryError
	if errors.As(err, &re) {
		reason, attempts = re.Reason, re.Attempts
		if !re.FirstFailedAt.IsZero() {
			first = re.FirstFailedAt
		}
	} else if pubsub.IsPermanent(err) {
		reason = ReasonPermanent
	}
	var pe *router.PanicError
	if errors.As(err, &pe) {
		reason = ReasonPanic
	}
	text := truncateText(err.Error(), maxErrorLen)
	pm := &pubsub.Message{ID: m.ID, Key: m.Key, Payload: m.Payload, Metadata: make(map[string]string, len(m.Metadata)+7)}
	for k, v := range m.Metadata {
		pm.Metadata[k] = v
	}
	delete(pm.Metadata, pubsub.MetaAttempt)
	pm.Metadata[MetaPoisonReason] = reason
	pm.Metadata[MetaPoisonError] = text
	pm.Metadata[MetaPoisonOriginalTopic] = strings.ToValidUTF8(m.Topic, "\uFFFD")
	pm.Metadata[MetaPoisonHandler] = strings.ToValidUTF8(handler, "\uFFFD")
	pm.Metadata[MetaPoisonAttempts] = strconv.Itoa(attempts)
	pm.Metadata[MetaPoisonFirstFailedAt] = first.UTC().Format(time.RFC3339Nano)
	pm.Metadata[MetaPoisonFailedAt] = now.UTC().Format(time.RFC3339Nano)
	return pm
}

// MetaPoisonDropped names, in a minimal poison record, why the original
// metadata was left out.
const MetaPoisonDropped = "omnibus-poison-dropped"

// minimalErrorLen bounds the error text of a minimal record.
const minimalErrorLen = 1 << 10

// MinimalPoisonRecord returns the record Poison publishes when the poison
// topic refused full (with ErrInvalid, refused): the ID, Key and Payload,
// the fault record with the error text cut to 1 KiB, and
// omnibus-poison-dropped saying that the original metadata was left out and
// why.
func MinimalPoisonRecord(full *pubsub.Message, refused error) *pubsub.Message {
	md := make(map[string]string, 8)
	for _, k := range []string{MetaPoisonReason, MetaPoisonError, MetaPoisonOriginalTopic, MetaPoisonHandler,
		MetaPoisonAttempts, MetaPoisonFirstFailedAt, MetaPoisonFailedAt} {
		if v, ok := full.Metadata[k]; ok {
			md[k] = strings.ToValidUTF8(v, "\uFFFD")
		}
	}
	md[MetaPoisonError] = truncateText(md[MetaPoisonError], minimalErrorLen)
	md[MetaPoisonDropped] = truncateText("original metadata left out: the poison topic refused the full record: "+refused.Error(), minimalErrorLen)
	return &pubsub.Message{ID: full.ID, Key: full.Key, Payload: full.Payload, Metadata: md}
}

// truncateText returns s as valid UTF-8 (invalid bytes become U+FFFD) cut to
// at most max bytes on a rune boundary, marked when cut.
func truncateText(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) <= max {
		return s
	}
	cut := max
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…(truncated)"
}

// logger returns the router's logger from ctx, or slog.Default().
// invalid panics with an error wrapping pubsub.ErrInvalid: a middleware
// constructor was given a value it cannot use.
func invalid(format string, args ...any) {
	panic(fmt.Errorf("middleware: "+format+": %w", append(args, pubsub.ErrInvalid)...))
}

func logger(ctx context.Context) *slog.Logger {
	if info := router.Info(ctx); info != nil && info.Logger != nil {
		return info.Logger
	}
	return slog.Default()
}
