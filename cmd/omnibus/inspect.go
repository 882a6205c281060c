package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/omnibusmq/omnibus/pubsub"
)

// inspectFlags are shared by topics and groups.
type inspectFlags struct {
	URL     string        `arg:"" help:"Broker URL."`
	JSON    bool          `help:"Print one JSON object instead of a table."`
	Timeout time.Duration `default:"30s" help:"Give up after this long (connecting included)."`
}

// open connects within the timeout; the caller cancels.
func (f inspectFlags) open(ctx context.Context) (context.Context, context.CancelFunc, *pubsub.Client, string, error) {
	if f.Timeout <= 0 {
		return nil, nil, nil, "", usagef("--timeout=%v: want a positive duration", f.Timeout)
	}
	ctx, cancel := context.WithTimeout(ctx, f.Timeout)
	c, where, err := Broker{URL: f.URL}.open(ctx)
	if err != nil {
		cancel()
		return nil, nil, nil, "", err
	}
	return ctx, cancel, c, where, nil
}

// explain says what failed: a broker that cannot answer, the command's
// --timeout (ctx is the command's context), or the adapter's error.
func (f inspectFlags) explain(ctx context.Context, what, where string, err error) error {
	switch {
	case errors.Is(err, pubsub.ErrUnsupported):
		return fmt.Errorf("%s: not supported on %s: %w", what, where, err)
	case ctx.Err() != nil:
		return fmt.Errorf("%s on %s: no answer within --timeout=%v: %w", what, where, f.Timeout, err)
	}
	return fmt.Errorf("%s on %s: %w", what, where, err)
}

// count prints n, or "-" when the broker does not say (-1).
func count[T int | int64](n T) string {
	if n < 0 {
		return "-"
	}
	return strconv.FormatInt(int64(n), 10)
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false) // URLs keep their '&'
	return enc.Encode(v)
}

// TopicsCmd lists topics.
type TopicsCmd struct {
	inspectFlags
}

// Run lists the broker's topics.
func (tc *TopicsCmd) Run(ctx context.Context) error {
	ctx, cancel, c, where, err := tc.open(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.Close()
	ts, err := c.Topics(ctx)
	if err != nil {
		return tc.explain(ctx, "topics", where, err)
	}
	if ts == nil {
		ts = []pubsub.TopicInfo{}
	}
	if tc.JSON {
		return printJSON(stdout, struct {
			URL    string             `json:"url"`
			Topics []pubsub.TopicInfo `json:"topics"`
		}{where, ts})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TOPIC\tPARTITIONS\tMESSAGES\tGROUPS")
	for _, t := range ts {
		parts := "-"
		if t.Partitions > 0 {
			parts = strconv.Itoa(t.Partitions)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", t.Name, parts, count(t.Messages), count(t.Groups))
	}
	tw.Flush()
	fmt.Fprintf(stderr, "%d topic(s) on %s\n", len(ts), where)
	return nil
}

// GroupsCmd lists consumer groups with their lag.
type GroupsCmd struct {
	inspectFlags
	Topic      string   `arg:"" optional:"" help:"Only this topic's groups (required on RabbitMQ)."`
	Group      []string `help:"Only these groups (repeatable; required on RabbitMQ, which cannot list a topic's queues, unless the URL has groups=)."`
	Partitions bool     `help:"One row per partition where the broker has partitions (Kafka): committed and end offsets."`
}

// Run lists the groups.
func (gc *GroupsCmd) Run(ctx context.Context) error {
	ctx, cancel, c, where, err := gc.open(ctx)
	if err != nil {
		return err
	}
	defer cancel()
	defer c.Close()
	gs, err := c.Groups(ctx, gc.Topic, gc.Group...)
	if err != nil {
		return gc.explain(ctx, "groups", where, err)
	}
	if gs == nil {
		gs = []pubsub.GroupInfo{}
	}
	of := ""
	if gc.Topic != "" {
		of = " of " + gc.Topic
	}
	for _, want := range gc.Group {
		if !slices.ContainsFunc(gs, func(g pubsub.GroupInfo) bool { return g.Group == want }) {
			fmt.Fprintf(stderr, "omnibus: note: the broker reports no group %q%s\n", want, of)
		}
	}
	if gc.JSON {
		return printJSON(stdout, struct {
			URL    string             `json:"url"`
			Topic  string             `json:"topic,omitempty"`
			Groups []pubsub.GroupInfo `json:"groups"`
		}{where, gc.Topic, gs})
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	if gc.Partitions {
		fmt.Fprintln(tw, "TOPIC\tGROUP\tPARTITION\tCOMMITTED\tEND\tLAG")
	} else {
		fmt.Fprintln(tw, "TOPIC\tGROUP\tLAG\tIN FLIGHT\tMEMBERS")
	}
	for _, g := range gs {
		name := g.Group
		if name == "" {
			name = "(no group yet)"
		}
		if !gc.Partitions {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", g.Topic, name, count(g.Lag), count(g.InFlight), count(g.Members))
			continue
		}
		if len(g.Partitions) == 0 {
			fmt.Fprintf(tw, "%s\t%s\t-\t-\t-\t%s\n", g.Topic, name, count(g.Lag))
		}
		for _, p := range g.Partitions {
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\n", g.Topic, name, p.Partition, count(p.Committed), count(p.End), count(p.Lag))
		}
	}
	tw.Flush()
	fmt.Fprintf(stderr, "%d group(s) on %s\n", len(gs), where)
	return nil
}
