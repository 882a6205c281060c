package pubsub

import (
	"errors"

	"github.com/omnibusmq/omnibus/pubsub/driver"
)

// Sentinel errors for callers to branch on with errors.Is. They are the same
// values as in package driver, so adapters' errors match them too.
var (
	// ErrClosed: the client, subscription or delivery was used after Close.
	ErrClosed = driver.ErrClosed
	// ErrNotFound: a topic, queue or group does not exist.
	ErrNotFound = driver.ErrNotFound
	// ErrPermanent: retrying cannot help; see Permanent.
	ErrPermanent = driver.ErrPermanent
	// ErrInvalid: bad input (empty topic, nil message, oversize payload,
	// unknown URL parameter). The message names the field and the value.
	ErrInvalid = driver.ErrInvalid
	// ErrUnsupported: the adapter cannot honour a ?require= capability.
	ErrUnsupported = driver.ErrUnsupported
	// ErrRevoked: Ack or Nack of a delivery whose partition was taken away
	// by a rebalance; the ack did not count and the message is delivered
	// again (possibly to another member of the group).
	ErrRevoked = driver.ErrRevoked
	// ErrAlreadyAcked: Ack or Nack called a second time on one Delivery.
	ErrAlreadyAcked = errors.New("omnibus: delivery already acked or nacked")
)

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }
func (e *permanentError) Is(target error) bool {
	return target == ErrPermanent
}

// Permanent marks err as not worth retrying: the retry middleware stops at
// once and the poison middleware moves the message to the poison topic.
// errors.Is(Permanent(err), ErrPermanent) is true and errors.Is/As still see
// err. Permanent(nil) is nil.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err (or an error it wraps) is permanent.
func IsPermanent(err error) bool { return errors.Is(err, ErrPermanent) }
