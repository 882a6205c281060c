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

	"golang.org/x/time/rate"

	"github.com/omnibusmq/omnibus/adapters/kafka"
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
	if err == nil && cl != nil && strings.HasPrefix(c.String(), "mem:") {
		fmt.Fprintln(stderr, "omnibus: note: mem:// lives inside this one process: another omnibus command (or program) does not see its messages, and they are gone when this command ends")
	}
	return cl, c.String(), err
}

// PublishCmd publishes messages.
type PublishCmd struct {
	Broker
	Topic   string            `arg:"" help:"Topic to publish to."`
	Payload string            `arg:"" optional:"" help:"Payload: text, @file, or - for stdin (one message per line with --lines)."`
	Key     string            `help:"Message key (ordering/partition)."`
	ID      string            `help:"Message ID (default: a new UUIDv7 per message)."`
	Header  map[string]string `short:"H" mapsep:"none" help:"Header key=value (repeatable; the value may contain any character, ';' and '=' too)."`
	Count   int               `default:"1" help:"How many copies to publish."`
	Rate    float64           `help:"Messages per second (0 = as fast as possible)."`
	Lines   bool              `help:"With - or @file: publish each line as a message."`
}

// Run publishes.
func (p *PublishCmd) Run(ctx context.Context) error {
	if p.Count < 1 {
		return usagef("publish: --count=%d: want at least 1", p.Count)
	}
	if p.ID != "" && p.Count > 1 {
		return usagef("publish: --id=%q with --count=%d would publish one ID %d times", p.ID, p.Count, p.Count)
	}
	if p.Payload == "" && !p.Lines {
		return usagef("publish: no payload: give text, @file, or - for stdin (an empty message: - with empty stdin)")
	}
	if p.Lines && p.Payload != "-" && !strings.HasPrefix(p.Payload, "@") {
		return usagef("publish: --lines reads - (stdin) or @file, not %q", p.Payload)
	}
	payloads, err := readPayloads(p.Payload, p.Lines)
	if err != nil {
		return err
	}
	if len(payloads) == 0 {
		return fmt.Errorf("publish: %s has no lines: nothing published", map[bool]string{true: "stdin", false: p.Payload}[p.Payload == "-"])
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
	bar := newProgress(total, "published")
	n := 0
	interrupted := func(err error) error {
		bar.stop()
		return fmt.Errorf("publish: interrupted: %d of %d message(s) sent to %s: %w", n, total, p.Topic, err)
	}
	for i := 0; i < p.Count; i++ {
		for _, body := range payloads {
			if lim != nil {
				if err := lim.Wait(ctx); err != nil {
					return interrupted(err)
				}
			}
			m := &pubsub.Message{ID: p.ID, Key: p.Key, Payload: body, Metadata: p.Header}
			if err := c.Publish(ctx, p.Topic, m); err != nil {
				if ctx.Err() != nil {
					return interrupted(err)
				}
				return fmt.Errorf("publish: %d of %d message(s) sent to %s, then: %w", n, total, p.Topic, err)
			}
			n++
			bar.add(1)
			if total == 1 {
				fmt.Fprintf(stderr, "published %s to %s on %s\n", m.ID, p.Topic, where)
			}
		}
	}
	bar.stop()
	if total > 1 {
		fmt.Fprintf(stderr, "published %d messages to %s on %s\n", n, p.Topic, where)
	}
	return nil
}

func readPayloads(arg string, lines bool) ([][]byte, error) {
	var r io.Reader
	switch {
	case arg == "-":
		r = stdin
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

// ConsumeCmd tails a topic as JSON lines.
type ConsumeCmd struct {
	Broker
	Topic     string        `arg:"" help:"Topic to read."`
	Group     string        `default:"omnibus-cli" help:"Consumer group."`
	From      string        `default:"latest" enum:"earliest,latest" help:"Where a new group starts: earliest or latest."`
	Peek      bool          `help:"Look without taking: on brokers that replay (Kafka) read from the oldest with a throwaway group, leaving the group's messages and offsets as they were; elsewhere hold the group's messages and give them back at the end, which counts a delivery attempt (stderr says so)."`
	Count     int           `aliases:"max" help:"Stop after this many messages (0 = until interrupted; with --peek on a broker that cannot replay, 0 means 100)."`
	Timeout   time.Duration `help:"Stop when no message arrived for this long (0 = wait forever)."`
	ExitAtEnd bool          `short:"e" help:"Stop at the end of what is there: when no message arrived for --timeout (default 2s with -e)."`
}

// peekDefault is how many messages --peek holds when --count is not given,
// on a broker that cannot replay.
const peekDefault = 100

type jsonLine struct {
	ID            string            `json:"id"`
	Key           string            `json:"key,omitempty"`
	Topic         string            `json:"topic"`
	Partition     *int32            `json:"partition,omitempty"` // Kafka
	Offset        *int64            `json:"offset,omitempty"`    // Kafka
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

// deliveryLine is toJSONLine with where the broker keeps the message, where
// it says (Kafka: partition and offset, through Delivery.As).
func deliveryLine(d *pubsub.Delivery) jsonLine {
	l := toJSONLine(d.Message)
	var pos kafka.Position
	if d.As(&pos) {
		l.Partition, l.Offset = &pos.Partition, &pos.Offset
	}
	return l
}

// Run consumes.
func (cc *ConsumeCmd) Run(ctx context.Context) error {
	if cc.Count < 0 || cc.Timeout < 0 {
		return usagef("consume: --count=%d --timeout=%v: want values ≥ 0", cc.Count, cc.Timeout)
	}
	if cc.ExitAtEnd && cc.Timeout == 0 {
		cc.Timeout = 2 * time.Second
	}
	c, where, err := cc.open(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	group, limit := cc.Group, cc.Count
	opts := []pubsub.SubscribeOption{}
	holdAll := false
	switch {
	case cc.Peek && c.Capabilities().Replay:
		// A group of its own that commits nothing: the real group's
		// position and every message stay as they were.
		group = "omnibus-peek-" + strings.ReplaceAll(pubsub.NewID(), "-", "")[:16]
		opts = append(opts, pubsub.FromOldest())
		fmt.Fprintf(stderr, "omnibus: peek: reading %s from the oldest message with the throwaway group %s; group %s and its messages stay as they were\n", cc.Topic, group, cc.Group)
	case cc.Peek:
		holdAll = true
		if limit == 0 {
			limit = peekDefault
		}
		opts = append(opts, pubsub.Prefetch(limit))
		fmt.Fprintf(stderr, "omnibus: peek on %s: this broker cannot show a group's messages without delivering them: "+
			"up to %d are held and given back when the peek ends; each counts as a delivery attempt (Attempt +1), "+
			"which moves it toward a poison limit. Use --count N to hold fewer.\n", where, limit)
	case cc.From == "earliest":
		opts = append(opts, pubsub.FromOldest())
	}
	opts = append(opts, pubsub.Group(group))
	sub, err := c.Subscribe(ctx, cc.Topic, opts...)
	if err != nil {
		return err
	}
	// Held messages are neither acked nor nacked: Close gives them back,
	// in the broker's order (a nack before Close could have them fetched
	// again by this subscription, one more delivery attempt each).
	defer sub.Close()
	enc := json.NewEncoder(stdout)
	for n := 0; limit == 0 || n < limit; n++ {
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
		if err := enc.Encode(deliveryLine(d)); err != nil {
			_ = d.Nack(0)
			return err
		}
		if holdAll {
			continue // held: given back by Close, so this run does not see them again
		}
		// With --peek here, this acks in the throwaway group only.
		if err := d.Ack(); err != nil {
			return err
		}
	}
	return nil
}

// DoctorCmd connects and prints the adapter's capabilities.
type DoctorCmd struct {
	URL  string `arg:"" optional:"" help:"Broker URL (default: $OMNIBUS_URL)." env:"OMNIBUS_URL"`
	Skip bool   `help:"Skip the publish/receive round trip."`
	JSON bool   `help:"Print one JSON object instead of text."`
}

// doctorReport is what doctor found; --json prints it.
type doctorReport struct {
	URL          string         `json:"url"`
	Connect      string         `json:"connect"` // "ok" or the error
	Capabilities map[string]any `json:"capabilities,omitempty"`
	Checks       []doctorCheck  `json:"checks,omitempty"`
	Problems     int            `json:"problems"`
	caps         pubsub.Capabilities
}

type doctorCheck struct {
	Name   string  `json:"name"`
	Status string  `json:"status"` // "ok" or "FAILED: ..."
	Millis float64 `json:"ms,omitempty"`
}

// Run checks the broker.
func (dc *DoctorCmd) Run(ctx context.Context) error {
	if dc.URL == "" {
		return usagef("doctor: give a URL or set %s", config.EnvURL)
	}
	rep := dc.check(ctx)
	if dc.JSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(rep); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(stdout, "omnibus doctor %s\n\n", rep.URL)
		if rep.Connect != "ok" {
			fmt.Fprintf(stdout, "  connect: FAILED: %s\n", rep.Connect)
		} else {
			fmt.Fprintln(stdout, "  connect: ok")
			printCapabilities(stdout, rep.caps)
		}
		for _, c := range rep.Checks {
			if c.Millis > 0 {
				fmt.Fprintf(stdout, "\n  %s: %s in %v\n", c.Name, c.Status, time.Duration(c.Millis*float64(time.Millisecond)).Round(time.Microsecond))
			} else {
				fmt.Fprintf(stdout, "\n  %s: %s\n", c.Name, c.Status)
			}
		}
		if rep.Problems == 0 {
			fmt.Fprintln(stdout, "\n  no problems found")
		}
	}
	if rep.Problems > 0 {
		return fmt.Errorf("doctor: %d problem(s) found", rep.Problems)
	}
	return nil
}

func (dc *DoctorCmd) check(ctx context.Context) *doctorReport {
	rep := &doctorReport{URL: pubsub.Redact(dc.URL)}
	octx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	c, err := pubsub.Open(octx, dc.URL)
	if err != nil {
		rep.URL = pubsub.RedactFor(dc.URL, err)
		rep.Connect, rep.Problems = err.Error(), 1
		return rep
	}
	defer c.Close()
	rep.Connect, rep.caps = "ok", c.Capabilities()
	rep.Capabilities = map[string]any{
		"ordering": rep.caps.OrderingPerKey, "persistence": rep.caps.Persistence, "nackdelay": rep.caps.NackDelay,
		"replay": rep.caps.Replay, "groups": rep.caps.Groups, "attemptcount": rep.caps.AttemptCount,
		"max_message_size": rep.caps.MaxMessageSize,
		"topic_names":      rep.caps.TopicNames.String(), "group_names": rep.caps.GroupNames.String(),
	}
	if dc.Skip {
		return rep
	}
	fail := func(name string, err error) {
		rep.Checks = append(rep.Checks, doctorCheck{Name: name, Status: "FAILED: " + err.Error()})
		rep.Problems++
	}
	// One fixed topic and group, so repeated checks leave nothing behind
	// but that topic.
	const topic = "omnibus.doctor"
	start := time.Now()
	sub, err := c.Subscribe(octx, topic, pubsub.Group("omnibus-doctor"), pubsub.FromOldest())
	if err != nil {
		fail("subscribe to "+topic, err)
		return rep
	}
	defer sub.Close()
	m := &pubsub.Message{Key: "doctor", Payload: []byte("ping"), Metadata: map[string]string{"x-doctor": "1"}}
	if err := c.Publish(octx, topic, m); err != nil {
		fail("publish to "+topic, err)
		return rep
	}
	d, err := receiveID(octx, sub, m.ID)
	if err != nil {
		fail("receive from "+topic, err)
		return rep
	}
	_ = d.Ack()
	ok := d.Message.ID == m.ID && string(d.Message.Payload) == "ping" && d.Message.Metadata["x-doctor"] == "1" && d.Message.Key == "doctor"
	check := doctorCheck{Name: "round trip on " + topic, Status: "ok", Millis: float64(time.Since(start).Microseconds()) / 1000}
	if !ok {
		check.Status = "FAILED: message came back changed"
		rep.Problems++
	}
	rep.Checks = append(rep.Checks, check)
	return rep
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
	rows = append(rows, [3]string{"max message size", size, "larger payloads are rejected with ErrInvalid"},
		[3]string{"topic names", caps.TopicNames.String(), "other topic names are rejected with ErrInvalid"},
		[3]string{"group names", caps.GroupNames.String(), "other group names are rejected with ErrInvalid"})
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
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if !l.JSON {
		fmt.Fprintln(tw, "ID\tHANDLER\tORIGINAL TOPIC\tATTEMPTS\tFAILED AT\tREASON")
	}
	enc := json.NewEncoder(stdout)
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
	fmt.Fprintf(stderr, "%d poison message(s) scanned, %d matched\n", res.Scanned, res.Matched)
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
	line := newLiveLine(stderr)
	opts.OnRecord = func(rec dlq.Record, to string) {
		n++
		if !r.DryRun && n%100 == 0 {
			line.update("replayed %d", n)
		}
		if r.DryRun {
			fmt.Fprintf(stdout, "would replay %s (handler %s, %s) to %s\n", rec.Message.ID, rec.Handler, oneLine(rec.Reason, 60), to)
		}
	}
	res, err := dlq.Replay(ctx, c, r.Topic, opts)
	if n >= 100 && line.tty {
		fmt.Fprintln(stderr)
	}
	verb := "replayed"
	n = res.Replayed
	if r.DryRun {
		verb, n = "would replay", res.Matched
	}
	fmt.Fprintf(stderr, "%d poison message(s) scanned, %d matched, %s %d\n", res.Scanned, res.Matched, verb, n)
	return err
}
