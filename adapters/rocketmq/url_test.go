package rocketmq

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

func TestBadURLIsAnErrorNamingTheParameter(t *testing.T) {
	cases := []struct {
		name, url, want string
	}{
		{"unknown parameter", "rocketmq://127.0.0.1:8081?queus=4", "queus"},
		{"queues out of range", "rocketmq://127.0.0.1:8081?queues=0", "queues"},
		{"bad start", "rocketmq://127.0.0.1:8081?start=middle", "start"},
		{"bad duration", "rocketmq://127.0.0.1:8081?send_timeout=soon", "send_timeout"},
		{"invisible below the proxy's minimum", "rocketmq://127.0.0.1:8081?invisible=5s", "invisible"},
		{"proxy without port", "rocketmq://127.0.0.1", "proxy endpoint"},
		{"user info", "rocketmq://ak:sk@127.0.0.1:8081", "access_key"},
		{"secret without key", "rocketmq://127.0.0.1:8081?secret_key=hunter2", "access_key and secret_key"},
		{"broker without port", "rocketmq://127.0.0.1:8081?namesrv=127.0.0.1:9876&brokers=10.0.0.1", "brokers"},
		{"name server without port", "rocketmq://127.0.0.1:8081?namesrv=10.0.0.1&brokers=127.0.0.1:10911", "namesrv"},
		{"brokers without name servers", "rocketmq://127.0.0.1:8081?brokers=127.0.0.1:10911", "namesrv and brokers"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := openURL(context.Background(), tc.url)
			if !errors.Is(err, driver.ErrInvalid) {
				t.Fatalf("err = %v, want driver.ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to name %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("err = %v prints the secret", err)
			}
		})
	}
}

func TestControlCharactersInPropertiesAreRejected(t *testing.T) {
	cases := []struct {
		name string
		m    driver.Message
		want string
	}{
		{"ID", driver.Message{ID: "a\x01b"}, "ID"},
		{"Key", driver.Message{Key: "a\nb"}, "Key"},
		{"metadata name", driver.Message{Metadata: map[string]string{"a\x01": "v"}}, "metadata name"},
		{"metadata value", driver.Message{Metadata: map[string]string{"n": "v\x02"}}, `metadata "n" value`},
		{"empty metadata name", driver.Message{Metadata: map[string]string{"": "v"}}, "empty"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := checkMessage(&tc.m)
			if !errors.Is(err, driver.ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want ErrInvalid naming %q", err, tc.want)
			}
		})
	}
	if err := checkMessage(&driver.Message{ID: "x", Key: "k", Metadata: map[string]string{"a": ""}}); err != nil {
		t.Fatalf("valid message: %v", err)
	}
}
