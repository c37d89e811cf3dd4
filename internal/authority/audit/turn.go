package audit

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
)

// Fair turns between the writers of one stored log (several authorities
// on one etcd). Every commit is conditional on the head's revision, so two
// writers never fork the log; but under steady load a writer that lost a
// race must read what the winners appended before it can try again, and by
// then they have appended more: a newly unsealed authority could lose
// every race and be refused ("still losing revision races"). So a writer
// that lost turnAfter races in a row takes the turn: it creates
// audit/turn (create-only, so one writer at a time holds it), and every
// other writer's commit carries the condition that audit/turn does not
// exist. The holder catches up once and commits; its last batch deletes
// the turn, so the turn ends with the commit it was taken for. A turn
// whose holder died is removed by the others once it is older than
// turnTTL.
const (
	turnKeySuffix = "audit/turn"
	turnAfter     = 3
	turnTTL       = 10 * time.Second
)

// turn is the committer's hold on the writers' turn (rev 0: not held).
type turn struct {
	rev   int64
	value []byte
}

type turnRecord struct {
	Holder string    `json:"holder"`
	Until  time.Time `json:"until"`
}

// turnOp is the op every committed batch carries: the turn must not exist,
// or (held by this writer) is kept until the last batch, which deletes it.
func (l *Log) turnOp(t *turn, last bool) store.Op {
	switch {
	case t.rev == 0:
		return store.Op{Key: l.turnKey, Delete: true, ExpectRevision: 0}
	case last:
		return store.Op{Key: l.turnKey, Delete: true, ExpectRevision: t.rev}
	default:
		return store.Op{Key: l.turnKey, Value: t.value, ExpectRevision: t.rev}
	}
}

// turnCommitted records the effect of a committed batch on the turn.
func (l *Log) turnCommitted(t *turn, last bool, rev int64) {
	if t.rev == 0 {
		return
	}
	if last {
		t.rev, t.value = 0, nil
		return
	}
	t.rev = rev
}

// awaitTurn runs after a lost race (attempt counts those lost so far). If
// another writer holds the turn it waits a moment (waited: the attempt is
// not counted), removing a turn older than turnTTL; after turnAfter lost
// races it takes the turn.
func (l *Log) awaitTurn(ctx context.Context, t *turn, attempt int) (waited bool, err error) {
	if t.rev != 0 {
		return false, nil // held: the race was lost before it was taken
	}
	kv, err := l.st.Get(ctx, l.turnKey)
	switch {
	case err == nil:
		var rec turnRecord
		if json.Unmarshal(kv.Value, &rec) != nil || l.now().After(rec.Until) {
			// Its holder died (or the record is damaged): free the turn.
			l.st.Batch(ctx, []store.Op{{Key: l.turnKey, Delete: true, ExpectRevision: kv.Revision}})
			return true, nil
		}
		select {
		case <-ctx.Done():
			return false, fmt.Errorf("audit events not stored: another authority held the writers' turn until the commit timed out: %w; retry the operation", ctx.Err())
		case <-time.After(2 * time.Millisecond):
		}
		return true, nil
	case !errors.Is(err, store.ErrNotFound):
		return false, nil // the next attempt says what is wrong with the store
	}
	if attempt+1 < turnAfter {
		return false, nil
	}
	var id [8]byte
	rand.Read(id[:])
	v, _ := json.Marshal(turnRecord{Holder: l.origin + "/" + hex.EncodeToString(id[:]), Until: l.now().Add(turnTTL)})
	rev, err := l.st.CompareAndSwap(ctx, l.turnKey, v, 0)
	if err != nil {
		return errors.Is(err, store.ErrConflict), nil // taken by another: wait for it
	}
	t.rev, t.value = rev, v
	return false, nil
}

// releaseTurn gives the turn back if a commit ended without its last batch
// (a store error): the others need not wait for turnTTL.
func (l *Log) releaseTurn(t *turn) {
	if t.rev == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l.st.Batch(ctx, []store.Op{{Key: l.turnKey, Delete: true, ExpectRevision: t.rev}})
	t.rev, t.value = 0, nil
}
