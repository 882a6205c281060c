package nsq

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"testing"
)

func TestEnvelopeRoundTripsEveryField(t *testing.T) {
	cases := []struct {
		name    string
		id, key string
		md      map[string]string
		payload []byte
	}{
		{"AllEmpty", "", "", nil, nil},
		{"IDOnly", "0190f6a4-7b1c-7d2e-8f00-000000000001", "", nil, []byte("x")},
		{"KeyAndMetadata", "id", "order-42", map[string]string{"content-type": "application/json", "x-empty": ""}, []byte(`{"a":1}`)},
		{"BinaryEverywhere", "\x00\xff", "\xff\x01", map[string]string{"\x00": "\xff\xfe", "": "v"}, []byte{0xff, 0x01, 0, 0}},
		{"LongFields", strings.Repeat("i", 300), strings.Repeat("k", 20000), map[string]string{strings.Repeat("n", 200): strings.Repeat("v", 70000)}, bytes.Repeat([]byte{7}, 1<<16)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := encodeEnvelope(nil, tc.id, tc.key, tc.md, tc.payload)
			if len(body) != envelopeSize(tc.id, tc.key, tc.md, len(tc.payload)) {
				t.Errorf("encoded %d bytes, envelopeSize says %d", len(body), envelopeSize(tc.id, tc.key, tc.md, len(tc.payload)))
			}
			id, key, md, payload, err := decodeEnvelope(body)
			if err != nil {
				t.Fatalf("decode: %v", err)
			}
			if id != tc.id || key != tc.key || !bytes.Equal(payload, tc.payload) || !maps.Equal(md, tc.md) {
				t.Errorf("decoded (%q, %q, %v, %d bytes), want (%q, %q, %v, %d bytes)", id, key, md, len(payload), tc.id, tc.key, tc.md, len(tc.payload))
			}
		})
	}
}

func TestEnvelopeOverheadIsSmall(t *testing.T) {
	const uuid = "0190f6a4-7b1c-7d2e-8f00-000000000001"
	if n := envelopeSize(uuid, "", nil, 0); n != 41 {
		t.Errorf("envelope of a UUID ID, no key, no metadata: %d bytes, want 41", n)
	}
}

func TestDecodeEnvelopeRejectsMalformedBodies(t *testing.T) {
	cases := []struct {
		name string
		body []byte
	}{
		{"Empty", nil},
		{"PlainText", []byte(`{"order":42}`)},
		{"OtherVersion", []byte{0xff, 0x02, 0, 0, 0}},
		{"TruncatedAfterMagic", []byte{0xff, 0x01}},
		{"IDLongerThanBody", []byte{0xff, 0x01, 10, 'a'}},
		{"BadVarint", []byte{0xff, 0x01, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}},
		{"HugeMetadataCount", []byte{0xff, 0x01, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f}},
		{"MetadataValueMissing", []byte{0xff, 0x01, 0, 0, 1, 1, 'k'}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if _, _, _, _, err := decodeEnvelope(tc.body); !errors.Is(err, errEnvelope) {
				t.Errorf("decode %x: %v, want errEnvelope", tc.body, err)
			}
		})
	}
}

func FuzzDecodeEnvelope(f *testing.F) {
	f.Add([]byte{})
	f.Add([]byte("plain"))
	f.Add(encodeEnvelope(nil, "id", "key", map[string]string{"a": "b"}, []byte("payload")))
	f.Add([]byte{0xff, 0x01, 0, 0, 0xff, 0xff, 0xff, 0xff, 0x0f})
	f.Fuzz(func(t *testing.T, body []byte) {
		id, key, md, payload, err := decodeEnvelope(body)
		if err != nil {
			if !errors.Is(err, errEnvelope) {
				t.Fatalf("error %v does not wrap errEnvelope", err)
			}
			return
		}
		// Whatever decodes re-encodes to something that decodes the same.
		again := encodeEnvelope(nil, id, key, md, payload)
		id2, key2, md2, payload2, err := decodeEnvelope(again)
		if err != nil || id2 != id || key2 != key || !maps.Equal(md, md2) || !bytes.Equal(payload, payload2) {
			t.Fatalf("re-encoded envelope does not round-trip: %v", err)
		}
	})
}
