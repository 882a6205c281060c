package activemq

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// managementAddress is where Artemis takes management requests over AMQP.
const managementAddress = "activemq.management"

// topicCaps marks a link as multicast (an Artemis "topic").
var topicCaps = []string{"topic"}

// Names of ActiveMQ Classic's virtual topics: a topic T is the topic
// "VirtualTopic.T", and group G's queue is "Consumer.G.VirtualTopic.T"
// (the broker's default virtual-topic consumer pattern Consumer.*.>, so a
// group name is one path element: no dots).
const (
	classicTopicPrefix = "VirtualTopic."
	classicQueuePrefix = "Consumer."
)

// classicStatsPrefix is where ActiveMQ Classic's statistics plugin answers
// destination queries; classicStatsEnd asks it to end the list of answers
// with an empty message.
const (
	classicStatsPrefix = "ActiveMQ.Statistics.Destination."
	classicStatsEnd    = "ActiveMQ.Statistics.Destination.List.End.With.Null"
)

// ClassicQueueName returns the name of the durable queue the adapter uses
// for (topic, group) on ActiveMQ Classic: "Consumer.<group>.VirtualTopic.<topic>".
func ClassicQueueName(topic, group string) string {
	return classicQueuePrefix + group + "." + classicTopicPrefix + topic
}

// checkName validates a topic or group name for the broker's flavor. On
// Classic, '*', '>' and ',' are destination wildcards and separators, and a
// group is one path element of its queue's name (no '.').
func (b *Broker) checkName(field, name string) error {
	if b.opts.Flavor != FlavorClassic {
		return nil
	}
	return classicName(field, name)
}

func classicName(field, name string) error {
	bad := "*>, \t\r\n"
	if field == "group" {
		bad += "."
	}
	if name == "" || strings.ContainsAny(name, bad) {
		return fmt.Errorf("activemq: %s %q: on ActiveMQ Classic a %s is non-empty and has none of %q: %w", field, name, field, bad, driver.ErrInvalid)
	}
	return nil
}

// publishTarget is the address of topic's sender link and its capabilities.
func (b *Broker) publishTarget(topic string) (string, []string) {
	if b.opts.Flavor == FlavorClassic {
		return "topic://" + classicTopicPrefix + topic, nil
	}
	return topic, topicCaps
}

// groupSource is the address of (topic, group)'s queue, and its
// capabilities, for receivers and for senders of delayed copies. An empty
// group is the topic itself (an anonymous subscription).
func (b *Broker) groupSource(topic, group string) (string, []string) {
	switch {
	case b.opts.Flavor != FlavorClassic && group == "":
		return topic, topicCaps
	case b.opts.Flavor != FlavorClassic:
		return fqqn(topic, group), topicCaps
	case group == "":
		return "topic://" + classicTopicPrefix + topic, nil
	}
	return "queue://" + ClassicQueueName(topic, group), nil
}

// ensureGroups creates the queues of Options.Groups for topic once per
// Broker: attaching a receiver to a queue's fully qualified name makes the
// broker create it. The receiver gets no credit, so it takes no message.
func (b *Broker) ensureGroups(ctx context.Context, sess *amqp.Session, topic string) error {
	if len(b.opts.Groups) == 0 {
		return nil
	}
	if err := b.topoMu.lock(ctx); err != nil {
		return fmt.Errorf("activemq: wait to create the queues of groups= for topic %q: %w", topic, err)
	}
	defer b.topoMu.unlock()
	if b.topo[topic] {
		return nil
	}
	for _, g := range b.opts.Groups {
		actx, cancel := context.WithTimeout(ctx, b.opts.ConnectionTimeout)
		src, caps := b.groupSource(topic, g)
		r, err := sess.NewReceiver(actx, src, &amqp.ReceiverOptions{
			Credit:             -1, // manual credit, none issued
			SourceCapabilities: caps,
			Durability:         amqp.DurabilityUnsettledState,
		})
		if err == nil {
			err = r.Close(actx)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("activemq: create queue %s for group %q (groups=): %w", src, g, err)
		}
	}
	b.topo[topic] = true
	b.routed.Store(topic, struct{}{})
	return nil
}

// checkRoutable fails unless the broker has at least one queue on topic's
// address (see "Messages nobody is subscribed to" in the package doc). A
// topic with a durable group queue is remembered; one with only anonymous
// subscriptions is asked again next time.
func (b *Broker) checkRoutable(ctx context.Context, sess *amqp.Session, topic string) error {
	if b.opts.DropUnroutable {
		return nil
	}
	if _, ok := b.routed.Load(topic); ok {
		return nil
	}
	if b.opts.Flavor == FlavorClassic {
		return b.checkRoutableClassic(ctx, sess, topic)
	}
	queues, err := b.queueNames(ctx, sess, topic)
	if err != nil {
		return err
	}
	if len(queues) == 0 {
		return fmt.Errorf("activemq: topic %q has no queue: the broker would drop the message; subscribe a group first, list it in groups=, or set unroutable=drop: %w", topic, driver.ErrNotFound)
	}
	for _, q := range queues {
		if strings.HasPrefix(q, topic+".") {
			b.routed.Store(topic, struct{}{})
			break
		}
	}
	return nil
}

// queueNames asks the broker's management address for the queues bound to
// address topic. An address that does not exist has none.
func (b *Broker) queueNames(ctx context.Context, sess *amqp.Session, topic string) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, b.opts.ConnectionTimeout)
	defer cancel()
	reply, done, err := request(ctx, sess, managementAddress, 1, &amqp.Message{
		ApplicationProperties: map[string]any{
			"_AMQ_ResourceName":  "address." + topic,
			"_AMQ_OperationName": "getQueueNames",
		},
		Value: "[]",
	})
	if err != nil {
		return nil, fmt.Errorf("activemq: topic %q: management request (the login needs the manage permission, or set unroutable=drop): %w", topic, err)
	}
	defer done()
	res, err := reply.Receive(ctx, nil)
	if err != nil {
		return nil, fmt.Errorf("activemq: topic %q: management answer: %w", topic, err)
	}
	_ = reply.AcceptMessage(ctx, res)
	body := managementBody(res)
	if ok, _ := res.ApplicationProperties["_AMQ_OperationSucceeded"].(bool); !ok {
		// AMQ229067 "Cannot find resource with name address.T": the address
		// does not exist (yet, or any more: the broker deletes an
		// auto-created address with its last queue).
		if strings.Contains(body, "AMQ229067") || strings.Contains(strings.ToLower(body), "cannot find resource") {
			return nil, nil
		}
		return nil, fmt.Errorf("activemq: topic %q: the broker's management refused getQueueNames: %s (the login needs the manage permission, or set unroutable=drop): %w", topic, body, driver.ErrPermanent)
	}
	var out [][]string
	if err := json.Unmarshal([]byte(body), &out); err != nil || len(out) != 1 {
		var flat []string
		if err2 := json.Unmarshal([]byte(body), &flat); err2 != nil {
			return nil, fmt.Errorf("activemq: topic %q: unexpected management answer %q", topic, body)
		}
		return flat, nil
	}
	return out[0], nil
}

func managementBody(m *amqp.Message) string {
	switch v := m.Value.(type) {
	case string:
		return v
	case nil:
	default:
		return fmt.Sprint(v)
	}
	if d := m.GetData(); d != nil {
		return string(d)
	}
	return ""
}

// checkRoutableClassic asks ActiveMQ Classic's statistics plugin for the
// group queues of topic's virtual topic (Consumer.*.VirtualTopic.<topic>)
// and, when there are none, for the topic's own consumers (anonymous
// subscriptions). A topic with a group queue is remembered.
func (b *Broker) checkRoutableClassic(ctx context.Context, sess *amqp.Session, topic string) error {
	queues, err := b.classicStats(ctx, sess, topic, "queue://"+classicStatsPrefix+classicQueuePrefix+"*."+classicTopicPrefix+topic)
	if err != nil {
		return err
	}
	if len(queues) > 0 {
		b.routed.Store(topic, struct{}{})
		return nil
	}
	topics, err := b.classicStats(ctx, sess, topic, "topic://"+classicStatsPrefix+classicTopicPrefix+topic)
	if err != nil {
		return err
	}
	for _, st := range topics {
		if n, ok := annotationInt(st["consumerCount"]); ok && n > 0 {
			return nil
		}
	}
	return fmt.Errorf("activemq: topic %q has no queue: the broker would drop the message; subscribe a group first, list it in groups=, or set unroutable=drop: %w", topic, driver.ErrNotFound)
}

// classicStats sends a statistics request to address and collects the
// answers (one map per matching destination) until the empty one that ends
// the list. A broker without the statistics plugin never answers: the
// request then fails after the connection timeout.
func (b *Broker) classicStats(parent context.Context, sess *amqp.Session, topic, address string) ([]map[string]any, error) {
	ctx, cancel := context.WithTimeout(parent, b.opts.ConnectionTimeout)
	defer cancel()
	reply, done, err := request(ctx, sess, address, 100, &amqp.Message{
		ApplicationProperties: map[string]any{classicStatsEnd: true},
		Value:                 "",
	})
	if err != nil {
		return nil, fmt.Errorf("activemq: topic %q: statistics request: %w", topic, err)
	}
	defer done()
	var out []map[string]any
	for {
		res, err := reply.Receive(ctx, nil)
		if err != nil && ctx.Err() != nil && parent.Err() == nil {
			// The link is up and the broker took the request but did not
			// answer: it has no statistics plugin, and asking again (after
			// a redial) cannot help.
			return nil, fmt.Errorf("activemq: topic %q: no answer from the broker's statistics plugin within connection_timeout %v (enable statisticsBrokerPlugin, list the groups in groups=, or set unroutable=drop): %w", topic, b.opts.ConnectionTimeout, driver.ErrPermanent)
		}
		if err != nil {
			return nil, fmt.Errorf("activemq: topic %q: statistics answer: %w", topic, err)
		}
		_ = reply.AcceptMessage(ctx, res)
		st := map[string]any{}
		switch v := res.Value.(type) {
		case map[string]any:
			st = v
		case map[any]any:
			for k, x := range v {
				st[fmt.Sprint(k)] = x
			}
		}
		if len(st) == 0 {
			return out, nil
		}
		out = append(out, st)
	}
}

// requestCloseTimeout bounds the close of request's links.
const requestCloseTimeout = 5 * time.Second

// request opens a reply link (a dynamic address with credit) and a sender
// to address, and sends req with the reply link as its reply-to. The caller
// reads the answers from the returned receiver, then calls done to close
// both links.
func request(ctx context.Context, sess *amqp.Session, address string, credit int32, req *amqp.Message) (*amqp.Receiver, func(), error) {
	reply, err := sess.NewReceiver(ctx, "", &amqp.ReceiverOptions{DynamicAddress: true, Credit: credit})
	if err != nil {
		return nil, nil, fmt.Errorf("open a reply link: %w", err)
	}
	// Closing waits for the broker's detach, also after ctx ended, but
	// never longer than requestCloseTimeout.
	closeLink := func(l interface{ Close(context.Context) error }) {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), requestCloseTimeout)
		defer cancel()
		_ = l.Close(cctx)
	}
	snd, err := sess.NewSender(ctx, address, nil)
	if err != nil {
		closeLink(reply)
		return nil, nil, fmt.Errorf("open a link to %s: %w", address, err)
	}
	done := func() {
		closeLink(snd)
		closeLink(reply)
	}
	replyTo := reply.Address()
	req.Properties = &amqp.MessageProperties{ReplyTo: &replyTo}
	if err := snd.Send(ctx, req, nil); err != nil {
		done()
		return nil, nil, fmt.Errorf("send to %s: %w", address, err)
	}
	return reply, done, nil
}
