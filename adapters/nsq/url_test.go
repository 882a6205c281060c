package nsq_test

import (
	"context"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/adapters/nsq"
	"github.com/omnibusmq/omnibus/integration"
	"github.com/omnibusmq/omnibus/pubsub"
)

func TestParseURLReadsEveryParameter(t *testing.T) {
	addr, o, err := nsq.ParseURL("nsq://127.0.0.1:4150?lookupd=a:4161,%20b:4161&max_in_flight=7&msg_timeout=5s" +
		"&publish_connections=2&publish_timeout=3s&connect_timeout=2s&heartbeat=4s&lookupd_poll_interval=1s" +
		"&max_message_size=2097152&max_body_size=4194304&max_req_timeout=10m&durable=true&auth_secret=s3cret&client_id=me")
	if err != nil {
		t.Fatal(err)
	}
	want := nsq.Options{
		Lookupd: []string{"a:4161", "b:4161"}, MaxInFlight: 7, MsgTimeout: 5 * time.Second,
		PublishConnections: 2, PublishTimeout: 3 * time.Second, ConnectTimeout: 2 * time.Second, Heartbeat: 4 * time.Second,
		LookupdPollInterval: time.Second, MaxMessageSize: 2 << 20, MaxBodySize: 4 << 20, MaxReqTimeout: 10 * time.Minute,
		Durable: true, AuthSecret: "s3cret", ClientID: "me",
	}
	if addr != "127.0.0.1:4150" {
		t.Errorf("addr = %q", addr)
	}
	if strings.Join(o.Lookupd, ",") != strings.Join(want.Lookupd, ",") {
		t.Errorf("Lookupd = %q, want %q", o.Lookupd, want.Lookupd)
	}
	o.Lookupd, want.Lookupd = nil, nil
	if o.TLS != nil || !reflect.DeepEqual(o, want) {
		t.Errorf("options = %+v, want %+v", o, want)
	}
}

func TestParseURLRejectsBadInputNamingIt(t *testing.T) {
	cases := []struct {
		name, url, mention string
	}{
		{"UnknownParameter", "nsq://127.0.0.1:4150?lookupd_http=x:1", "lookupd_http"},
		{"Typo", "nsq://127.0.0.1:4150?max_inflight=3", "max_inflight"},
		{"BadInteger", "nsq://127.0.0.1:4150?max_in_flight=lots", "max_in_flight"},
		{"OutOfRange", "nsq://127.0.0.1:4150?publish_connections=0", "publish_connections"},
		{"BadDuration", "nsq://127.0.0.1:4150?msg_timeout=soon", "msg_timeout"},
		{"BadBool", "nsq://127.0.0.1:4150?durable=yes", "durable"},
		{"NoPort", "nsq://127.0.0.1?durable=true", "host"},
		{"Path", "nsq://127.0.0.1:4150/topic", "path"},
		{"UserInfo", "nsq://user:pw@127.0.0.1:4150", "auth_secret"},
		{"TLSFileWithoutTLS", "nsq://127.0.0.1:4150?tls_ca=/tmp/ca.pem", "tls=true"},
		{"MissingCAFile", "nsq://127.0.0.1:4150?tls=true&tls_ca=/nonexistent/ca.pem", "tls_ca"},
		{"CertWithoutKey", "nsq://127.0.0.1:4150?tls=true&tls_cert=/tmp/c.pem", "tls_key"},
		{"OtherScheme", "amqp://127.0.0.1:4150", "scheme"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := nsq.ParseURL(tc.url)
			if !errors.Is(err, pubsub.ErrInvalid) {
				t.Fatalf("ParseURL(%q) = %v, want ErrInvalid", tc.url, err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Errorf("error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestDialRejectsBadOptionsNamingTheField(t *testing.T) {
	cases := []struct {
		name  string
		opts  nsq.Options
		field string
	}{
		{"MsgTimeoutTooShort", nsq.Options{MsgTimeout: time.Millisecond}, "MsgTimeout"},
		{"HeartbeatTooLong", nsq.Options{Heartbeat: time.Hour}, "Heartbeat"},
		{"NegativeConnections", nsq.Options{PublishConnections: -1}, "PublishConnections"},
		{"TinyMaxMessageSize", nsq.Options{MaxMessageSize: 100}, "MaxMessageSize"},
		{"LookupdWithoutPort", nsq.Options{Lookupd: []string{"lookupd"}}, "Lookupd"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := nsq.Dial(context.Background(), "127.0.0.1:1", tc.opts)
			if !errors.Is(err, pubsub.ErrInvalid) || !strings.Contains(err.Error(), tc.field) {
				t.Errorf("Dial: %v, want ErrInvalid naming %s", err, tc.field)
			}
		})
	}
}

// The auth secret never appears in an error, whatever fails.
func TestErrorsNeverContainTheAuthSecret(t *testing.T) {
	const secret = "hunter2-very-secret"
	silent := integration.SilentListener(t)
	cases := []struct{ name, url string }{
		{"UnknownParameter", "nsq://127.0.0.1:4150?auth_secret=" + secret + "&bogus=1"},
		{"BadValue", "nsq://127.0.0.1:4150?auth_secret=" + secret + "&max_in_flight=x"},
		{"ConnectionRefused", "nsq://127.0.0.1:1?connect_timeout=2s&auth_secret=" + secret},
		{"NoAnswer", "nsq://" + silent + "?connect_timeout=300ms&auth_secret=" + secret},
		{"UnknownCapability", "nsq://127.0.0.1:1?auth_secret=" + secret + "&require=telepathy"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := pubsub.Open(context.Background(), tc.url)
			if err == nil {
				t.Fatal("Open succeeded, want an error")
			}
			if strings.Contains(err.Error(), secret) {
				t.Errorf("error contains the secret: %v", err)
			}
		})
	}
}

func TestOpenTimesOutAgainstAListenerThatNeverAnswers(t *testing.T) {
	addr := integration.SilentListener(t)
	start := time.Now()
	_, err := pubsub.Open(context.Background(), "nsq://"+addr+"?connect_timeout=500ms")
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("Open succeeded against a silent listener")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "no answer") {
		t.Errorf("error %v: want a deadline error saying nsqd did not answer", err)
	}
	if elapsed > 5*time.Second {
		t.Errorf("Open took %v with connect_timeout=500ms", elapsed)
	}
}

func TestOpenHonoursTheCallersContext(t *testing.T) {
	addr := integration.SilentListener(t)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := pubsub.Open(ctx, "nsq://"+addr)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Open: %v, want context.DeadlineExceeded", err)
	}
	if elapsed := time.Since(start); elapsed > 5*time.Second {
		t.Errorf("Open took %v with a 300ms context", elapsed)
	}
}
