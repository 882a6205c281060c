package memory_test

import (
	"context"
	"errors"
	"testing"

	"github.com/omnibusmq/omnibus/pubsub"
)

// FuzzOpenURL feeds mem:// any broker name and query: Open must not panic
// and every failure must wrap ErrInvalid.
func FuzzOpenURL(f *testing.F) {
	f.Add("fuzz", "buffer=10")
	f.Add("fuzz", "buffer=-1&max_message_size=x")
	f.Add("a b", "bogus=1")
	f.Add("%zz", "buffer=%zz")
	f.Add("x:y@z", "require=ordering")
	f.Fuzz(func(t *testing.T, name, query string) {
		c, err := pubsub.Open(context.Background(), "mem://"+name+"?"+query)
		if err != nil {
			if !errors.Is(err, pubsub.ErrInvalid) && !errors.Is(err, pubsub.ErrUnsupported) {
				t.Errorf("Open(mem://%s?%s) = %v, want ErrInvalid or ErrUnsupported", name, query, err)
			}
			return
		}
		_ = c.Close()
	})
}
