// Package etcdstore implements store.Store on an etcd cluster: ward's
// distributed storage, shared by several stateless authorities.
//
// Every key lives under Config.Prefix, so several wards (or tests) can share
// one etcd. A revision is etcd's ModRevision; compare-and-swap and
// conditional batches are etcd transactions; Watch is an etcd prefix watch
// pinned to the revision current when Watch is called, so it sees every
// change made after the call by any writer of the cluster.
package etcdstore

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/errs"
)

// Defaults for Config fields left zero.
const (
	// DefaultMaxBatch matches etcd's default --max-txn-ops.
	DefaultMaxBatch    = 128
	DefaultPrefix      = "/ward/"
	DefaultDialTimeout = 5 * time.Second
	// DefaultRequestTimeout bounds one etcd request (Config.RequestTimeout).
	DefaultRequestTimeout = 5 * time.Second
	DefaultWatchBuffer    = 1024
)

// listPage is how many entries one List round trip fetches.
const listPage = 1000

// Config says how to reach etcd and where ward's keys live.
type Config struct {
	// Endpoints of the etcd cluster, e.g. "https://10.0.0.1:2379".
	Endpoints []string
	// Prefix is prepended to every key (default "/ward/"). Give each ward
	// cluster sharing one etcd its own prefix.
	Prefix string
	// TLS is the client TLS configuration. Alternatively set CAFile,
	// CertFile and KeyFile (PEM); setting both forms is an error.
	TLS *tls.Config
	// CAFile verifies the etcd server (system roots if empty).
	CAFile string
	// CertFile and KeyFile are the client certificate and key for etcd's
	// --client-cert-auth; set both or neither.
	CertFile, KeyFile string
	// DialTimeout bounds connecting and the reachability check in Open
	// (default 5s).
	DialTimeout time.Duration
	// RequestTimeout bounds each request (get, list page, put, delete,
	// transaction; not watches) when the caller's context allows longer
	// (default DefaultRequestTimeout; negative: unbounded). An etcd that
	// does not answer in time fails the operation with an error of kind
	// Unavailable instead of holding the caller, so the API call that
	// needed it fails fast and failover clients try another authority.
	RequestTimeout time.Duration
	// MaxBatch must not exceed the cluster's --max-txn-ops (default 128).
	MaxBatch int
	// WatchBuffer is how many undelivered events a watcher may queue
	// before it is dropped (default 1024).
	WatchBuffer int
}

// Store is an etcd-backed store.Store. Create it with Open.
type Store struct {
	cli         *clientv3.Client
	prefix      string
	endpoints   string
	maxBatch    int
	watchBuffer int
	reqTimeout  time.Duration

	closed atomic.Bool
	ctx    context.Context // cancelled by Close; ends watches
	cancel context.CancelFunc
}

var _ store.Store = (*Store)(nil)

// Open connects to etcd and checks, within DialTimeout, that it answers.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcdstore: open: no endpoints configured; set at least one etcd endpoint such as https://127.0.0.1:2379")
	}
	eps := strings.Join(cfg.Endpoints, ",")
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultDialTimeout
	}
	if cfg.RequestTimeout == 0 {
		cfg.RequestTimeout = DefaultRequestTimeout
	}
	if cfg.MaxBatch == 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxBatch < 1 {
		return nil, fmt.Errorf("etcdstore: open %s: max batch %d must be at least 1", eps, cfg.MaxBatch)
	}
	if cfg.WatchBuffer == 0 {
		cfg.WatchBuffer = DefaultWatchBuffer
	}
	if cfg.WatchBuffer < 1 {
		return nil, fmt.Errorf("etcdstore: open %s: watch buffer %d must be at least 1", eps, cfg.WatchBuffer)
	}
	tlsCfg := cfg.TLS
	if cfg.CAFile != "" || cfg.CertFile != "" || cfg.KeyFile != "" {
		if tlsCfg != nil {
			return nil, fmt.Errorf("etcdstore: open %s: both TLS and CAFile/CertFile/KeyFile are set; use one", eps)
		}
		var err error
		if tlsCfg, err = loadTLS(cfg.CAFile, cfg.CertFile, cfg.KeyFile); err != nil {
			return nil, fmt.Errorf("etcdstore: open %s: %w", eps, err)
		}
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsCfg,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		return nil, fmt.Errorf("etcdstore: open %s: %w", eps, err)
	}
	cctx, cancel := context.WithTimeout(ctx, cfg.DialTimeout)
	defer cancel()
	if _, err := cli.Get(cctx, cfg.Prefix, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, fmt.Errorf("etcdstore: open: etcd at %s did not answer within %s: %w; check the endpoints, the TLS files and that etcd is running", eps, cfg.DialTimeout, err)
	}
	sctx, scancel := context.WithCancel(context.Background())
	return &Store{
		cli: cli, prefix: cfg.Prefix, endpoints: eps,
		maxBatch: cfg.MaxBatch, watchBuffer: cfg.WatchBuffer, reqTimeout: cfg.RequestTimeout,
		ctx: sctx, cancel: scancel,
	}, nil
}

func loadTLS(caFile, certFile, keyFile string) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS13}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("read etcd CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("etcd CA file %s holds no PEM certificate", caFile)
		}
		c.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.New("etcd client certificate needs both CertFile and KeyFile")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			// The error from LoadX509KeyPair names files, never key bytes.
			return nil, fmt.Errorf("load etcd client certificate %s: %w", certFile, err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

// Backend returns "etcd".
func (s *Store) Backend() string { return "etcd" }

// MaxBatch returns the configured batch limit.
func (s *Store) MaxBatch() int { return s.maxBatch }

// Prefix returns the etcd key prefix under which this store's keys live.
func (s *Store) Prefix() string { return s.prefix }

func (s *Store) check(op, key string, checkKey bool) error {
	if s.closed.Load() {
		return fmt.Errorf("etcdstore: %s %q: %w", op, key, store.ErrClosed)
	}
	if checkKey && key == "" {
		return fmt.Errorf("etcdstore: %s: empty key; keys must be non-empty", op)
	}
	return nil
}

// fail wraps an etcd error, reporting ErrClosed if Close raced the call.
func (s *Store) fail(op, key string, err error) error {
	if s.closed.Load() {
		return fmt.Errorf("etcdstore: %s %q: %w", op, key, store.ErrClosed)
	}
	if errors.Is(err, errSlow) {
		return err
	}
	return fmt.Errorf("etcdstore: %s %q at %s: %w", op, key, s.endpoints, err)
}

// errSlow is the cause of a request context that reached RequestTimeout.
var errSlow = errors.New("etcd request timeout")

// request runs one etcd request under RequestTimeout: when the bound (not
// the caller's context) ended it, the error is of kind Unavailable and
// says so (it does not wrap etcd's status, which would pass through
// ToStatus as DeadlineExceeded).
func (s *Store) request(ctx context.Context, op, key string, f func(ctx context.Context) error) error {
	if s.reqTimeout <= 0 {
		return f(ctx)
	}
	rctx, cancel := context.WithTimeoutCause(ctx, s.reqTimeout, errSlow)
	defer cancel()
	err := f(rctx)
	if err != nil && ctx.Err() == nil && errors.Is(context.Cause(rctx), errSlow) {
		return errs.Wrap(errs.Unavailable, fmt.Errorf("%w: %v", errSlow, err),
			fmt.Sprintf("etcdstore: %s %q: etcd at %s did not answer within %s: check the network to etcd; clients should try another authority", op, key, s.endpoints, s.reqTimeout))
	}
	return err
}

// Get returns the entry for key.
func (s *Store) Get(ctx context.Context, key string) (store.KV, error) {
	if err := s.check("get", key, true); err != nil {
		return store.KV{}, err
	}
	var resp *clientv3.GetResponse
	err := s.request(ctx, "get", key, func(ctx context.Context) (err error) {
		resp, err = s.cli.Get(ctx, s.prefix+key)
		return err
	})
	if err != nil {
		return store.KV{}, s.fail("get", key, err)
	}
	if len(resp.Kvs) == 0 {
		return store.KV{}, fmt.Errorf("etcdstore: get %q: %w", key, store.ErrNotFound)
	}
	kv := resp.Kvs[0]
	return store.KV{Key: key, Value: nonNil(kv.Value), Revision: kv.ModRevision}, nil
}

// List returns the entries under prefix, sorted by key, read at one
// revision (paged, so large prefixes do not hit message limits).
func (s *Store) List(ctx context.Context, prefix string) ([]store.KV, error) {
	if err := s.check("list", prefix, false); err != nil {
		return nil, err
	}
	start := s.prefix + prefix
	end := clientv3.GetPrefixRangeEnd(start)
	var (
		out []store.KV
		rev int64
	)
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end), clientv3.WithLimit(listPage)}
		if rev > 0 {
			opts = append(opts, clientv3.WithRev(rev))
		}
		var resp *clientv3.GetResponse
		err := s.request(ctx, "list", prefix, func(ctx context.Context) (err error) {
			resp, err = s.cli.Get(ctx, start, opts...)
			return err
		})
		if err != nil {
			return nil, s.fail("list", prefix, err)
		}
		if rev == 0 {
			rev = resp.Header.Revision
		}
		for _, kv := range resp.Kvs {
			out = append(out, store.KV{Key: string(kv.Key[len(s.prefix):]), Value: nonNil(kv.Value), Revision: kv.ModRevision})
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return out, nil
		}
		start = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// Put writes key unconditionally.
func (s *Store) Put(ctx context.Context, key string, value []byte) (int64, error) {
	if err := s.check("put", key, true); err != nil {
		return 0, err
	}
	if _, fenced := fenceFrom(ctx); fenced {
		resp, err := s.fencedTxn(ctx, "put", key, nil, []clientv3.Op{clientv3.OpPut(s.prefix+key, string(value))}, nil)
		if err != nil {
			return 0, s.fail("put", key, err)
		}
		return resp.Header.Revision, nil
	}
	var resp *clientv3.PutResponse
	err := s.request(ctx, "put", key, func(ctx context.Context) (err error) {
		resp, err = s.cli.Put(ctx, s.prefix+key, string(value))
		return err
	})
	if err != nil {
		return 0, s.fail("put", key, err)
	}
	return resp.Header.Revision, nil
}

// Delete removes key; a missing key is not an error.
func (s *Store) Delete(ctx context.Context, key string) error {
	if err := s.check("delete", key, true); err != nil {
		return err
	}
	if _, fenced := fenceFrom(ctx); fenced {
		if _, err := s.fencedTxn(ctx, "delete", key, nil, []clientv3.Op{clientv3.OpDelete(s.prefix + key)}, nil); err != nil {
			return s.fail("delete", key, err)
		}
		return nil
	}
	if err := s.request(ctx, "delete", key, func(ctx context.Context) error { _, err := s.cli.Delete(ctx, s.prefix+key); return err }); err != nil {
		return s.fail("delete", key, err)
	}
	return nil
}

// CompareAndSwap writes key only if its ModRevision equals expectRevision
// (0 = key must not exist), as one etcd transaction.
func (s *Store) CompareAndSwap(ctx context.Context, key string, value []byte, expectRevision int64) (int64, error) {
	if err := s.check("compare-and-swap", key, true); err != nil {
		return 0, err
	}
	if expectRevision < 0 {
		return 0, fmt.Errorf("etcdstore: compare-and-swap %q: expected revision %d is negative; use 0 for create-only or Put for unconditional writes", key, expectRevision)
	}
	k := s.prefix + key
	resp, err := s.fencedTxn(ctx, "compare-and-swap", key, []clientv3.Cmp{clientv3.Compare(clientv3.ModRevision(k), "=", expectRevision)},
		[]clientv3.Op{clientv3.OpPut(k, string(value))}, []clientv3.Op{clientv3.OpGet(k, clientv3.WithKeysOnly())})
	if err != nil {
		return 0, s.fail("compare-and-swap", key, err)
	}
	if !resp.Succeeded {
		return 0, fmt.Errorf("etcdstore: compare-and-swap %q: expected revision %d, found %d: %w", key, expectRevision, foundRevision(resp, 0), store.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// Batch applies ops as one etcd transaction guarded by every op's
// condition: if any fails nothing is applied and the error wraps
// store.ErrConflict. A key may appear at most once per batch (etcd rejects
// duplicates in a transaction).
func (s *Store) Batch(ctx context.Context, ops []store.Op) (int64, error) {
	if err := s.check("batch", "", false); err != nil {
		return 0, err
	}
	if len(ops) > s.maxBatch {
		return 0, fmt.Errorf("etcdstore: batch has %d ops, more than the limit of %d (etcd --max-txn-ops); split it into smaller batches", len(ops), s.maxBatch)
	}
	var (
		cmps  []clientv3.Cmp
		thens []clientv3.Op
		elses []clientv3.Op
		conds []store.Op
		seen  = make(map[string]struct{}, len(ops))
	)
	for i, op := range ops {
		if op.Key == "" {
			return 0, fmt.Errorf("etcdstore: batch: op %d has an empty key; keys must be non-empty", i)
		}
		if op.ExpectRevision < -1 {
			return 0, fmt.Errorf("etcdstore: batch: op %d (key %q): expected revision %d is invalid; use -1 (unconditional), 0 (must not exist) or a revision", i, op.Key, op.ExpectRevision)
		}
		if _, dup := seen[op.Key]; dup {
			return 0, fmt.Errorf("etcdstore: batch: key %q appears more than once; merge the ops for one key", op.Key)
		}
		seen[op.Key] = struct{}{}
		k := s.prefix + op.Key
		if op.ExpectRevision >= 0 {
			cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", op.ExpectRevision))
			elses = append(elses, clientv3.OpGet(k, clientv3.WithKeysOnly()))
			conds = append(conds, op)
		}
		if op.Delete {
			thens = append(thens, clientv3.OpDelete(k))
		} else {
			thens = append(thens, clientv3.OpPut(k, string(op.Value)))
		}
	}
	resp, err := s.fencedTxn(ctx, "batch", "", cmps, thens, elses)
	if err != nil {
		return 0, s.fail("batch", "", err)
	}
	if !resp.Succeeded {
		for i, c := range conds {
			if found := foundRevision(resp, i); found != c.ExpectRevision {
				return 0, fmt.Errorf("etcdstore: batch: key %q: expected revision %d, found %d; nothing was applied: %w", c.Key, c.ExpectRevision, found, store.ErrConflict)
			}
		}
		return 0, fmt.Errorf("etcdstore: batch: a condition failed; nothing was applied: %w", store.ErrConflict)
	}
	return resp.Header.Revision, nil
}

// foundRevision reads the ModRevision from the i-th Else get of a failed
// transaction (0 if the key is missing).
func foundRevision(resp *clientv3.TxnResponse, i int) int64 {
	if i >= len(resp.Responses) {
		return 0
	}
	r := resp.Responses[i].GetResponseRange()
	if r == nil || len(r.Kvs) == 0 {
		return 0
	}
	return r.Kvs[0].ModRevision
}

// Watch streams changes under prefix made after the call (by any client of
// the cluster) until ctx ends, the store closes, etcd loses its leader or
// compacts past the watch, or the reader falls more than WatchBuffer events
// behind. Then the channel is closed; re-list and re-watch.
func (s *Store) Watch(ctx context.Context, prefix string) (<-chan store.Event, error) {
	if err := s.check("watch", prefix, false); err != nil {
		return nil, err
	}
	key := s.prefix + prefix
	// Pin the start revision: etcd registers watches asynchronously, and a
	// write made right after Watch returns must not be missed.
	head, err := s.cli.Get(ctx, key, clientv3.WithCountOnly())
	if err != nil {
		return nil, s.fail("watch", prefix, err)
	}
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	stop := context.AfterFunc(s.ctx, cancel)
	wch := s.cli.Watch(wctx, key, clientv3.WithPrefix(), clientv3.WithRev(head.Header.Revision+1))
	out := make(chan store.Event, s.watchBuffer)
	go func() {
		defer close(out)
		defer stop()
		defer cancel()
		for wr := range wch {
			if wr.Err() != nil || wr.Canceled {
				return
			}
			for _, ev := range wr.Events {
				e := store.Event{Key: string(ev.Kv.Key[len(s.prefix):]), Revision: ev.Kv.ModRevision}
				switch ev.Type {
				case clientv3.EventTypePut:
					e.Type, e.Value = store.EventPut, nonNil(ev.Kv.Value)
				case clientv3.EventTypeDelete:
					e.Type = store.EventDelete
				default:
					continue
				}
				select {
				case out <- e:
				default:
					return // too slow: drop the watch rather than buffer without bound
				}
			}
		}
	}()
	return out, nil
}

// Close ends every watch and closes the etcd client; later calls return
// store.ErrClosed.
func (s *Store) Close() error {
	if !s.closed.CompareAndSwap(false, true) {
		return fmt.Errorf("etcdstore: close %s: %w", s.endpoints, store.ErrClosed)
	}
	s.cancel()
	if err := s.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("etcdstore: close %s: %w", s.endpoints, err)
	}
	return nil
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}
