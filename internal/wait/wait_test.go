package wait_test

import (
	"context"
	"testing"
	"time"

	"github.com/omnibusmq/omnibus/internal/wait"
)

func TestSleepReportsWhetherItWaitedTheWholeTime(t *testing.T) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	cases := []struct {
		name string
		ctx  context.Context
		d    time.Duration
		want bool
	}{
		{"ZeroDurationLiveContext", context.Background(), 0, true},
		{"ZeroDurationEndedContext", done, 0, false},
		{"EndedContextDoesNotWaitAnHour", done, time.Hour, false},
		{"ShortWaitCompletes", context.Background(), time.Millisecond, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := wait.Sleep(tc.ctx, tc.d); got != tc.want {
				t.Errorf("Sleep(%v) = %v, want %v", tc.d, got, tc.want)
			}
		})
	}
}
