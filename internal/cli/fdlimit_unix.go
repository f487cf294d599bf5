//go:build unix

package cli

import "syscall"

// openFileLimit returns the process's open-file limit (RLIMIT_NOFILE, soft;
// the Go runtime raises it to the hard limit at start), 0 if unknown.
func openFileLimit() int {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil || lim.Cur > 1<<30 {
		return 0
	}
	return int(lim.Cur)
}
