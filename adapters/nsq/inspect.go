package nsq

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// The Inspector reads nsqd's HTTP /stats: of every nsqd that lookupd lists
// (its producers' broadcast_address:http_port) and of the URL's nsqd, whose
// HTTP listener is taken to be on its TCP port + 1 (nsqd's default layout:
// 4150 and 4151) unless lookupd lists it. Counts of several nsqds are
// summed. Each HTTP request is bounded by connect_timeout.

type nsqdStats struct {
	Topics []struct {
		Name     string `json:"topic_name"`
		Depth    int64  `json:"depth"`
		Channels []struct {
			Name     string `json:"channel_name"`
			Depth    int64  `json:"depth"`
			InFlight int64  `json:"in_flight_count"`
			Deferred int64  `json:"deferred_count"`
			Clients  int    `json:"client_count"`
		} `json:"channels"`
	} `json:"topics"`
}

type lookupdNodes struct {
	Producers []struct {
		BroadcastAddress string `json:"broadcast_address"`
		TCPPort          int    `json:"tcp_port"`
		HTTPPort         int    `json:"http_port"`
	} `json:"producers"`
}

// getJSON fetches http://addr/path into v within connect_timeout.
func (b *Broker) getJSON(ctx context.Context, addr, path string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectTimeout)
	defer cancel()
	u := "http://" + addr + path
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("nsq: GET %s: %w", u, err)
	}
	req.Header.Set("Accept", "application/vnd.nsq; version=1.0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("nsq: GET %s: %w", u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("nsq: GET %s: %w", u, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("nsq: GET %s: %s: %s", u, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("nsq: GET %s: %w", u, err)
	}
	return nil
}

// statsAddrs returns the HTTP addresses of the nsqds to ask.
func (b *Broker) statsAddrs(ctx context.Context) ([]string, error) {
	host, port, _ := net.SplitHostPort(b.addr)
	seen := map[string]bool{}
	var addrs []string
	add := func(a string) {
		if !seen[a] {
			seen[a] = true
			addrs = append(addrs, a)
		}
	}
	own := false
	for _, l := range b.opts.Lookupd {
		var nodes lookupdNodes
		if err := b.getJSON(ctx, l, "/nodes", &nodes); err != nil {
			return nil, err
		}
		for _, p := range nodes.Producers {
			add(net.JoinHostPort(p.BroadcastAddress, strconv.Itoa(p.HTTPPort)))
			if p.BroadcastAddress == host && strconv.Itoa(p.TCPPort) == port {
				own = true
			}
		}
	}
	if !own {
		n, err := strconv.Atoi(port)
		if err != nil {
			return nil, fmt.Errorf("nsq: nsqd address %q: bad port: %w", b.addr, driver.ErrInvalid)
		}
		add(net.JoinHostPort(host, strconv.Itoa(n+1)))
	}
	return addrs, nil
}

// stats returns every asked nsqd's /stats (of topic only, when not "").
func (b *Broker) stats(ctx context.Context, topic string) ([]nsqdStats, error) {
	if err := b.checkOpen(); err != nil {
		return nil, err
	}
	addrs, err := b.statsAddrs(ctx)
	if err != nil {
		return nil, err
	}
	path := "/stats?format=json&include_clients=false"
	if topic != "" {
		path += "&topic=" + url.QueryEscape(topic)
	}
	out := make([]nsqdStats, len(addrs))
	for i, a := range addrs {
		if err := b.getJSON(ctx, a, path, &out[i]); err != nil {
			return nil, fmt.Errorf("%w (nsqd's HTTP stats; give lookupd= to find nsqd's HTTP ports)", err)
		}
	}
	return out, nil
}

// Topics implements driver.Inspector from nsqd's /stats: Messages is what
// nsqd holds for the topic, in the topic's own queue (messages waiting for
// its first channel) and in each channel (waiting, in flight or deferred;
// a message counts once per channel); Groups is its channels.
func (b *Broker) Topics(ctx context.Context) ([]driver.TopicInfo, error) {
	all, err := b.stats(ctx, "")
	if err != nil {
		return nil, fmt.Errorf("nsq: list topics: %w", err)
	}
	byName := map[string]*driver.TopicInfo{}
	channels := map[string]map[string]bool{}
	for _, s := range all {
		for _, t := range s.Topics {
			ti := byName[t.Name]
			if ti == nil {
				ti = &driver.TopicInfo{Name: t.Name}
				byName[t.Name] = ti
				channels[t.Name] = map[string]bool{}
			}
			ti.Messages += t.Depth
			for _, c := range t.Channels {
				ti.Messages += c.Depth + c.InFlight + c.Deferred
				channels[t.Name][c.Name] = true
			}
		}
	}
	out := make([]driver.TopicInfo, 0, len(byName))
	for name, ti := range byName {
		ti.Groups = len(channels[name])
		out = append(out, *ti)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Groups implements driver.Inspector from nsqd's /stats: a group is a
// channel; Lag is its depth plus its in-flight and deferred messages plus
// those the topic holds that nsqd has not copied to its channels yet,
// InFlight the in-flight ones, Members its connected clients.
func (b *Broker) Groups(ctx context.Context, topic string, groups []string) ([]driver.GroupInfo, error) {
	all, err := b.stats(ctx, topic)
	if err != nil {
		return nil, fmt.Errorf("nsq: list groups: %w", err)
	}
	want := map[string]bool{}
	for _, g := range groups {
		want[g] = true
	}
	type key struct{ topic, channel string }
	byKey := map[key]*driver.GroupInfo{}
	for _, s := range all {
		for _, t := range s.Topics {
			if topic != "" && t.Name != topic {
				continue
			}
			for _, c := range t.Channels {
				if len(want) > 0 && !want[c.Name] {
					continue
				}
				k := key{t.Name, c.Name}
				gi := byKey[k]
				if gi == nil {
					gi = &driver.GroupInfo{Topic: t.Name, Group: c.Name}
					byKey[k] = gi
				}
				// t.Depth: published, not yet copied to the channels
				// (nsqd copies asynchronously); every channel gets them.
				gi.Lag += t.Depth + c.Depth + c.InFlight + c.Deferred
				gi.InFlight += c.InFlight
				gi.Members += c.Clients
			}
		}
	}
	out := make([]driver.GroupInfo, 0, len(byKey))
	for _, gi := range byKey {
		out = append(out, *gi)
	}
	driver.SortGroups(out)
	return out, nil
}

var _ driver.Inspector = (*Broker)(nil)
