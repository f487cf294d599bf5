package admit

import (
	"container/list"
	"time"
)

// waiter is one request queued for admission. ready is closed once ticket or
// err is set (under the gate's lock).
type waiter struct {
	client string
	since  time.Time
	ready  chan struct{}
	ticket *Ticket
	err    error

	cq *clientQueue
	el *list.Element
}

type clientQueue struct {
	name    string
	waiters list.List // of *waiter, FIFO
	ringEl  *list.Element
}

// fairQueue serves clients round-robin and each client's waiters in order. A
// client that joins is placed at the end of the current round, so it is
// served after every client already waiting has had one turn. Not safe for
// concurrent use: the gate's lock guards it.
type fairQueue struct {
	clients map[string]*clientQueue
	ring    list.List     // of *clientQueue
	next    *list.Element // whose turn it is; nil means the ring's front
	n       int
}

func (q *fairQueue) len() int { return q.n }

func (q *fairQueue) push(w *waiter) {
	if q.clients == nil {
		q.clients = make(map[string]*clientQueue)
	}
	cq := q.clients[w.client]
	if cq == nil {
		cq = &clientQueue{name: w.client}
		q.clients[w.client] = cq
		if q.next != nil {
			cq.ringEl = q.ring.InsertBefore(cq, q.next)
		} else {
			cq.ringEl = q.ring.PushBack(cq)
		}
	}
	w.cq = cq
	w.el = cq.waiters.PushBack(w)
	q.n++
}

// pop removes and returns the next waiter to admit, or nil.
func (q *fairQueue) pop() *waiter {
	cur := q.next
	if cur == nil {
		cur = q.ring.Front()
	}
	if cur == nil {
		return nil
	}
	cq := cur.Value.(*clientQueue)
	w := cq.waiters.Remove(cq.waiters.Front()).(*waiter)
	q.next = cur.Next()
	q.n--
	if cq.waiters.Len() == 0 {
		q.dropClient(cq)
	}
	w.cq, w.el = nil, nil
	return w
}

// remove takes a waiter out of the queue (its context ended, or it timed
// out). It reports false if the waiter was no longer queued.
func (q *fairQueue) remove(w *waiter) bool {
	if w.cq == nil {
		return false
	}
	cq := w.cq
	cq.waiters.Remove(w.el)
	w.cq, w.el = nil, nil
	q.n--
	if cq.waiters.Len() == 0 {
		q.dropClient(cq)
	}
	return true
}

func (q *fairQueue) dropClient(cq *clientQueue) {
	if q.next == cq.ringEl {
		q.next = cq.ringEl.Next()
	}
	q.ring.Remove(cq.ringEl)
	delete(q.clients, cq.name)
}

// ahead estimates how many waiters would be admitted before a new waiter of
// client: its own queued waiters plus, from every other client, as many as
// get a turn before it under round-robin.
func (q *fairQueue) ahead(client string) int {
	own := 0
	if cq := q.clients[client]; cq != nil {
		own = cq.waiters.Len()
	}
	n := own
	for name, cq := range q.clients {
		if name != client {
			n += min(cq.waiters.Len(), own+1)
		}
	}
	return n
}

// drain empties the queue, returning every waiter.
func (q *fairQueue) drain() []*waiter {
	var out []*waiter
	for w := q.pop(); w != nil; w = q.pop() {
		out = append(out, w)
	}
	return out
}
