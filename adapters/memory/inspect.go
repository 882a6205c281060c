package memory

import (
	"context"
	"fmt"
	"sort"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Topics implements driver.Inspector for this process's broker (a mem://
// broker lives in one process: another process sees none of it): Messages
// is the most unacked messages any one of the topic's groups (or its
// backlog) holds, Groups its named groups.
func (c *Conn) Topics(context.Context) ([]driver.TopicInfo, error) {
	if c.isClosed() {
		return nil, fmt.Errorf("mem: list topics: %w", driver.ErrClosed)
	}
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	out := make([]driver.TopicInfo, 0, len(c.b.topics))
	for name, t := range c.b.topics {
		ti := driver.TopicInfo{Name: name}
		if t.backlog != nil {
			ti.Messages = int64(t.backlog.unacked)
		}
		for _, g := range t.groups {
			if g.anon {
				continue
			}
			ti.Groups++
			ti.Messages = max(ti.Messages, int64(g.unacked))
		}
		out = append(out, ti)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Groups implements driver.Inspector for this process's broker: Lag is a
// named group's unacked messages (ready, delayed or in flight), InFlight
// those delivered or delayed by a nack, Members its open subscriptions.
// Messages waiting for a topic's first named group are group "".
// Anonymous subscriptions are private and not listed.
func (c *Conn) Groups(_ context.Context, topic string, groups []string) ([]driver.GroupInfo, error) {
	if c.isClosed() {
		return nil, fmt.Errorf("mem: list groups: %w", driver.ErrClosed)
	}
	want := map[string]bool{}
	for _, g := range groups {
		want[g] = true
	}
	c.b.mu.Lock()
	defer c.b.mu.Unlock()
	var out []driver.GroupInfo
	info := func(topic, name string, g *group) driver.GroupInfo {
		return driver.GroupInfo{Topic: topic, Group: name, Lag: int64(g.unacked), InFlight: int64(g.unacked - g.readyLen()), Members: g.members}
	}
	for name, t := range c.b.topics {
		if topic != "" && name != topic {
			continue
		}
		if t.backlog != nil && len(want) == 0 {
			out = append(out, info(name, "", t.backlog))
		}
		for gname, g := range t.groups {
			if !g.anon && (len(want) == 0 || want[gname]) {
				out = append(out, info(name, gname, g))
			}
		}
	}
	driver.SortGroups(out)
	return out, nil
}

var _ driver.Inspector = (*Conn)(nil)
