// Package wait holds the one context-aware sleep every retry and poll loop
// of omnibus uses.
package wait

import (
	"context"
	"time"
)

// Sleep waits d and reports true, or returns false as soon as ctx ends
// (at once if it already has). A d of zero or less does not wait.
func Sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
