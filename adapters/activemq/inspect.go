package activemq

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// The Inspector asks the broker's management address (the same requests
// Artemis's console makes, over AMQP): the login needs the "manage"
// permission. It opens a connection of its own for the call; every dial,
// link attach and answer is bounded by connection_timeout.

// mgmt is a request/answer channel to the management address.
type mgmt struct {
	b     *Broker
	conn  *amqp.Conn
	reply *amqp.Receiver
	snd   *amqp.Sender
	addr  string // the reply address, a temporary queue
}

func (b *Broker) openMgmt(ctx context.Context) (*mgmt, error) {
	conn, err := b.dial(ctx, "inspect")
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectionTimeout)
	defer cancel()
	m := &mgmt{b: b, conn: conn}
	sess, err := conn.NewSession(ctx, nil)
	if err == nil {
		m.reply, err = sess.NewReceiver(ctx, "", &amqp.ReceiverOptions{DynamicAddress: true, Credit: 1})
	}
	if err == nil {
		m.addr = m.reply.Address()
		m.snd, err = sess.NewSender(ctx, managementAddress, nil)
	}
	if err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("activemq: open the management links (the login needs the manage permission): %w", err)
	}
	return m, nil
}

func (m *mgmt) close() { _ = m.conn.Close() }

// call runs operation op on resource ("broker", "address.T", "queue.Q")
// and returns the first value of the answer, as JSON.
func (m *mgmt) call(ctx context.Context, resource, op string) (json.RawMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, m.b.opts.ConnectionTimeout)
	defer cancel()
	req := &amqp.Message{
		Properties: &amqp.MessageProperties{ReplyTo: &m.addr},
		ApplicationProperties: map[string]any{
			"_AMQ_ResourceName":  resource,
			"_AMQ_OperationName": op,
		},
		Value: "[]",
	}
	if err := m.snd.Send(ctx, req, nil); err != nil {
		return nil, fmt.Errorf("activemq: management %s %s: %w", resource, op, err)
	}
	res, err := m.reply.Receive(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("activemq: management %s %s: no answer: %w", resource, op, err)
	}
	_ = m.reply.AcceptMessage(ctx, res)
	body := managementBody(res)
	if ok, _ := res.ApplicationProperties["_AMQ_OperationSucceeded"].(bool); !ok {
		if strings.Contains(body, "AMQ229067") {
			return nil, fmt.Errorf("activemq: management %s %s: %s: %w", resource, op, body, driver.ErrNotFound)
		}
		return nil, fmt.Errorf("activemq: management %s %s refused (the login needs the manage permission): %s: %w", resource, op, body, driver.ErrPermanent)
	}
	var vals []json.RawMessage
	if err := json.Unmarshal([]byte(body), &vals); err != nil || len(vals) != 1 {
		return nil, fmt.Errorf("activemq: management %s %s: unexpected answer %q", resource, op, body)
	}
	return vals[0], nil
}

// strings returns a list answer; count a number answer.
func (m *mgmt) strings(ctx context.Context, resource, op string) ([]string, error) {
	v, err := m.call(ctx, resource, op)
	if err != nil {
		return nil, err
	}
	var out []string
	if err := json.Unmarshal(v, &out); err != nil {
		return nil, fmt.Errorf("activemq: management %s %s: unexpected answer %s", resource, op, v)
	}
	return out, nil
}

func (m *mgmt) count(ctx context.Context, resource, op string) (int64, error) {
	v, err := m.call(ctx, resource, op)
	if err != nil {
		return 0, err
	}
	var n int64
	if err := json.Unmarshal(v, &n); err != nil {
		return 0, fmt.Errorf("activemq: management %s %s: unexpected answer %s", resource, op, v)
	}
	return n, nil
}

// internalAddress reports the broker's own addresses: management,
// notifications and temporary ones.
func internalAddress(name string) bool {
	return strings.HasPrefix(name, "activemq.") || strings.HasPrefix(name, "$")
}

// isTopic reports whether a listed address is a topic: not one of the
// broker's own, and not a temporary address (another client's reply
// address, say). An address deleted since it was listed is not a topic.
func (m *mgmt) isTopic(ctx context.Context, name string) (bool, error) {
	if internalAddress(name) || name == m.addr {
		return false, nil
	}
	v, err := m.call(ctx, "address."+name, "isTemporary")
	if errors.Is(err, driver.ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	var temp bool
	if err := json.Unmarshal(v, &temp); err != nil {
		return false, fmt.Errorf("activemq: management address.%s isTemporary: unexpected answer %s", name, v)
	}
	return !temp, nil
}

// Topics implements driver.Inspector through the management address:
// every address but the broker's internal ones (dead-letter and expiry
// addresses included), Messages the messages in its queues (a message
// counts once per group), Groups its group queues ("<topic>.<group>").
// Temporary addresses are left out, and so is an address deleted while the
// listing runs.
func (b *Broker) Topics(ctx context.Context) ([]driver.TopicInfo, error) {
	m, err := b.openMgmt(ctx)
	if err != nil {
		return nil, fmt.Errorf("activemq: list topics: %w", err)
	}
	defer m.close()
	names, err := m.strings(ctx, "broker", "getAddressNames")
	if err != nil {
		return nil, fmt.Errorf("activemq: list topics: %w", err)
	}
	sort.Strings(names)
	out := []driver.TopicInfo{}
	for _, name := range names {
		ok, err := m.isTopic(ctx, name)
		if err != nil {
			return nil, fmt.Errorf("activemq: list topics: %w", err)
		}
		if !ok {
			continue
		}
		ti := driver.TopicInfo{Name: name}
		ti.Messages, err = m.count(ctx, "address."+name, "getMessageCount")
		var queues []string
		if err == nil {
			queues, err = m.strings(ctx, "address."+name, "getQueueNames")
		}
		if errors.Is(err, driver.ErrNotFound) {
			continue // deleted since it was listed
		}
		if err != nil {
			return nil, fmt.Errorf("activemq: list topics: %w", err)
		}
		for _, q := range queues {
			if strings.HasPrefix(q, name+".") {
				ti.Groups++
			}
		}
		out = append(out, ti)
	}
	return out, nil
}

// Groups implements driver.Inspector through the management address: the
// groups of a topic are its address's queues named "<topic>.<group>"
// (anonymous subscriptions' private queues are not listed); Lag is the
// queue's message count (waiting, scheduled by a nack delay, or being
// delivered), InFlight those being delivered, Members its consumers. With
// no topic, every topic's groups, leaving out temporary addresses and
// topics or groups deleted while the listing runs.
func (b *Broker) Groups(ctx context.Context, topic string, groups []string) ([]driver.GroupInfo, error) {
	m, err := b.openMgmt(ctx)
	if err != nil {
		return nil, fmt.Errorf("activemq: list groups: %w", err)
	}
	defer m.close()
	topics := []string{topic}
	if topic == "" {
		if topics, err = m.strings(ctx, "broker", "getAddressNames"); err != nil {
			return nil, fmt.Errorf("activemq: list groups: %w", err)
		}
	}
	want := map[string]bool{}
	for _, g := range groups {
		want[g] = true
	}
	all := topic == ""
	var out []driver.GroupInfo
	for _, t := range topics {
		if all {
			ok, err := m.isTopic(ctx, t)
			if err != nil {
				return nil, fmt.Errorf("activemq: list groups: %w", err)
			}
			if !ok {
				continue
			}
		}
		queues, err := m.strings(ctx, "address."+t, "getQueueNames")
		if all && errors.Is(err, driver.ErrNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("activemq: list groups of %q: %w", t, err)
		}
		for _, q := range queues {
			g, ok := strings.CutPrefix(q, t+".")
			if !ok || (len(want) > 0 && !want[g]) {
				continue
			}
			gi := driver.GroupInfo{Topic: t, Group: g}
			if gi.Lag, err = m.count(ctx, "queue."+q, "getMessageCount"); err == nil {
				if gi.InFlight, err = m.count(ctx, "queue."+q, "getDeliveringCount"); err == nil {
					var n int64
					n, err = m.count(ctx, "queue."+q, "getConsumerCount")
					gi.Members = int(n)
				}
			}
			if errors.Is(err, driver.ErrNotFound) {
				continue // deleted since it was listed
			}
			if err != nil {
				return nil, fmt.Errorf("activemq: group %q of %q: %w", g, t, err)
			}
			out = append(out, gi)
		}
	}
	driver.SortGroups(out)
	return out, nil
}

var _ driver.Inspector = (*Broker)(nil)
