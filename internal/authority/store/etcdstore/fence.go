package etcdstore

import (
	"context"
	"errors"
	"fmt"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrFenced: a write made under a fence (WithFence) was refused because
// the fence key no longer has the creation revision the fence names: the
// leadership the writer held has ended (its lease expired or it resigned)
// and another authority may be leader now.
var ErrFenced = errors.New("etcdstore: fenced: this authority is no longer the leader")

type fenceKey struct{}

type fence struct {
	key string // full etcd key (with prefix)
	rev int64  // its CreateRevision while the holder leads
}

// WithFence returns a context whose writes (Put, Delete, CompareAndSwap,
// Batch) through any Store on the same cluster succeed only while the etcd
// key key (a full key, as an election's Key()) still has creation revision
// rev, checked inside the write's own transaction. A leader passes its
// election key and revision to the jobs only it may run: once its lease is
// gone their writes fail with ErrFenced, even if they were already under
// way when another authority was elected.
func WithFence(ctx context.Context, key string, rev int64) context.Context {
	return context.WithValue(ctx, fenceKey{}, fence{key: key, rev: rev})
}

func fenceFrom(ctx context.Context) (fence, bool) {
	f, ok := ctx.Value(fenceKey{}).(fence)
	return f, ok && f.key != ""
}

func (f fence) cmp() clientv3.Cmp {
	return clientv3.Compare(clientv3.CreateRevision(f.key), "=", f.rev)
}

// fencedTxn runs thens under ctx's fence (if any) and the conditions cmps.
// When the fence fails, the error wraps ErrFenced. elses are the reads
// that explain failed conditions (the fence's own read is appended last).
func (s *Store) fencedTxn(ctx context.Context, op, key string, cmps []clientv3.Cmp, thens, elses []clientv3.Op) (*clientv3.TxnResponse, error) {
	f, fenced := fenceFrom(ctx)
	if fenced {
		cmps = append(cmps, f.cmp())
		elses = append(elses, clientv3.OpGet(f.key, clientv3.WithKeysOnly()))
	}
	var resp *clientv3.TxnResponse
	err := s.request(ctx, op, key, func(ctx context.Context) (err error) {
		resp, err = s.cli.Txn(ctx).If(cmps...).Then(thens...).Else(elses...).Commit()
		return err
	})
	if err != nil || resp.Succeeded || !fenced {
		return resp, err
	}
	last := resp.Responses[len(resp.Responses)-1].GetResponseRange()
	if last == nil || len(last.Kvs) == 0 || last.Kvs[0].CreateRevision != f.rev {
		return nil, fmt.Errorf("%w (leader key %s, revision %d)", ErrFenced, f.key, f.rev)
	}
	resp.Responses = resp.Responses[:len(resp.Responses)-1]
	return resp, nil
}

// Client returns the etcd client (for leader election and membership,
// internal/authority/ha). Keys it writes must live under Prefix.
func (s *Store) Client() *clientv3.Client { return s.cli }
