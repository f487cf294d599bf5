// Package stats counts what the mirror does and shows it three ways: the
// JSON snapshot of /_pullcache/stats (Snapshot), Prometheus collectors
// (Handler), and the ring of recent upstream throttles and busiest clients
// that `pullcache doctor` reads.
//
// Contracts: every method of Stats and Clients is safe for concurrent use;
// nothing here starts a goroutine or needs closing. The package links
// nothing of the module but admit's types, so any layer may count.
package stats
