// Package proc starts, watches and stops the processes pullcache runs next
// to itself (a detached `pullcache serve` for the Action, a managed
// buildkitd, the daemons of the end-to-end harness and the benchmarks), and
// holds two file helpers that go with them: the tail of a log and an atomic
// file write.
//
// Contracts: a Process may be stopped, killed and waited for from any
// number of goroutines; Stop and Kill always wait until the child is
// reaped, so a returned Stop leaves no zombie and no goroutine behind.
// StopPID is for a process this one did not start (found again by PID in a
// later step): its exit is observed by polling. Nothing here needs closing.
package proc
