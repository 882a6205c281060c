//go:build unix

package integration

import (
	"syscall"
	"time"
)

// ProcessCPU returns the user+system CPU time this process has used, for
// benchmarks that report the client's CPU per message.
func ProcessCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
