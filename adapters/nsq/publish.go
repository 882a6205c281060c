package nsq

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	gonsq "github.com/nsqio/go-nsq"

	"github.com/omnibusmq/omnibus/internal/backoff"
	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// SendBatch publishes msgs to topic as envelopes, in MPUB commands of at
// most max_body_size bytes, and returns once nsqd answered OK for each.
func (b *Broker) SendBatch(ctx context.Context, topic string, msgs []*driver.Message) error {
	if err := b.checkOpen(); err != nil {
		return err
	}
	// Encode everything first: a message too large for nsqd fails the call
	// before anything is sent.
	size := 0
	sizes := make([]int, len(msgs))
	for i, m := range msgs {
		sizes[i] = envelopeSize(m.ID, m.Key, m.Metadata, len(m.Payload))
		if sizes[i] > b.opts.MaxMessageSize {
			return fmt.Errorf("nsq: message %d (ID %q): %d bytes with its envelope (ID, key, metadata), over max_message_size %d: %w",
				i, m.ID, sizes[i], b.opts.MaxMessageSize, driver.ErrInvalid)
		}
		size += sizes[i]
	}
	buf := make([]byte, 0, size)
	bodies := make([][]byte, len(msgs))
	for i, m := range msgs {
		start := len(buf)
		buf = encodeEnvelope(buf, m.ID, m.Key, m.Metadata, m.Payload)
		bodies[i] = buf[start:len(buf):len(buf)]
	}
	slot := int(b.next.Add(1)) % len(b.slots)
	deadline := time.Now().Add(b.opts.PublishTimeout)
	// An MPUB body is a 4-byte count and a 4-byte size per message.
	for first := 0; first < len(bodies); {
		last, body := first, 4
		for last < len(bodies) && (last == first || body+4+len(bodies[last]) <= b.opts.MaxBodySize) {
			body += 4 + len(bodies[last])
			last++
		}
		if err := b.publish(ctx, slot, topic, bodies[first:last], deadline); err != nil {
			return fmt.Errorf("nsq: publish to %q: message %d (ID %q)%s: %w", topic, first, msgs[first].ID, partNote(first, last, len(msgs)), err)
		}
		first = last
	}
	return nil
}

func partNote(first, last, n int) string {
	if first == 0 && last == n {
		return ""
	}
	return fmt.Sprintf(" and the %d after it in the same MPUB", last-first-1)
}

// publish sends one PUB or MPUB and waits for nsqd's answer, sending it
// again on a new connection after a lost one until deadline. nsqd refusing
// the command is final.
func (b *Broker) publish(ctx context.Context, slot int, topic string, bodies [][]byte, deadline time.Time) error {
	var cmd *gonsq.Command
	if len(bodies) == 1 {
		cmd = gonsq.Publish(topic, bodies[0])
	} else {
		var err error
		if cmd, err = gonsq.MultiPublish(topic, bodies); err != nil {
			return fmt.Errorf("%v: %w", err, driver.ErrInvalid)
		}
	}
	// Every attempt (dial, handshake, wait for the answer) ends at deadline.
	pctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	retry := backoff.Policy{Initial: 50 * time.Millisecond, Max: time.Second}
	for attempt := 1; ; attempt++ {
		err := b.publishOnce(pctx, &b.slots[slot], cmd)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
		if pctx.Err() != nil {
			return fmt.Errorf("not confirmed within publish_timeout %v after %d attempts: %w", b.opts.PublishTimeout, attempt, err)
		}
		var perr gonsq.ErrProtocol
		if errors.As(err, &perr) && !strings.HasPrefix(perr.Reason, "E_PUB_FAILED") && !strings.HasPrefix(perr.Reason, "E_MPUB_FAILED") {
			if strings.HasPrefix(perr.Reason, "E_UNAUTHORIZED") || strings.HasPrefix(perr.Reason, "E_AUTH") {
				return fmt.Errorf("nsqd refused: %s: %w", perr.Reason, driver.ErrPermanent)
			}
			return fmt.Errorf("nsqd refused: %s: %w", perr.Reason, driver.ErrInvalid)
		}
		if errors.Is(err, driver.ErrPermanent) {
			return err
		}
		if b.closed.Load() {
			return fmt.Errorf("%w (last error: %v)", driver.ErrClosed, err)
		}
		left := time.Until(deadline)
		if left <= 0 {
			return fmt.Errorf("not confirmed within publish_timeout %v after %d attempts: %w", b.opts.PublishTimeout, attempt, err)
		}
		wait := min(retry.Delay(attempt), left)
		b.log.Warn("nsq: publish failed, retrying", "nsqd", b.addr, "topic", topic, "messages", len(bodies), "attempt", attempt, "error", err)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last error: %v)", ctx.Err(), err)
		}
	}
}

// publishOnce sends cmd on the slot's connection (dialing one if needed)
// and waits for nsqd's answer, the end of ctx (which carries
// publish_timeout), or twice the heartbeat interval.
func (b *Broker) publishOnce(ctx context.Context, s *slot, cmd *gonsq.Command) error {
	if b.closed.Load() {
		return fmt.Errorf("nsq: %w", driver.ErrClosed)
	}
	pc, err := s.get(ctx, b)
	if err != nil {
		return err
	}
	answer, err := pc.send(cmd)
	if err != nil {
		return err
	}
	wait := time.NewTimer(2 * b.opts.Heartbeat)
	defer wait.Stop()
	select {
	case err := <-answer:
		return err
	case <-wait.C:
		// nsqd heartbeats idle connections: this one is gone.
		pc.fail(fmt.Errorf("no answer within %v", 2*b.opts.Heartbeat))
		return fmt.Errorf("no answer from nsqd %s within %v", b.addr, 2*b.opts.Heartbeat)
	case <-ctx.Done():
		return ctx.Err()
	}
}
