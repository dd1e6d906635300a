package client

import (
	"container/heap"
	"container/list"
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultMemoryDedupEntries is the capacity of a MemoryDedup made with
// NewMemoryDedup(0): 100k keys, about 22 MB of heap when the keys are
// 50 bytes long.
const DefaultMemoryDedupEntries = 100_000

// MemoryDedup is a DedupStore in the memory of one process: for a receiver
// (or several receivers in one process) that has no store to share and
// whose dedup need not outlive the process. After a restart every message
// is new to it; use client/badgerdedup to survive restarts and
// client/redisdedup to share one store between processes.
//
// It holds at most maxEntries keys. Keys expire lazily (there is no
// goroutine): an expired claim or done mark is ignored by Claim and dropped
// by the next write that finds it first in expiry order. When a new key
// arrives and the store is full, expired keys go first, then the key
// written least recently (claimed, re-claimed or marked done). Evicting a
// key that is done and still within its window weakens dedup for that
// message: a redelivery of it is handled again. Evicting a pending claim
// lets another receiver claim a message being handled. Evictions counts
// both; size maxEntries for the number of messages received per window.
//
// Operations take O(log n) time under one mutex. MemoryDedup never fails:
// its methods return an error only for a cancelled context or a
// non-positive lease or window. It is safe for concurrent use.
type MemoryDedup struct {
	max int

	mu        sync.Mutex
	entries   map[string]*memEntry
	byWrite   list.List  // of *memEntry, least recently written first
	byExpiry  expiryHeap // soonest expiry first
	evictions uint64     // live entries dropped because the store was full
}

type memEntry struct {
	key     string
	owner   string // the claim's owner; "" when done
	done    bool
	expires time.Time
	elem    *list.Element // in byWrite
	index   int           // in byExpiry
}

// NewMemoryDedup returns an empty MemoryDedup holding at most maxEntries
// keys (DefaultMemoryDedupEntries when maxEntries <= 0).
func NewMemoryDedup(maxEntries int) *MemoryDedup {
	if maxEntries <= 0 {
		maxEntries = DefaultMemoryDedupEntries
	}
	return &MemoryDedup{max: maxEntries, entries: make(map[string]*memEntry)}
}

var (
	errNonPositiveLease  = errors.New("client: dedup lease must be positive")
	errNonPositiveWindow = errors.New("client: dedup window must be positive")
)

// Claim implements DedupStore.
func (m *MemoryDedup) Claim(ctx context.Context, key, owner string, lease time.Duration) (ClaimResult, error) {
	if err := ctx.Err(); err != nil {
		return Busy, err
	}
	if lease <= 0 {
		return Busy, errNonPositiveLease
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.dropExpired(now)
	if e := m.entries[key]; e != nil && now.Before(e.expires) {
		switch {
		case e.done:
			return Handled, nil
		case e.owner != owner:
			return Busy, nil
		}
		m.update(e, false, owner, now.Add(lease)) // re-entrant: extend the lease
		return Claimed, nil
	}
	m.put(key, false, owner, now.Add(lease))
	return Claimed, nil
}

// Done implements DedupStore.
func (m *MemoryDedup) Done(ctx context.Context, key, owner string, window time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if window <= 0 {
		return errNonPositiveWindow
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.dropExpired(now)
	m.put(key, true, "", now.Add(window))
	return nil
}

// Release implements DedupStore.
func (m *MemoryDedup) Release(ctx context.Context, key, owner string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	m.dropExpired(now)
	if e := m.entries[key]; e != nil && !e.done && e.owner == owner && now.Before(e.expires) {
		m.remove(e)
	}
	return nil
}

// Len is the number of keys held, including expired ones not dropped yet.
func (m *MemoryDedup) Len() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.entries)
}

// Evictions is the number of keys dropped before their expiry because the
// store was full. A growing count means maxEntries is too small for the
// window: redeliveries of evicted messages are handled again.
func (m *MemoryDedup) Evictions() uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.evictions
}

// put sets key, adding it (and making room for it) when absent.
func (m *MemoryDedup) put(key string, done bool, owner string, expires time.Time) {
	if e := m.entries[key]; e != nil {
		m.update(e, done, owner, expires)
		return
	}
	for len(m.entries) >= m.max {
		// dropExpired ran: every key left is live, so this one is evicted.
		m.remove(m.byWrite.Front().Value.(*memEntry))
		m.evictions++
	}
	e := &memEntry{key: key, done: done, owner: owner, expires: expires}
	e.elem = m.byWrite.PushBack(e)
	heap.Push(&m.byExpiry, e)
	m.entries[key] = e
}

func (m *MemoryDedup) update(e *memEntry, done bool, owner string, expires time.Time) {
	e.done, e.owner, e.expires = done, owner, expires
	m.byWrite.MoveToBack(e.elem)
	heap.Fix(&m.byExpiry, e.index)
}

func (m *MemoryDedup) remove(e *memEntry) {
	delete(m.entries, e.key)
	m.byWrite.Remove(e.elem)
	heap.Remove(&m.byExpiry, e.index)
}

// dropExpired removes the keys expired at now. Each key is dropped once, so
// its cost is amortised over the writes that added the keys.
func (m *MemoryDedup) dropExpired(now time.Time) {
	for len(m.byExpiry) > 0 && !now.Before(m.byExpiry[0].expires) {
		m.remove(m.byExpiry[0])
	}
}

// expiryHeap is a min-heap of entries by expiry.
type expiryHeap []*memEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*memEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}
