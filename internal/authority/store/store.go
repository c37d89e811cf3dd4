// Package store defines ward's storage contract: a small ordered key-value
// interface (get, put, delete, list by prefix, compare-and-swap on revision,
// atomic batches, watch) that every backend implements and that the
// conformance suite in storetest checks. Backends never see plaintext: the
// barrier package wraps a Store and encrypts every value before it gets here.
package store

import (
	"context"
	"errors"
)

// Sentinel errors. Backends wrap them so callers can use errors.Is.
var (
	// ErrNotFound: the key does not exist.
	ErrNotFound = errors.New("store: key not found")
	// ErrConflict: a compare-and-swap or conditional batch lost a race;
	// re-read and retry.
	ErrConflict = errors.New("store: revision conflict")
	// ErrClosed: the store was closed.
	ErrClosed = errors.New("store: closed")
)

// KV is one stored entry. Revision is backend-assigned, strictly increasing
// across the whole store (not per key), and never 0 for an existing key.
type KV struct {
	Key      string
	Value    []byte
	Revision int64
}

// Op is one operation of an atomic Batch.
type Op struct {
	Key    string
	Value  []byte // ignored when Delete is set
	Delete bool
	// ExpectRevision makes the op conditional: -1 means unconditional;
	// 0 means "key must not exist"; n > 0 means "key's current revision
	// must be n". If any condition fails, no op of the batch is applied
	// and Batch returns ErrConflict.
	ExpectRevision int64
}

// EventType says what happened to a key.
type EventType int

const (
	EventPut EventType = iota + 1
	EventDelete
)

// Event is one change delivered by Watch. For EventDelete, Value is nil.
type Event struct {
	Type     EventType
	Key      string
	Value    []byte
	Revision int64
}

// Store is the storage contract. All methods are safe for concurrent use.
// Keys are arbitrary non-empty strings; ordering of List is lexical by key.
type Store interface {
	// Get returns the entry for key or an error wrapping ErrNotFound.
	Get(ctx context.Context, key string) (KV, error)
	// Put writes key unconditionally and returns the new revision.
	Put(ctx context.Context, key string, value []byte) (int64, error)
	// Delete removes key. Deleting a missing key is not an error.
	Delete(ctx context.Context, key string) error
	// List returns all entries whose key starts with prefix, sorted by key.
	List(ctx context.Context, prefix string) ([]KV, error)
	// CompareAndSwap writes key only if its current revision equals
	// expectRevision (0 = key must not exist). It returns the new revision,
	// or an error wrapping ErrConflict.
	CompareAndSwap(ctx context.Context, key string, value []byte, expectRevision int64) (int64, error)
	// Batch applies ops atomically: all or none. It returns the revision
	// of the batch. len(ops) must not exceed MaxBatch().
	Batch(ctx context.Context, ops []Op) (int64, error)
	// MaxBatch is the largest number of ops one Batch accepts.
	MaxBatch() int
	// Watch streams changes to keys under prefix made after the call, from
	// this process or any other writer of the same backend, until ctx ends
	// (then the channel is closed). A slow reader may cause the backend to
	// drop the watch, closing the channel early; callers re-list and re-watch.
	Watch(ctx context.Context, prefix string) (<-chan Event, error)
	// Backend names the backend ("bbolt", "etcd").
	Backend() string
	// Close releases resources; further calls return ErrClosed.
	Close() error
}
