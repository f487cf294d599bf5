package admit

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeStore is an in-memory StateStore that counts writes.
type fakeStore struct {
	mu     sync.Mutex
	data   map[string][]byte
	puts   int
	getErr error
}

func newFakeStore() *fakeStore { return &fakeStore{data: map[string][]byte{}} }

func (s *fakeStore) GetMeta(key string) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.getErr != nil {
		return nil, s.getErr
	}
	v, ok := s.data[key]
	if !ok {
		return nil, errors.New("not found")
	}
	return append([]byte(nil), v...), nil
}

func (s *fakeStore) PutMeta(key string, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data[key] = append([]byte(nil), val...)
	s.puts++
	return nil
}

func (s *fakeStore) putCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.puts
}

// rl builds Docker Hub style ratelimit headers.
func rl(limit, remaining, windowSec int) http.Header {
	h := http.Header{}
	h.Set("ratelimit-limit", fmt.Sprintf("%d;w=%d", limit, windowSec))
	h.Set("ratelimit-remaining", fmt.Sprintf("%d;w=%d", remaining, windowSec))
	return h
}

type result struct {
	client string
	t      *Ticket
	err    error
	at     time.Time
}

// acquireAsync starts an acquire on its own goroutine and reports to out.
func acquireAsync(ctx context.Context, acquire func(context.Context, Key, string) (*Ticket, error), k Key, client string, out chan<- result) {
	go func() {
		t, err := acquire(ctx, k, client)
		out <- result{client: client, t: t, err: err, at: time.Now()}
	}()
}

// drain returns the results already delivered, without blocking.
func drain(out <-chan result) []result {
	var rs []result
	for {
		select {
		case r := <-out:
			rs = append(rs, r)
		default:
			return rs
		}
	}
}

// mustAdmit(t)(a.Counted(...)) fails the test unless a ticket was issued.
func mustAdmit(t *testing.T) func(*Ticket, error) *Ticket {
	return func(tk *Ticket, err error) *Ticket {
		t.Helper()
		if err != nil {
			t.Fatalf("not admitted: %v", err)
		}
		if tk == nil {
			t.Fatal("nil ticket without error")
		}
		return tk
	}
}

func mustThrottle(t *testing.T, err error) *ThrottledError {
	t.Helper()
	var te *ThrottledError
	if !errors.As(err, &te) || !errors.Is(err, ErrThrottled) {
		t.Fatalf("want *ThrottledError, got %v", err)
	}
	return te
}

func quotaOf(t *testing.T, a *Admitter, k Key) QuotaState {
	t.Helper()
	k = k.normalized()
	for _, s := range a.Snapshot() {
		if s.Key == k {
			return s
		}
	}
	t.Fatalf("no quota state for %v", k)
	return QuotaState{}
}

func upstreamOf(t *testing.T, a *Admitter, name string) UpstreamState {
	t.Helper()
	for _, s := range a.Upstreams() {
		if s.Upstream == name {
			return s
		}
	}
	t.Fatalf("no upstream state for %s", name)
	return UpstreamState{}
}
