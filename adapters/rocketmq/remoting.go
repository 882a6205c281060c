package rocketmq

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strconv"
	"sync"
	"time"
)

// The gRPC client (rocketmq-clients/golang/v5) has no admin API, so the
// adapter speaks the few administrative requests it needs over RocketMQ's
// remoting protocol itself: create a topic and a subscription group on a
// broker, read a topic's route from the name server, and set a new group's
// starting offsets. A remoting frame is a 4-byte length, a 4-byte header
// length (its high byte the serialization type, 0 = JSON), a JSON header and
// a body.

// Remoting request codes (org.apache.rocketmq.remoting.protocol.RequestCode)
// and the response codes the adapter tells apart.
const (
	codeUpdateCreateTopic    = 17
	codeCreateSubGroup       = 200
	codeGetRoute             = 105
	codeQueryConsumerOffset  = 14
	codeUpdateConsumerOffset = 15
	codeGetMinOffset         = 31
	codeGetMaxOffset         = 30

	respSuccess       = 0
	respTopicNotExist = 17
	respQueryNotFound = 22
)

type remotingHeader struct {
	Code      int               `json:"code"`
	Language  string            `json:"language"`
	Version   int               `json:"version"`
	Opaque    int32             `json:"opaque"`
	Flag      int               `json:"flag"`
	Remark    string            `json:"remark,omitempty"`
	ExtFields map[string]string `json:"extFields,omitempty"`
}

// remotingVersion is the protocol version the adapter announces (RocketMQ
// 5.3.x's MQVersion ordinal range; the servers only compare it against old
// versions).
const remotingVersion = 500

// remotingError is a response code other than success.
type remotingError struct {
	code   int
	remark string
}

func (e *remotingError) Error() string {
	return fmt.Sprintf("remoting response code %d: %s", e.code, e.remark)
}

func isCode(err error, code int) bool {
	var re *remotingError
	return errors.As(err, &re) && re.code == code
}

// admin sends remoting requests, one connection per call (administrative
// requests are rare: topic and group creation, offsets of a new group).
type admin struct {
	mu     sync.Mutex
	opaque int32
	ak, sk string
}

// call sends one request to addr and returns the response's extFields and
// body. Every network wait is bounded by ctx.
func (a *admin) call(ctx context.Context, addr string, code int, ext map[string]string, body []byte) (map[string]string, []byte, error) {
	a.mu.Lock()
	a.opaque++
	opaque := a.opaque
	a.mu.Unlock()
	h := remotingHeader{Code: code, Language: "GO", Version: remotingVersion, Opaque: opaque, ExtFields: ext}
	if a.ak != "" {
		h.ExtFields = sign(ext, body, a.ak, a.sk)
	}
	hb, err := json.Marshal(h)
	if err != nil {
		return nil, nil, err
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	frame := make([]byte, 8, 8+len(hb)+len(body))
	binary.BigEndian.PutUint32(frame[0:], uint32(4+len(hb)+len(body)))
	binary.BigEndian.PutUint32(frame[4:], uint32(len(hb)))
	frame = append(append(frame, hb...), body...)
	if _, err := conn.Write(frame); err != nil {
		return nil, nil, withCtx(ctx, err)
	}
	r := bufio.NewReader(conn)
	for {
		var pre [8]byte
		if _, err := io.ReadFull(r, pre[:]); err != nil {
			return nil, nil, withCtx(ctx, err)
		}
		total := int(binary.BigEndian.Uint32(pre[0:]))
		hlen := int(binary.BigEndian.Uint32(pre[4:]) & 0xFFFFFF)
		if total < 4+hlen || total > 64<<20 {
			return nil, nil, fmt.Errorf("remoting frame of %d bytes with a %d-byte header", total, hlen)
		}
		buf := make([]byte, total-4)
		if _, err := io.ReadFull(r, buf); err != nil {
			return nil, nil, withCtx(ctx, err)
		}
		var resp remotingHeader
		if err := json.Unmarshal(buf[:hlen], &resp); err != nil {
			return nil, nil, fmt.Errorf("remoting response header: %w", err)
		}
		if resp.Flag&1 == 0 || resp.Opaque != opaque {
			continue // a request from the server, or not our answer
		}
		if resp.Code != respSuccess {
			return resp.ExtFields, nil, &remotingError{code: resp.Code, remark: resp.Remark}
		}
		return resp.ExtFields, buf[hlen:], nil
	}
}

func withCtx(ctx context.Context, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("%w (%v)", ctx.Err(), err)
	}
	return err
}

// createTopic creates (or updates) topic on the broker at addr with queues
// read and write queues.
func (a *admin) createTopic(ctx context.Context, addr, topic string, queues int) error {
	n := strconv.Itoa(queues)
	_, _, err := a.call(ctx, addr, codeUpdateCreateTopic, map[string]string{
		"topic": topic, "defaultTopic": "TBW102", "readQueueNums": n, "writeQueueNums": n,
		"perm": "6", "topicFilterType": "SINGLE_TAG", "topicSysFlag": "0", "order": "false",
		"attributes": "+message.type=NORMAL",
	}, nil)
	return err
}

// createGroup creates (or updates) the subscription group on the broker at
// addr: retryMaxTimes deliveries are retried before the dead-letter topic.
func (a *admin) createGroup(ctx context.Context, addr, group string, retryMaxTimes int) error {
	body, err := json.Marshal(map[string]any{
		"groupName": group, "consumeEnable": true, "consumeFromMinEnable": true,
		"consumeBroadcastEnable": true, "retryQueueNums": 1, "retryMaxTimes": retryMaxTimes,
		"brokerId": 0, "whichBrokerWhenConsumeSlowly": 1, "notifyConsumerIdsChangedEnable": true,
	})
	if err != nil {
		return err
	}
	_, _, err = a.call(ctx, addr, codeCreateSubGroup, nil, body)
	return err
}

// queueRoute is one broker's queues of a topic.
type queueRoute struct {
	addr   string // the master's address
	queues int    // read queues
}

// nonStringKey matches the integer map keys fastjson writes in a route
// ({0:"host:port"}), which encoding/json does not accept.
var nonStringKey = regexp.MustCompile(`([{,])(-?\d+):`)

// route reads topic's route from the name server at addr: for each broker
// with a master, its address and read queue count. A topic the name server
// does not know is a *remotingError with code respTopicNotExist.
func (a *admin) route(ctx context.Context, addr, topic string) ([]queueRoute, error) {
	_, body, err := a.call(ctx, addr, codeGetRoute, map[string]string{"topic": topic}, nil)
	if err != nil {
		return nil, err
	}
	var rd struct {
		QueueDatas []struct {
			BrokerName    string `json:"brokerName"`
			ReadQueueNums int    `json:"readQueueNums"`
		} `json:"queueDatas"`
		BrokerDatas []struct {
			BrokerName  string            `json:"brokerName"`
			BrokerAddrs map[string]string `json:"brokerAddrs"`
		} `json:"brokerDatas"`
	}
	if err := json.Unmarshal(nonStringKey.ReplaceAll(body, []byte(`$1"$2":`)), &rd); err != nil {
		return nil, fmt.Errorf("route of %q: %w", topic, err)
	}
	var out []queueRoute
	for _, q := range rd.QueueDatas {
		for _, b := range rd.BrokerDatas {
			if b.BrokerName == q.BrokerName && b.BrokerAddrs["0"] != "" && q.ReadQueueNums > 0 {
				out = append(out, queueRoute{addr: b.BrokerAddrs["0"], queues: q.ReadQueueNums})
			}
		}
	}
	return out, nil
}

// startGroupAt gives group, if it has no offset yet on a queue of topic,
// the queue's oldest (oldest) or end offset: where a new group starts.
func (a *admin) startGroupAt(ctx context.Context, routes []queueRoute, topic, group string, oldest bool) error {
	for _, r := range routes {
		for q := 0; q < r.queues; q++ {
			qid := strconv.Itoa(q)
			_, _, err := a.call(ctx, r.addr, codeQueryConsumerOffset, map[string]string{
				"consumerGroup": group, "topic": topic, "queueId": qid, "setZeroIfNotFound": "false",
			}, nil)
			if err == nil {
				continue // the group has a position on this queue
			}
			if !isCode(err, respQueryNotFound) {
				return fmt.Errorf("offset of group %q on %s queue %d: %w", group, r.addr, q, err)
			}
			code := codeGetMaxOffset
			if oldest {
				code = codeGetMinOffset
			}
			ext, _, err := a.call(ctx, r.addr, code, map[string]string{"topic": topic, "queueId": qid}, nil)
			if err != nil {
				return fmt.Errorf("offsets of %s queue %d: %w", r.addr, q, err)
			}
			off := ext["offset"]
			if _, err := strconv.ParseInt(off, 10, 64); err != nil {
				return fmt.Errorf("offsets of %s queue %d: answer without an offset", r.addr, q)
			}
			_, _, err = a.call(ctx, r.addr, codeUpdateConsumerOffset, map[string]string{
				"consumerGroup": group, "topic": topic, "queueId": qid, "commitOffset": off,
			}, nil)
			if err != nil {
				return fmt.Errorf("set the start offset of group %q on %s queue %d: %w", group, r.addr, q, err)
			}
		}
	}
	return nil
}

// sign adds RocketMQ's ACL fields to a request's extFields: the access
// key and an HMAC-SHA1 over the fields' values in key order and the body.
func sign(ext map[string]string, body []byte, ak, sk string) map[string]string {
	out := make(map[string]string, len(ext)+2)
	for k, v := range ext {
		out[k] = v
	}
	out["AccessKey"] = ak
	keys := make([]string, 0, len(out))
	for k := range out {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	mac := hmac.New(sha1.New, []byte(sk))
	for _, k := range keys {
		mac.Write([]byte(out[k]))
	}
	mac.Write(body)
	out["Signature"] = base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return out
}
