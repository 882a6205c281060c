package nsq

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Envelope layout, version 1 (see the package documentation):
//
//	0xFF 0x01                  magic byte, version
//	uvarint n, n bytes         ID
//	uvarint n, n bytes         Key
//	uvarint count              metadata entries, then per entry:
//	  uvarint n, n bytes       name
//	  uvarint n, n bytes       value
//	rest                       payload
const (
	envMagic   = 0xFF
	envVersion = 0x01
)

// errEnvelope reports a body that starts like an envelope but is not one.
var errEnvelope = errors.New("malformed omnibus envelope")

// envelopeSize returns the encoded size of an envelope for these fields.
func envelopeSize(id, key string, md map[string]string, payload int) int {
	n := 2 + uvarintLen(len(id)) + len(id) + uvarintLen(len(key)) + len(key) + uvarintLen(len(md)) + payload
	for k, v := range md {
		n += uvarintLen(len(k)) + len(k) + uvarintLen(len(v)) + len(v)
	}
	return n
}

func uvarintLen(n int) int {
	l := 1
	for x := uint64(n); x >= 0x80; x >>= 7 {
		l++
	}
	return l
}

// encodeEnvelope appends the envelope of a message to dst.
func encodeEnvelope(dst []byte, id, key string, md map[string]string, payload []byte) []byte {
	dst = append(dst, envMagic, envVersion)
	dst = appendString(dst, id)
	dst = appendString(dst, key)
	dst = binary.AppendUvarint(dst, uint64(len(md)))
	for k, v := range md {
		dst = appendString(dst, k)
		dst = appendString(dst, v)
	}
	return append(dst, payload...)
}

func appendString(dst []byte, s string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(s)))
	return append(dst, s...)
}

// isEnvelope reports whether body claims to be an omnibus envelope of a
// version this adapter reads.
func isEnvelope(body []byte) bool {
	return len(body) >= 2 && body[0] == envMagic && body[1] == envVersion
}

// decodeEnvelope splits an envelope. The payload aliases body. Metadata is
// nil when the envelope has none.
func decodeEnvelope(body []byte) (id, key string, md map[string]string, payload []byte, err error) {
	if !isEnvelope(body) {
		return "", "", nil, nil, fmt.Errorf("%w: no magic 0xFF 0x01", errEnvelope)
	}
	r := body[2:]
	if id, r, err = readString(r, "ID"); err != nil {
		return
	}
	if key, r, err = readString(r, "key"); err != nil {
		return
	}
	count, n := binary.Uvarint(r)
	if n <= 0 {
		return "", "", nil, nil, fmt.Errorf("%w: bad metadata count", errEnvelope)
	}
	r = r[n:]
	// Each entry takes at least two bytes: a count beyond that is corrupt
	// (and must not size an allocation).
	if count > uint64(len(r))/2 {
		return "", "", nil, nil, fmt.Errorf("%w: metadata count %d exceeds the body", errEnvelope, count)
	}
	if count > 0 {
		md = make(map[string]string, count)
		for i := uint64(0); i < count; i++ {
			var k, v string
			if k, r, err = readString(r, "metadata name"); err != nil {
				return "", "", nil, nil, err
			}
			if v, r, err = readString(r, "metadata value"); err != nil {
				return "", "", nil, nil, err
			}
			md[k] = v
		}
	}
	return id, key, md, r, nil
}

func readString(r []byte, what string) (string, []byte, error) {
	l, n := binary.Uvarint(r)
	if n <= 0 {
		return "", nil, fmt.Errorf("%w: bad %s length", errEnvelope, what)
	}
	r = r[n:]
	if l > uint64(len(r)) {
		return "", nil, fmt.Errorf("%w: %s of %d bytes exceeds the body", errEnvelope, what, l)
	}
	return string(r[:l]), r[l:], nil
}
