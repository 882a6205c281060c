package activemq

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"

	amqp "github.com/Azure/go-amqp"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// managementAddress is where Artemis takes management requests over AMQP.
const managementAddress = "activemq.management"

// topicCaps marks a link as multicast (an Artemis "topic").
var topicCaps = []string{"topic"}

// ensureGroups creates the queues of Options.Groups for topic once per
// Broker: attaching a receiver to a queue's fully qualified name makes the
// broker create it. The receiver gets no credit, so it takes no message.
func (b *Broker) ensureGroups(ctx context.Context, sess *amqp.Session, topic string) error {
	if len(b.opts.Groups) == 0 {
		return nil
	}
	b.topoMu.Lock()
	defer b.topoMu.Unlock()
	if b.topo[topic] {
		return nil
	}
	for _, g := range b.opts.Groups {
		actx, cancel := context.WithTimeout(ctx, b.opts.ConnectionTimeout)
		r, err := sess.NewReceiver(actx, fqqn(topic, g), &amqp.ReceiverOptions{
			Credit:             -1, // manual credit, none issued
			SourceCapabilities: topicCaps,
			Durability:         amqp.DurabilityUnsettledState,
		})
		if err == nil {
			err = r.Close(actx)
		}
		cancel()
		if err != nil {
			return fmt.Errorf("activemq: create queue %s for group %q (groups=): %w", QueueName(topic, g), g, err)
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
	reply, err := sess.NewReceiver(ctx, "", &amqp.ReceiverOptions{DynamicAddress: true, Credit: 1})
	if err != nil {
		return nil, fmt.Errorf("activemq: topic %q: open a management reply link: %w", topic, err)
	}
	defer reply.Close(context.WithoutCancel(ctx))
	snd, err := sess.NewSender(ctx, managementAddress, nil)
	if err != nil {
		return nil, fmt.Errorf("activemq: topic %q: open a link to %s (the login needs the manage permission, or set unroutable=drop): %w", topic, managementAddress, err)
	}
	defer snd.Close(context.WithoutCancel(ctx))
	replyTo := reply.Address()
	req := &amqp.Message{
		Properties: &amqp.MessageProperties{ReplyTo: &replyTo},
		ApplicationProperties: map[string]any{
			"_AMQ_ResourceName":  "address." + topic,
			"_AMQ_OperationName": "getQueueNames",
		},
		Value: "[]",
	}
	if err := snd.Send(ctx, req, nil); err != nil {
		return nil, fmt.Errorf("activemq: topic %q: management request: %w", topic, err)
	}
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
