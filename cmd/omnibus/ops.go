package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/time/rate"

	"github.com/omnibusmq/omnibus/config"
	"github.com/omnibusmq/omnibus/dlq"
	"github.com/omnibusmq/omnibus/pubsub"
)

// Broker selects the broker: --url, else OMNIBUS_URL, else --config.
type Broker struct {
	URL    string `help:"Broker URL (default: $OMNIBUS_URL, then --config)." placeholder:"URL"`
	Config string `help:"Config file (YAML or JSON) with url/require/params." type:"path" env:"OMNIBUS_CONFIG"`
}

func (b Broker) open(ctx context.Context) (*pubsub.Client, string, error) {
	var c config.Config
	if b.URL != "" {
		c = config.Config{URL: b.URL}
	} else {
		var err error
		if c, err = config.Load(b.Config); err != nil {
			return nil, "", fmt.Errorf("%w (or pass --url)", err)
		}
	}
	cl, err := c.Open(ctx)
	return cl, c.String(), err
}

// PublishCmd publishes messages.
type PublishCmd struct {
	Broker
	Topic   string            `arg:"" help:"Topic to publish to."`
	Payload string            `arg:"" optional:"" help:"Payload: text, @file, or - for stdin (one message per line with --lines)."`
	Key     string            `help:"Message key (ordering/partition)."`
	ID      string            `help:"Message ID (default: a new UUIDv7 per message)."`
	Header  map[string]string `short:"H" help:"Header key=value (repeatable)."`
	Count   int               `default:"1" help:"How many copies to publish."`
	Rate    float64           `help:"Messages per second (0 = as fast as possible)."`
	Lines   bool              `help:"With - or @file: publish each line as a message."`
}

// Run publishes.
func (p *PublishCmd) Run(ctx context.Context) error {
	if p.Count < 1 {
		return fmt.Errorf("publish: --count=%d: want at least 1", p.Count)
	}
	if p.ID != "" && p.Count > 1 {
		return fmt.Errorf("publish: --id=%q with --count=%d would publish one ID %d times", p.ID, p.Count, p.Count)
	}
	payloads, err := readPayloads(p.Payload, p.Lines)
	if err != nil {
		return err
	}
	c, where, err := p.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var lim *rate.Limiter
	if p.Rate > 0 {
		lim = rate.NewLimiter(rate.Limit(p.Rate), 1)
	}
	total := p.Count * len(payloads)
	bar := newBar(total, "publishing")
	n := 0
	for i := 0; i < p.Count; i++ {
		for _, body := range payloads {
			if lim != nil {
				if err := lim.Wait(ctx); err != nil {
					return err
				}
			}
			m := &pubsub.Message{ID: p.ID, Key: p.Key, Payload: body, Metadata: p.Header}
			if err := c.Publish(ctx, p.Topic, m); err != nil {
				return fmt.Errorf("publish: after %d of %d: %w", n, total, err)
			}
			n++
			_ = bar.Add(1)
			if total == 1 {
				fmt.Fprintf(os.Stderr, "published %s to %s on %s\n", m.ID, p.Topic, where)
			}
		}
	}
	_ = bar.Finish()
	if total > 1 {
		fmt.Fprintf(os.Stderr, "published %d messages to %s on %s\n", n, p.Topic, where)
	}
	return nil
}

func readPayloads(arg string, lines bool) ([][]byte, error) {
	var r io.Reader
	switch {
	case arg == "-":
		r = os.Stdin
	case strings.HasPrefix(arg, "@"):
		f, err := os.Open(arg[1:])
		if err != nil {
			return nil, fmt.Errorf("publish: payload: %w", err)
		}
		defer f.Close()
		r = f
	default:
		return [][]byte{[]byte(arg)}, nil
	}
	if !lines {
		b, err := io.ReadAll(r)
		return [][]byte{b}, err
	}
	var out [][]byte
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		out = append(out, append([]byte(nil), sc.Bytes()...))
	}
	return out, sc.Err()
}

func newBar(n int, what string) *progressbar.ProgressBar {
	if n < 100 {
		return progressbar.DefaultSilent(int64(n))
	}
	return progressbar.NewOptions(n, progressbar.OptionSetWriter(os.Stderr), progressbar.OptionSetDescription(what),
		progressbar.OptionShowCount(), progressbar.OptionShowIts(), progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionClearOnFinish())
}

// ConsumeCmd tails a topic as JSON lines.
type ConsumeCmd struct {
	Broker
	Topic   string        `arg:"" help:"Topic to read."`
	Group   string        `default:"omnibus-cli" help:"Consumer group."`
	From    string        `default:"latest" enum:"earliest,latest" help:"Where a new group starts: earliest or latest."`
	Peek    bool          `help:"Do not ack: give every message back (nack) so the group still has it."`
	Count   int           `help:"Stop after this many messages (0 = until interrupted)."`
	Timeout time.Duration `help:"Stop when no message arrived for this long (0 = wait forever)."`
}

type jsonLine struct {
	ID            string            `json:"id"`
	Key           string            `json:"key,omitempty"`
	Topic         string            `json:"topic"`
	Attempt       int               `json:"attempt"`
	PublishedAt   *time.Time        `json:"published_at,omitempty"`
	Metadata      map[string]string `json:"metadata,omitempty"`
	Payload       string            `json:"payload"`
	PayloadBase64 bool              `json:"payload_base64,omitempty"`
}

func toJSONLine(m *pubsub.Message) jsonLine {
	l := jsonLine{ID: m.ID, Key: m.Key, Topic: m.Topic, Attempt: m.Attempt, Metadata: m.Metadata}
	if !m.PublishedAt.IsZero() {
		t := m.PublishedAt.UTC()
		l.PublishedAt = &t
	}
	if utf8.Valid(m.Payload) {
		l.Payload = string(m.Payload)
	} else {
		l.Payload, l.PayloadBase64 = base64.StdEncoding.EncodeToString(m.Payload), true
	}
	return l
}

// Run consumes.
func (cc *ConsumeCmd) Run(ctx context.Context) error {
	c, _, err := cc.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	opts := []pubsub.SubscribeOption{pubsub.Group(cc.Group)}
	if cc.From == "earliest" {
		opts = append(opts, pubsub.FromOldest())
	}
	sub, err := c.Subscribe(ctx, cc.Topic, opts...)
	if err != nil {
		return err
	}
	defer sub.Close()
	enc := json.NewEncoder(os.Stdout)
	var held []*pubsub.Delivery
	defer func() {
		for _, d := range held {
			_ = d.Nack(0)
		}
	}()
	for n := 0; cc.Count == 0 || n < cc.Count; n++ {
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if cc.Timeout > 0 {
			rctx, cancel = context.WithTimeout(ctx, cc.Timeout)
		}
		d, err := sub.Receive(rctx)
		cancel()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
				return nil
			}
			return err
		}
		if err := enc.Encode(toJSONLine(d.Message)); err != nil {
			_ = d.Nack(0)
			return err
		}
		if cc.Peek {
			held = append(held, d) // nacked at the end so this run does not see them again
		} else if err := d.Ack(); err != nil {
			return err
		}
	}
	return nil
}

// DoctorCmd connects and prints the adapter's capabilities.
type DoctorCmd struct {
	URL  string `arg:"" optional:"" help:"Broker URL (default: $OMNIBUS_URL)." env:"OMNIBUS_URL"`
	Skip bool   `help:"Skip the publish/receive round trip."`
}

// Run checks the broker.
func (dc *DoctorCmd) Run(ctx context.Context) error {
	if dc.URL == "" {
		return fmt.Errorf("doctor: give a URL or set %s", config.EnvURL)
	}
	fmt.Printf("omnibus doctor %s\n\n", pubsub.Redact(dc.URL))
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pubsub.Open(octx, dc.URL)
	if err != nil {
		fmt.Printf("  connect: FAILED: %v\n", err)
		return errors.New("doctor: problems found")
	}
	defer c.Close()
	fmt.Println("  connect: ok")
	printCapabilities(os.Stdout, c.Capabilities())
	if dc.Skip {
		return nil
	}
	problems := 0
	// One fixed topic and group, so repeated checks leave nothing behind
	// but that topic.
	const topic = "omnibus.doctor"
	start := time.Now()
	sub, err := c.Subscribe(octx, topic, pubsub.Group("omnibus-doctor"), pubsub.FromOldest())
	if err != nil {
		fmt.Printf("\n  subscribe to %s: FAILED: %v\n", topic, err)
		problems++
	} else {
		defer sub.Close()
		m := &pubsub.Message{Key: "doctor", Payload: []byte("ping"), Metadata: map[string]string{"x-doctor": "1"}}
		if err := c.Publish(octx, topic, m); err != nil {
			fmt.Printf("\n  publish to %s: FAILED: %v\n", topic, err)
			problems++
		} else if d, err := receiveID(octx, sub, m.ID); err != nil {
			fmt.Printf("\n  receive from %s: FAILED: %v\n", topic, err)
			problems++
		} else {
			_ = d.Ack()
			ok := d.Message.ID == m.ID && string(d.Message.Payload) == "ping" && d.Message.Metadata["x-doctor"] == "1" && d.Message.Key == "doctor"
			status := "ok"
			if !ok {
				status = "FAILED: message came back changed"
				problems++
			}
			fmt.Printf("\n  round trip on %s: %s in %v\n", topic, status, time.Since(start).Round(time.Microsecond))
		}
	}
	if problems > 0 {
		return fmt.Errorf("doctor: %d problem(s) found", problems)
	}
	fmt.Println("\n  no problems found")
	return nil
}

// receiveID acks and skips leftovers of earlier checks until id arrives.
func receiveID(ctx context.Context, sub *pubsub.Subscription, id string) (*pubsub.Delivery, error) {
	for {
		d, err := sub.Receive(ctx)
		if err != nil || d.Message.ID == id {
			return d, err
		}
		_ = d.Ack()
	}
}

func printCapabilities(w io.Writer, caps pubsub.Capabilities) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\n  capability\tvalue\tmeaning")
	yes := func(b bool) string {
		if b {
			return "yes"
		}
		return "no"
	}
	rows := [][3]string{
		{"ordering", yes(caps.OrderingPerKey), "same-key messages arrive in publish order"},
		{"persistence", yes(caps.Persistence), "messages survive broker and consumer restarts"},
		{"nackdelay", yes(caps.NackDelay), "the broker schedules delayed redelivery (else held in process)"},
		{"replay", yes(caps.Replay), "a new group can start from the oldest message"},
		{"groups", yes(caps.Groups), "named consumer groups (compete within, fan out across)"},
		{"attemptcount", yes(caps.AttemptCount), "Attempt counts redeliveries across restarts"},
	}
	size := "no limit known"
	if caps.MaxMessageSize > 0 {
		size = fmt.Sprintf("%d bytes", caps.MaxMessageSize)
	}
	rows = append(rows, [3]string{"max message size", size, "larger payloads are rejected with ErrInvalid"})
	for _, r := range rows {
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", r[0], r[1], r[2])
	}
	tw.Flush()
}

// DLQCmd lists and replays poison topics.
type DLQCmd struct {
	List   DLQListCmd   `cmd:"" help:"List messages in a poison topic (leaves them in place)."`
	Replay DLQReplayCmd `cmd:"" help:"Publish poisoned messages back to their original topic (same IDs)."`
}

type dlqFlags struct {
	Broker
	Topic   string        `arg:"" help:"Poison topic."`
	Handler string        `help:"Only messages from this handler."`
	Reason  string        `help:"Only messages whose reason or error contains this."`
	Since   time.Duration `help:"Only messages that failed within this long ago (e.g. 1h)."`
	Limit   int           `help:"At most this many messages."`
	Idle    time.Duration `default:"2s" help:"Stop when no message arrived for this long."`
}

func (f dlqFlags) options() dlq.Options {
	o := dlq.Options{Limit: f.Limit, Idle: f.Idle, Filter: dlq.Filter{Handler: f.Handler, Reason: f.Reason}}
	if f.Since > 0 {
		o.Filter.Since = time.Now().Add(-f.Since)
	}
	return o
}

// DLQListCmd lists poison messages.
type DLQListCmd struct {
	dlqFlags
	JSON bool `help:"Print JSON lines instead of a table."`
}

// Run lists.
func (l *DLQListCmd) Run(ctx context.Context) error {
	c, _, err := l.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	if !l.JSON {
		fmt.Fprintln(tw, "ID\tHANDLER\tORIGINAL TOPIC\tATTEMPTS\tFAILED AT\tREASON")
	}
	enc := json.NewEncoder(os.Stdout)
	opts := l.options()
	var rows []dlq.Record
	opts.OnRecord = func(r dlq.Record, _ string) { rows = append(rows, r) }
	res, err := dlq.List(ctx, c, l.Topic, opts)
	sort.Slice(rows, func(i, j int) bool { return rows[i].FailedAt.Before(rows[j].FailedAt) })
	for _, r := range rows {
		if l.JSON {
			_ = enc.Encode(toJSONLine(r.Message))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", r.Message.ID, r.Handler, r.OriginalTopic, r.Attempts, r.FailedAt.Format(time.RFC3339), oneLine(r.Reason, 80))
	}
	tw.Flush()
	fmt.Fprintf(os.Stderr, "%d poison message(s) scanned, %d matched\n", res.Scanned, res.Matched)
	return err
}

func oneLine(s string, max int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > max {
		return s[:max-1] + "…"
	}
	return s
}

// DLQReplayCmd replays poison messages.
type DLQReplayCmd struct {
	dlqFlags
	To     string `help:"Destination topic (default: each message's original topic)."`
	DryRun bool   `help:"Show what would be replayed; change nothing."`
}

// Run replays.
func (r *DLQReplayCmd) Run(ctx context.Context) error {
	c, _, err := r.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	opts := r.options()
	opts.To, opts.DryRun = r.To, r.DryRun
	// The total is unknown until the topic is drained: a counter, not a bar.
	n := 0
	opts.OnRecord = func(rec dlq.Record, to string) {
		n++
		if !r.DryRun && n%100 == 0 {
			fmt.Fprintf(os.Stderr, "\rreplayed %d", n)
		}
		if r.DryRun {
			fmt.Printf("would replay %s (handler %s, %s) to %s\n", rec.Message.ID, rec.Handler, oneLine(rec.Reason, 60), to)
		}
	}
	res, err := dlq.Replay(ctx, c, r.Topic, opts)
	if n >= 100 {
		fmt.Fprintln(os.Stderr)
	}
	verb := "replayed"
	n = res.Replayed
	if r.DryRun {
		verb, n = "would replay", res.Matched
	}
	fmt.Fprintf(os.Stderr, "%d poison message(s) scanned, %d matched, %s %d\n", res.Scanned, res.Matched, verb, n)
	return err
}
