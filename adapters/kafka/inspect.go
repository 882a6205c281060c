package kafka

import (
	"context"
	"fmt"
	"sort"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Position is where a delivered record sits in its topic. pubsub's
// Delivery.As sets a *Position:
//
//	var pos kafka.Position
//	if d.As(&pos) { fmt.Println(pos.Partition, pos.Offset) }
type Position struct {
	Partition int32
	Offset    int64
}

// As implements the delivery escape hatch (pubsub.Delivery.As): it sets a
// *Position.
func (t *ackToken) As(target any) bool {
	pos, ok := target.(*Position)
	if ok {
		*pos = Position{Partition: t.p.id, Offset: t.offset}
	}
	return ok
}

// adminCtx bounds an Inspector call: write_timeout, like every other
// request the adapter makes outside a subscription's fetch loop.
func (b *Broker) adminCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, b.opts.WriteTimeout)
}

// Topics implements driver.Inspector: every topic but Kafka's internal
// ones, with its partitions, Messages the records retained (end minus start
// offset, summed over partitions) and Groups the groups that committed an
// offset or are assigned a partition of it.
func (b *Broker) Topics(ctx context.Context) ([]driver.TopicInfo, error) {
	if err := b.enter(); err != nil {
		return nil, fmt.Errorf("kafka: list topics: %w", err)
	}
	defer b.pending.Done()
	ctx, cancel := b.adminCtx(ctx)
	defer cancel()
	td, err := b.adm.ListTopics(ctx)
	if err != nil {
		return nil, fmt.Errorf("kafka: list topics: %w", classify(err))
	}
	names := td.Names()
	if len(names) == 0 {
		return []driver.TopicInfo{}, nil
	}
	start, err := b.adm.ListStartOffsets(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("kafka: list start offsets: %w", classify(err))
	}
	end, err := b.adm.ListEndOffsets(ctx, names...)
	if err != nil {
		return nil, fmt.Errorf("kafka: list end offsets: %w", classify(err))
	}
	lags, err := b.adm.Lag(ctx)
	if err != nil {
		return nil, fmt.Errorf("kafka: list groups: %w", classify(err))
	}
	groups := map[string]int{}
	for _, l := range lags {
		for topic := range l.Lag {
			groups[topic]++
		}
	}
	out := make([]driver.TopicInfo, 0, len(names))
	for _, name := range names {
		ti := driver.TopicInfo{Name: name, Partitions: len(td[name].Partitions), Groups: groups[name]}
		for p, e := range end[name] {
			s, ok := start[name][p]
			if e.Err != nil || !ok || s.Err != nil {
				ti.Messages = -1
				break
			}
			ti.Messages += e.Offset - s.Offset
		}
		out = append(out, ti)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Groups implements driver.Inspector with kadm's lag: per partition, the
// end offset minus the group's committed offset (minus the start offset
// where the group committed nothing). InFlight is unknown (-1): Kafka
// knows positions, not deliveries. A group that failed to describe or to
// fetch its offsets is an error naming it.
func (b *Broker) Groups(ctx context.Context, topic string, groups []string) ([]driver.GroupInfo, error) {
	if err := b.enter(); err != nil {
		return nil, fmt.Errorf("kafka: list groups: %w", err)
	}
	defer b.pending.Done()
	if topic != "" {
		if err := validTopic(topic); err != nil {
			return nil, err
		}
	}
	ctx, cancel := b.adminCtx(ctx)
	defer cancel()
	lags, err := b.adm.Lag(ctx, groups...)
	if err != nil {
		return nil, fmt.Errorf("kafka: group lag: %w", classify(err))
	}
	var out []driver.GroupInfo
	for _, l := range lags.Sorted() {
		if err := l.Error(); err != nil {
			return nil, fmt.Errorf("kafka: group %q: %w", l.Group, classify(err))
		}
		for t, parts := range l.Lag {
			if topic != "" && t != topic {
				continue
			}
			gi := driver.GroupInfo{Topic: t, Group: l.Group, InFlight: -1, Members: len(l.Members)}
			for p, ml := range parts {
				pl := driver.PartitionLag{Partition: p, Committed: ml.Commit.At, End: ml.End.Offset, Lag: ml.Lag}
				if ml.Err != nil || ml.Lag < 0 {
					pl.Lag, gi.Lag = -1, -1
				} else if gi.Lag >= 0 {
					gi.Lag += ml.Lag
				}
				gi.Partitions = append(gi.Partitions, pl)
			}
			sort.Slice(gi.Partitions, func(i, j int) bool { return gi.Partitions[i].Partition < gi.Partitions[j].Partition })
			out = append(out, gi)
		}
	}
	driver.SortGroups(out)
	return out, nil
}

var _ driver.Inspector = (*Broker)(nil)

var _ driver.TopicDeleter = (*Broker)(nil)
