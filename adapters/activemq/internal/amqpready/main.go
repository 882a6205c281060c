// Command amqpready is the readiness check of scripts/brokers for ActiveMQ
// Classic: a real AMQP 1.0 round trip. It sends one durable message to a
// queue, receives it back and accepts it, all within a deadline.
//
//	AMQPREADY_PASSWORD=secret amqpready -addr 127.0.0.1:17772 -user omnibus [-timeout 10s]
//
// It exits 0 on success and 1 (printing why) otherwise. The password comes
// from the environment so that it never shows in a process list.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"strconv"
	"time"

	amqp "github.com/Azure/go-amqp"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:17772", "host:port of the AMQP transport")
	user := flag.String("user", "", "SASL PLAIN user (empty: ANONYMOUS)")
	queue := flag.String("queue", "queue://omnibus.ready", "queue to round-trip through")
	timeout := flag.Duration("timeout", 10*time.Second, "deadline of the whole round trip")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	if err := roundTrip(ctx, *addr, *user, os.Getenv("AMQPREADY_PASSWORD"), *queue); err != nil {
		fmt.Fprintln(os.Stderr, "amqpready:", err)
		os.Exit(1)
	}
	fmt.Println("amqpready: round trip through", *queue, "ok")
}

func roundTrip(ctx context.Context, addr, user, pass, queue string) error {
	sasl := amqp.SASLTypeAnonymous()
	if user != "" {
		sasl = amqp.SASLTypePlain(user, pass)
	}
	conn, err := amqp.Dial(ctx, "amqp://"+addr, &amqp.ConnOptions{SASLType: sasl, ContainerID: "omnibus-ready"})
	if err != nil {
		return fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	sess, err := conn.NewSession(ctx, nil)
	if err != nil {
		return fmt.Errorf("session: %w", err)
	}
	recv, err := sess.NewReceiver(ctx, queue, &amqp.ReceiverOptions{Credit: 10})
	if err != nil {
		return fmt.Errorf("attach a receiver to %s: %w", queue, err)
	}
	snd, err := sess.NewSender(ctx, queue, nil)
	if err != nil {
		return fmt.Errorf("attach a sender to %s: %w", queue, err)
	}
	id := "ready-" + strconv.FormatInt(time.Now().UnixNano(), 10)
	msg := &amqp.Message{Header: &amqp.MessageHeader{Durable: true}, Properties: &amqp.MessageProperties{MessageID: id}, Data: [][]byte{[]byte("ready")}}
	if err := snd.Send(ctx, msg, nil); err != nil {
		return fmt.Errorf("send to %s: %w", queue, err)
	}
	for {
		m, err := recv.Receive(ctx, nil)
		if err != nil {
			return fmt.Errorf("receive %s back from %s: %w", id, queue, err)
		}
		if err := recv.AcceptMessage(ctx, m); err != nil {
			return fmt.Errorf("accept: %w", err)
		}
		if m.Properties != nil && m.Properties.MessageID == id {
			return nil // earlier checks' leftovers are accepted and skipped
		}
	}
}
