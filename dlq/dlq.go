// Package dlq reads and replays poison (dead-letter) topics written by the
// poison middleware: each message there is the original (same ID, Key,
// Payload and Metadata) plus a fault record in omnibus-poison-* metadata.
//
// Replay publishes matching messages back to their original topic (or
// another) with their ID unchanged — so a dedup store still recognises any
// that were processed after all — and the fault record and attempt count
// removed; it acks each poison message only after its replay was published.
package dlq

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/omnibusmq/omnibus/middleware"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Fault-record metadata keys written by the poison middleware.
const (
	MetaReason        = middleware.MetaPoisonReason
	MetaError         = middleware.MetaPoisonError
	MetaOriginalTopic = middleware.MetaPoisonOriginalTopic
	MetaHandler       = middleware.MetaPoisonHandler
	MetaAttempts      = middleware.MetaPoisonAttempts
	MetaFirstFailedAt = middleware.MetaPoisonFirstFailedAt
	MetaFailedAt      = middleware.MetaPoisonFailedAt
)

// Record is one poison message and its fault record.
type Record struct {
	Message       *pubsub.Message
	Reason        string
	Error         string
	OriginalTopic string
	Handler       string
	Attempts      int
	FailedAt      time.Time
}

// Parse reads the fault record of a poison message.
func Parse(m *pubsub.Message) Record {
	r := Record{
		Message:       m,
		Reason:        m.Metadata[MetaReason],
		Error:         m.Metadata[MetaError],
		OriginalTopic: m.Metadata[MetaOriginalTopic],
		Handler:       m.Metadata[MetaHandler],
	}
	r.Attempts, _ = strconv.Atoi(m.Metadata[MetaAttempts])
	r.FailedAt, _ = time.Parse(time.RFC3339Nano, m.Metadata[MetaFailedAt])
	return r
}

// Filter selects poison messages. Zero fields match everything.
type Filter struct {
	Handler string    // exact handler name
	Reason  string    // substring of the reason or error
	Since   time.Time // failed at or after
	Until   time.Time // failed before
}

// Match reports whether r passes the filter.
func (f Filter) Match(r Record) bool {
	if f.Handler != "" && r.Handler != f.Handler {
		return false
	}
	if f.Reason != "" && !strings.Contains(r.Reason, f.Reason) && !strings.Contains(r.Error, f.Reason) {
		return false
	}
	if !f.Since.IsZero() && r.FailedAt.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.FailedAt.Before(f.Until) {
		return false
	}
	return true
}

// Options configure Scan and Replay.
type Options struct {
	// Group reads the poison topic; default middleware.PoisonReaderGroup
	// ("omnibus-dlq"), the group the poison middleware creates before it
	// first publishes.
	Group string
	// Idle ends the scan when no message arrived for this long; default 2s.
	Idle time.Duration
	// Limit stops after this many matching messages; 0 means no limit.
	Limit int
	// Filter selects messages; the rest are left in the poison topic.
	Filter Filter
	// To overrides the destination topic; default each message's
	// original topic.
	To string
	// DryRun reports what Replay would do and leaves every message in place.
	DryRun bool
	// OnRecord is called for each matching record (progress, listing).
	OnRecord func(r Record, replayedTo string)
}

func (o Options) withDefaults() Options {
	if o.Group == "" {
		o.Group = middleware.PoisonReaderGroup
	}
	if o.Idle <= 0 {
		o.Idle = 2 * time.Second
	}
	return o
}

// Result counts what a scan saw.
type Result struct {
	Scanned  int // distinct poison messages seen
	Matched  int
	Replayed int
}

// List reads the poison topic and reports each matching record through
// opts.OnRecord, leaving every message in place (nacked back).
func List(ctx context.Context, c *pubsub.Client, poisonTopic string, opts Options) (Result, error) {
	opts.DryRun = true
	opts.To = "-"
	return scan(ctx, c, poisonTopic, opts)
}

// Replay publishes matching poison messages back to their original topic
// (or opts.To) with the same ID, Key, Payload and Metadata minus the fault
// record, then acks them. Non-matching messages stay in the poison topic.
func Replay(ctx context.Context, c *pubsub.Client, poisonTopic string, opts Options) (Result, error) {
	return scan(ctx, c, poisonTopic, opts)
}

func scan(ctx context.Context, c *pubsub.Client, poisonTopic string, opts Options) (res Result, err error) {
	opts = opts.withDefaults()
	sub, err := c.Subscribe(ctx, poisonTopic, pubsub.Group(opts.Group), pubsub.FromOldest())
	if err != nil {
		return res, fmt.Errorf("dlq: read %q: %w", poisonTopic, err)
	}
	var keep []*pubsub.Delivery // left in place: nacked when the scan ends
	defer func() {
		for _, d := range keep {
			_ = d.Nack(0)
		}
		if cerr := sub.Close(); cerr != nil && err == nil {
			err = cerr
		}
	}()
	seen := map[string]bool{}
	for opts.Limit == 0 || res.Matched < opts.Limit {
		rctx, cancel := context.WithTimeout(ctx, opts.Idle)
		d, rerr := sub.Receive(rctx)
		cancel()
		if rerr != nil {
			if errors.Is(rerr, context.DeadlineExceeded) && ctx.Err() == nil {
				return res, nil // idle: the topic is drained
			}
			return res, fmt.Errorf("dlq: read %q: %w", poisonTopic, rerr)
		}
		if seen[d.Message.ID] {
			// Came round again (we nacked it or it was replayed into this
			// topic): the scan has covered everything.
			keep = append(keep, d)
			return res, nil
		}
		seen[d.Message.ID] = true
		res.Scanned++
		r := Parse(d.Message)
		if !opts.Filter.Match(r) {
			keep = append(keep, d)
			continue
		}
		res.Matched++
		to := opts.To
		if to == "" {
			to = r.OriginalTopic
		}
		if opts.DryRun {
			keep = append(keep, d)
			if opts.OnRecord != nil {
				opts.OnRecord(r, to)
			}
			continue
		}
		if to == "" {
			keep = append(keep, d)
			return res, fmt.Errorf("dlq: message %s has no %s and no destination was given: %w", d.Message.ID, MetaOriginalTopic, pubsub.ErrInvalid)
		}
		out := &pubsub.Message{ID: d.Message.ID, Key: d.Message.Key, Payload: d.Message.Payload, Metadata: map[string]string{}}
		for k, v := range d.Message.Metadata {
			if strings.HasPrefix(k, "omnibus-poison-") || k == pubsub.MetaAttempt {
				continue
			}
			out.Metadata[k] = v
		}
		out.Metadata["omnibus-replayed-from"] = poisonTopic
		if perr := c.Publish(ctx, to, out); perr != nil {
			keep = append(keep, d)
			return res, fmt.Errorf("dlq: replay %s to %q: %w", d.Message.ID, to, perr)
		}
		if aerr := d.Ack(); aerr != nil {
			return res, fmt.Errorf("dlq: ack replayed %s (it may be replayed again; consumers dedup by ID): %w", d.Message.ID, aerr)
		}
		res.Replayed++
		if opts.OnRecord != nil {
			opts.OnRecord(r, to)
		}
	}
	return res, nil
}
