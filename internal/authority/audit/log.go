package audit

import (
	"bytes"
	"context"
	"crypto"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/checkpoint"
	"github.com/wardproject/ward/internal/shared/keyutil"
)

// ErrClosed is returned by Append after Close.
var ErrClosed = errors.New("the audit log is closed")

// Record is one stored event as read back: Leaf holds the exact stored
// bytes, or Err says why the record at Seq could not be read (missing
// records wrap store.ErrNotFound).
type Record struct {
	Seq  uint64
	Leaf []byte
	Err  error
}

// missingMarker is in the message of every missing record's error.
const missingMarker = "is missing"

func missingErr(seq uint64, err error) error {
	return fmt.Errorf("audit record %d %s: %w", seq, missingMarker, err)
}

// Option configures a Log.
type Option func(*Log)

// WithPrefix stores the log under prefix (e.g. "cluster-a/"): keys become
// prefix+"audit/head" and prefix+"audit/e/<seq>".
func WithPrefix(prefix string) Option { return func(l *Log) { l.prefix = prefix } }

// WithClock sets the clock for event and checkpoint times (tests).
func WithClock(now func() time.Time) Option { return func(l *Log) { l.now = now } }

// WithLogger sets where the log reports failed writes and detected
// rollbacks (default slog.Default()).
func WithLogger(lg *slog.Logger) Option {
	return func(l *Log) {
		if lg != nil {
			l.log = lg
		}
	}
}

// WithMaxGroup bounds how many events one group commit takes (default 4096).
func WithMaxGroup(n int) Option {
	return func(l *Log) {
		if n > 0 {
			l.maxGroup = n
		}
	}
}

// WithMaxAttempts bounds how often a group is retried after revision
// conflicts with another writer of the same store (default 32).
func WithMaxAttempts(n int) Option {
	return func(l *Log) {
		if n > 0 {
			l.maxAttempts = n
		}
	}
}

// WithCommitTimeout bounds the store calls of one group commit (default 30s).
func WithCommitTimeout(d time.Duration) Option {
	return func(l *Log) {
		if d > 0 {
			l.commitTimeout = d
		}
	}
}

// DefaultCheckpointInterval is how often, at most, the committer signs a
// checkpoint into the stored head under steady load (WithCheckpointInterval).
const DefaultCheckpointInterval = time.Second

// WithCheckpointInterval sets how often, at most, the committer signs a
// checkpoint and stores it with the head (default DefaultCheckpointInterval;
// 0 or less: with every commit). Between those, commits carry the newest
// signed checkpoint, which then lags the stored size; Head signs one for the
// full stored size when it is asked, as a Certificate Transparency log signs
// its tree head on a schedule rather than per entry.
func WithCheckpointInterval(d time.Duration) Option {
	return func(l *Log) { l.cpEvery = max(d, 0) }
}

// Log is the append side of the audit log. Append is safe for concurrent
// use; one committer goroutine batches waiting events into a single
// conditional store batch per group (chunked to the store's MaxBatch). It
// signs a checkpoint into the stored head at most once per checkpoint
// interval; Head signs one for the full stored size on demand. Several Logs
// (authorities) may share one store: revision conflicts are resolved by
// reloading the head.
type Log struct {
	st            store.Store
	signer        crypto.Signer
	pub           crypto.PublicKey
	keyID         string
	origin        string
	prefix        string
	headKey       string
	now           func() time.Time
	maxGroup      int
	maxAttempts   int
	commitTimeout time.Duration
	cpEvery       time.Duration // WithCheckpointInterval
	log           *slog.Logger

	// rollbacks counts the times the stored log was found to have gone
	// backwards (shorter or different than what this Log already saw).
	rollbacks atomic.Uint64
	// commits counts the store batches that stored events.
	commits atomic.Uint64
	// stats is where an appended event's time goes (CommitStats).
	stats commitStats

	mu     sync.Mutex // guards queue, closed, lingerFor
	queue  []*pending
	closed bool
	// lingerFor is how many queued events the lingering committer waits
	// for (0 when it does not linger): Append wakes it only when the
	// queue reaches that, not for every event (a goroutine wake-up each).
	lingerFor int
	wake      chan struct{}
	exited    chan struct{}

	// Tree state: written only by the committer (and Open), under stateMu.
	stateMu sync.Mutex
	size    uint64
	hashes  [][]byte // compact range [0, size)
	headRev int64    // revision of audit/head; 0 = absent
	cp      *checkpoint.Checkpoint
	changed chan struct{} // closed and replaced whenever size grows
	stale   bool          // committer-only: reload the head before committing
	turnKey string        // the writers' turn (turn.go)

	// signedAt is when the committer last signed a checkpoint that was
	// stored (committer-only; the process clock, not WithClock's).
	signedAt time.Time

	// On-demand signatures (Head, Latest): at most one in flight, shared.
	servedMu     sync.Mutex
	served       *checkpoint.Checkpoint // the newest checkpoint signed on demand
	flight       *signFlight            // the on-demand signature in flight
	latestSignAt time.Time              // when Latest last started one (its budget)
	onDemand     atomic.Uint64          // on-demand signatures made
}

type pending struct {
	body []byte
	done chan result
	// queued is when Append queued it, released when the committer sent
	// its result (CommitStats).
	queued, released time.Time
}

// pendings are reused once their caller took the result (the committer is
// done with one when it sent it): the struct, its channel and its body
// buffer are three allocations per event fewer.
var pendingPool = sync.Pool{New: func() any { return &pending{done: make(chan result, 1)} }}

// maxPooledBody is the largest body buffer kept for reuse.
const maxPooledBody = 4 << 10

func putPending(p *pending) {
	if cap(p.body) > maxPooledBody {
		p.body = nil
	}
	p.body = p.body[:0]
	pendingPool.Put(p)
}

type result struct {
	seq uint64
	err error
}

// Open loads the log's head from st (an empty store starts an empty log)
// and starts the committer. signer must hold an ECDSA P-256 key; origin
// names the log in checkpoints (e.g. "ward/example.org").
func Open(ctx context.Context, st store.Store, signer crypto.Signer, origin string, opts ...Option) (*Log, error) {
	if err := checkpoint.CheckOrigin(origin); err != nil {
		return nil, err
	}
	if signer == nil {
		return nil, errors.New("no audit checkpoint signer given")
	}
	pub, err := checkpoint.P256Key(signer.Public())
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint signer: %w", err)
	}
	keyID, err := keyutil.CheckpointKeyID(pub)
	if err != nil {
		return nil, fmt.Errorf("audit checkpoint signer: %w", err)
	}
	if st.MaxBatch() < 3 {
		return nil, fmt.Errorf("store %s accepts batches of %d ops: the audit log needs at least 3", st.Backend(), st.MaxBatch())
	}
	l := &Log{
		st: st, signer: signer, pub: pub, keyID: keyID, origin: origin, now: time.Now, log: slog.Default(),
		maxGroup: 4096, maxAttempts: 32, commitTimeout: 30 * time.Second, cpEvery: DefaultCheckpointInterval,
		wake: make(chan struct{}, 1), exited: make(chan struct{}), changed: make(chan struct{}),
	}
	for _, o := range opts {
		o(l)
	}
	l.headKey = l.prefix + headKeySuffix
	l.turnKey = l.prefix + turnKeySuffix
	h, rev, err := l.loadHead(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w (the audit log cannot be appended to until its head is readable)", err)
	}
	if h != nil {
		l.size, l.hashes, l.headRev, l.cp = h.Size, h.Hashes, rev, h.Checkpoint
	}
	go l.run()
	return l, nil
}

// PublicKey returns the key that verifies this log's checkpoints.
func (l *Log) PublicKey() crypto.PublicKey { return l.pub }

// Origin returns the log's checkpoint origin.
func (l *Log) Origin() string { return l.origin }

// Size returns the number of events this Log knows to be stored (another
// authority sharing the store may have appended more; see Head).
func (l *Log) Size() uint64 {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	return l.size
}

func (l *Log) eventKey(seq uint64) string {
	var b [64]byte
	return string(l.appendEventKey(b[:0], seq))
}

// appendEventKey appends the key of event seq (always the same length:
// the prefixes and 20 digits) to k.
func (l *Log) appendEventKey(k []byte, seq uint64) []byte {
	k = append(k, l.prefix...)
	k = append(k, eventKeyPrefix...)
	var d [20]byte
	s := strconv.AppendUint(d[:0], seq, 10)
	for range 20 - len(s) {
		k = append(k, '0')
	}
	return append(k, s...)
}

// eventKeys returns the keys of events base..base+n-1 in one string, each
// len/n bytes long.
func (l *Log) eventKeys(base uint64, n int) string {
	k := make([]byte, 0, n*(len(l.prefix)+len(eventKeyPrefix)+20))
	for i := range n {
		k = l.appendEventKey(k, base+uint64(i))
	}
	return string(k)
}

// loadHead reads audit/head; a missing head gives (nil, 0, nil).
func (l *Log) loadHead(ctx context.Context) (*headRecord, int64, error) {
	kv, err := l.st.Get(ctx, l.headKey)
	if errors.Is(err, store.ErrNotFound) {
		return nil, 0, nil
	}
	if err != nil {
		return nil, 0, fmt.Errorf("reading audit head %q: %w", l.headKey, err)
	}
	h, err := decodeHead(kv.Value)
	if err != nil {
		return nil, 0, err
	}
	return h, kv.Revision, nil
}

// Append stores e (its Seq is assigned, a zero Time becomes now) and
// returns its sequence number once it is durable: stored with the head
// that counts it, so Head serves a signed checkpoint covering it. An error
// means the event is not known to be stored: the caller must not perform
// the audited operation (fail closed).
func (l *Log) Append(ctx context.Context, e Event) (uint64, error) {
	if e.Time.IsZero() {
		e.Time = l.now()
	}
	p := pendingPool.Get().(*pending)
	body, err := appendEncodedBody(p.body[:0], &e)
	if err != nil {
		putPending(p)
		return 0, err
	}
	p.body = body
	p.queued = time.Now()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		putPending(p)
		return 0, ErrClosed
	}
	l.queue = append(l.queue, p)
	wake := len(l.queue) >= l.lingerFor
	l.mu.Unlock()
	if wake {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	select {
	case r := <-p.done:
		l.stats.resumed.Add(int64(time.Since(p.released)))
		putPending(p)
		return r.seq, r.err
	case <-ctx.Done():
	}
	l.mu.Lock()
	if i := slices.Index(l.queue, p); i >= 0 {
		l.queue = slices.Delete(l.queue, i, i+1)
		l.mu.Unlock()
		putPending(p) // the committer never saw it
		return 0, fmt.Errorf("audit event %q not stored: %w", e.Operation, ctx.Err())
	}
	l.mu.Unlock()
	// The committer holds p and will still send its result: not reused.
	return 0, fmt.Errorf("audit event %q: gave up waiting for the store: %w (it may still be recorded; the operation must not proceed)", e.Operation, ctx.Err())
}

// Close stores the events already queued, stops the committer and makes
// further Appends fail with ErrClosed. It does not close the store.
func (l *Log) Close() error {
	l.mu.Lock()
	if !l.closed {
		l.closed = true
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
	l.mu.Unlock()
	<-l.exited
	return nil
}

// maxLinger bounds how long the committer waits for the callers of the
// previous group to come back before it closes the next group (see also
// lingerCommits); lingerSkip is how many groups it closes at once after a
// wait that did not pay.
const (
	maxLinger  = 5 * time.Millisecond
	lingerSkip = 16
)

// run is the committer. Commits are serial (one store batch at a time), so
// with callers that append again as soon as they are released (every
// unary API call is such a caller), a group that closed the moment the
// previous commit ended would hold only those who arrived during that
// commit; the callers just released would miss it and wait for two commits
// (the one under way and their own), and concurrent callers would split
// into two alternating halves. So the committer waits until as many events
// are queued as there are active callers (nextActive: the previous group
// plus those queued during its commit, or a decaying peak of that), for one
// commit time after the commit, and one more while callers keep arriving,
// up to lingerCommits of them and maxLinger (lingerWindow): an event
// arriving within that window saves a whole commit. An event arriving after
// that window (after an idle spell) or with a single caller is taken at
// once, and if the committer waited and no event came (callers that do not
// append again at once), the next lingerSkip groups are closed without
// waiting.
//
// Issue 17: through the API the callers come back slowly and spread out
// (each call's gRPC work competes for the cores). Each commit costs
// ~270-400 µs of CPU (the store write, its fsync, context switches)
// whatever it holds, and while the cores are busy a wait costs no CPU, so
// bigger groups make calls cheaper. With 64 callers most groups used to be
// closed without waiting: the first caller back often came after the
// one-commit window had passed, which counted as a wait that did not pay
// and switched waiting off for 16 groups; and a small group's count made
// the next group small. Only a wait that ran out now does that, the
// window grows while callers arrive, and the active count decays instead
// of dropping.
func (l *Log) run() {
	defer close(l.exited)
	var (
		timer  *time.Timer
		active int          // events released by the previous commit plus those queued during it
		window lingerWindow // how long to wait for them
		skip   int          // groups to close without waiting
		short  bool         // the last group closed on a window without arrivals
	)
	for {
		l.mu.Lock()
		for len(l.queue) == 0 && !l.closed {
			l.mu.Unlock()
			<-l.wake
			l.mu.Lock()
		}
		if len(l.queue) == 0 {
			l.mu.Unlock()
			return
		}
		lingerFrom := time.Now()
		if want, had := min(active, l.maxGroup), len(l.queue); had < want && skip == 0 {
			timedOut, slept := false, false
			short = false
			l.lingerFor = want
			for len(l.queue) < want && !l.closed {
				wait := time.Until(window.deadline)
				if wait <= 0 {
					// Woken after the window (an idle spell): take what
					// came. Else wait one more commit time if callers
					// came during the window that just ran out.
					if slept && window.extend(len(l.queue)) {
						continue
					}
					timedOut, short = true, slept
					break
				}
				l.mu.Unlock()
				if timer == nil {
					timer = time.NewTimer(wait)
				} else {
					timer.Reset(wait)
				}
				select {
				case <-l.wake:
				case <-timer.C:
				}
				timer.Stop()
				slept = true
				l.mu.Lock()
			}
			l.lingerFor = 0
			if timedOut && slept && len(l.queue) == had {
				skip = lingerSkip
			}
			if len(l.queue) == 0 { // the waiting callers gave up
				l.mu.Unlock()
				continue
			}
		} else if skip > 0 {
			skip--
		}
		var group []*pending
		if len(l.queue) <= l.maxGroup {
			group, l.queue = l.queue, nil
		} else {
			group = l.queue[:l.maxGroup:l.maxGroup]
			l.queue = slices.Clone(l.queue[l.maxGroup:])
		}
		l.mu.Unlock()
		start := time.Now()
		l.stats.closed(group, lingerFrom, start)
		l.commit(group)
		end := time.Now()
		l.stats.committed.Add(int64(end.Sub(start)))
		l.mu.Lock()
		queued := len(l.queue)
		l.mu.Unlock()
		active = nextActive(active, len(group)+queued, short)
		short = false
		window = newLingerWindow(end, end.Sub(start), queued)
	}
}

// fail releases ps with err. It is the one place a failed audit write is
// logged: the callers' operations are refused, and the operator needs the
// cause (disk full, store down, lost races) to fix it.
func (l *Log) fail(ps []*pending, err error) {
	if len(ps) > 0 {
		ops := make([]string, 0, min(len(ps), 8))
		for _, p := range ps[:min(len(ps), 8)] {
			ops = append(ops, bodyOperation(p.body))
		}
		l.log.Error("audit: events could not be stored; the operations they record were refused",
			"events", len(ps), "operations", ops, "origin", l.origin, "backend", l.st.Backend(), "err", err)
	}
	now := time.Now()
	for _, p := range ps {
		p.released = now
		p.done <- result{err: err}
	}
}

func release(ps []*pending, base uint64) {
	now := time.Now()
	for i, p := range ps {
		p.released = now
		p.done <- result{seq: base + uint64(i)}
	}
}

// commit stores group, retrying after revision conflicts, and releases
// every waiter with its sequence number or an error.
func (l *Log) commit(group []*pending) {
	ctx, cancel := context.WithTimeout(context.Background(), l.commitTimeout)
	defer cancel()
	rest := group
	conflicted := false
	var t turn
	defer l.releaseTurn(&t)
	for attempt := 0; ; attempt++ {
		if attempt == l.maxAttempts {
			l.fail(rest, fmt.Errorf("%d audit events not stored: still losing revision races after %d attempts (too many authorities appending at once?); retry the operation", len(rest), attempt))
			return
		}
		if l.stale {
			if err := l.reload(ctx, conflicted); err != nil {
				l.fail(rest, err)
				return
			}
			l.stale = false
		}
		n, err := l.tryCommit(ctx, rest, &t)
		rest = rest[n:]
		if err == nil {
			return
		}
		l.stale = true
		if !errors.Is(err, store.ErrConflict) {
			l.fail(rest, err)
			return
		}
		conflicted = true
		// Another writer won the race, or holds the turn. Wait for a
		// turn held by another (not counted as an attempt), or take the
		// turn after losing turnAfter races in a row (turn.go).
		waited, err := l.awaitTurn(ctx, &t, attempt)
		if err != nil {
			l.fail(rest, err)
			return
		}
		if waited {
			attempt--
			continue
		}
		if t.rev == 0 {
			// Let the winner finish before retrying.
			time.Sleep(time.Duration(rand.Int64N(int64(time.Millisecond) * int64(min(attempt+1, 10)))))
		}
	}
}

// tryCommit stores ps as events base.. in chunks of MaxBatch()-1 events plus
// the head (conditional on its revision), with one signed checkpoint carried
// by the last chunk. It returns how many leading events are stored (their
// waiters released) and the error that stopped it.
func (l *Log) tryCommit(ctx context.Context, ps []*pending, t *turn) (int, error) {
	base := l.size
	n := len(ps)
	rng, err := factory.NewRange(0, base, slices.Clone(l.hashes))
	if err != nil {
		return 0, fmt.Errorf("in-memory audit tree at size %d is invalid: %w", base, err)
	}
	chunk := l.st.MaxBatch() - 2 // the head and the turn take one op each
	nChunks := (n + chunk - 1) / chunk
	// The group's leaves share one buffer and its keys one string (two
	// allocations per group, not two per event); neither is written again.
	size := 0
	for _, p := range ps {
		size += leafLen(p.body)
	}
	buf := make([]byte, 0, size)
	leafHashes := make([]byte, 0, n*sha256.Size)
	leaves := make([][]byte, n)
	keys := l.eventKeys(base, n)
	keyLen := len(keys) / max(n, 1)
	snaps := make([][][]byte, nChunks)
	for i, p := range ps {
		at := len(buf)
		buf = appendLeaf(buf, base+uint64(i), p.body)
		leaves[i] = buf[at:len(buf):len(buf)]
		at = len(leafHashes)
		leafHashes = appendLeafHash(leafHashes, leaves[i])
		if err := rng.Append(leafHashes[at:len(leafHashes):len(leafHashes)], nil); err != nil {
			return 0, fmt.Errorf("extending the audit tree at size %d: %w", base+uint64(i), err)
		}
		if (i+1)%chunk == 0 || i == n-1 {
			snaps[i/chunk] = slices.Clone(rng.Hashes())
		}
	}
	// The last chunk carries a checkpoint for the full size if the last
	// one stored is older than the interval (or by another key, or none),
	// else the newest one signed, which then lags (Head signs on demand).
	cp, signed := l.cp, false
	if l.cpEvery == 0 || cp == nil || cp.KeyID != l.keyID || cp.Origin != l.origin || time.Since(l.signedAt) >= l.cpEvery {
		root, err := rng.GetRootHash(nil)
		if err != nil {
			return 0, fmt.Errorf("computing the audit root at size %d: %w", base+uint64(n), err)
		}
		c, err := checkpoint.SignAs(l.signer, l.keyID, l.origin, base+uint64(n), root, l.now())
		if err != nil {
			return 0, fmt.Errorf("signing the audit checkpoint: %w", err)
		}
		cp, signed = &c, true
	}
	for c := range nChunks {
		a, b := c*chunk, min((c+1)*chunk, n)
		ops := make([]store.Op, 0, b-a+1)
		for i := a; i < b; i++ {
			ops = append(ops, store.Op{Key: keys[i*keyLen : (i+1)*keyLen], Value: leaves[i], ExpectRevision: 0})
		}
		h := headRecord{Size: base + uint64(b), Hashes: snaps[c], Checkpoint: l.cp}
		if c == nChunks-1 {
			h.Checkpoint = cp
		}
		hv, err := encodeHead(&h)
		if err != nil {
			release(ps[:a], base)
			return a, err
		}
		ops = append(ops, store.Op{Key: l.headKey, Value: hv, ExpectRevision: l.headRev}, l.turnOp(t, c == nChunks-1))
		stored := time.Now()
		rev, err := l.st.Batch(ctx, ops)
		l.stats.stored.Add(int64(time.Since(stored)))
		if err != nil {
			release(ps[:a], base)
			return a, fmt.Errorf("storing audit events %d..%d in %s: %w", base+uint64(a), base+uint64(b)-1, l.st.Backend(), err)
		}
		l.turnCommitted(t, c == nChunks-1, rev)
		l.setState(h.Size, snaps[c], rev, h.Checkpoint)
		l.commits.Add(1)
	}
	if signed {
		l.signedAt = time.Now()
	}
	release(ps, base)
	return n, nil
}

func (l *Log) setState(size uint64, hashes [][]byte, rev int64, cp *checkpoint.Checkpoint) {
	l.stateMu.Lock()
	defer l.stateMu.Unlock()
	grew := size > l.size
	l.size, l.hashes, l.headRev, l.cp = size, hashes, rev, cp
	if grew {
		close(l.changed)
		l.changed = make(chan struct{})
	}
}

// reload catches up with the stored head after a conflict or an uncertain
// store error: it re-reads the events this Log lacks, recomputes the
// compact range and checks it against the head before adopting it.
func (l *Log) reload(ctx context.Context, afterConflict bool) error {
	h, rev, err := l.loadHead(ctx)
	if err != nil {
		return fmt.Errorf("reloading the audit head: %w; refusing to append", err)
	}
	if h == nil {
		h = &headRecord{}
	}
	switch {
	case h.Size < l.size:
		l.noteRollback(fmt.Sprintf("stored head has %d events, this authority already saw %d", h.Size, l.size))
		return fmt.Errorf("the stored audit head went back from size %d to %d (rolled back or replaced); refusing to append: run `ward audit verify`", l.size, h.Size)
	case h.Size == l.size:
		if !slices.EqualFunc(h.Hashes, l.hashes, bytes.Equal) {
			l.noteRollback(fmt.Sprintf("stored head at size %d has another tree than this authority's", h.Size))
			return fmt.Errorf("the stored audit head at size %d differs from this authority's tree; refusing to append: run `ward audit verify`", h.Size)
		}
		if afterConflict && rev == l.headRev {
			// The head did not move, so the conflict came from an event key.
			if _, err := l.st.Get(ctx, l.eventKey(h.Size)); err == nil || !errors.Is(err, store.ErrNotFound) {
				return fmt.Errorf("audit event %d already exists beyond the stored head (size %d): the head was rolled back or events were planted; refusing to append: run `ward audit verify`", h.Size, h.Size)
			}
		}
		l.setState(h.Size, l.hashes, rev, h.Checkpoint)
		return nil
	}
	rng, err := factory.NewRange(0, l.size, slices.Clone(l.hashes))
	if err != nil {
		return fmt.Errorf("in-memory audit tree at size %d is invalid: %w", l.size, err)
	}
	err = l.readRange(ctx, l.size, h.Size, func(r Record) error {
		if r.Err != nil {
			return fmt.Errorf("catching up with another writer of the audit log: %w; refusing to append: run `ward audit verify`", r.Err)
		}
		return rng.Append(leafHash(r.Leaf), nil)
	})
	if err != nil {
		return err
	}
	if !slices.EqualFunc(h.Hashes, rng.Hashes(), bytes.Equal) {
		return fmt.Errorf("stored audit events %d..%d do not hash to the stored head; refusing to append: run `ward audit verify`", l.size, h.Size-1)
	}
	l.setState(h.Size, h.Hashes, rev, h.Checkpoint)
	return nil
}

// noteRollback counts and logs a detected rollback of the stored log.
func (l *Log) noteRollback(detail string) {
	l.rollbacks.Add(1)
	l.log.Error("audit: the stored audit log went backwards (rolled back, truncated or replaced in storage)",
		"origin", l.origin, "detail", detail, "action", "run `ward audit verify` and restore the log from a trusted copy")
}

// Commits returns how many store batches this Log wrote (each a durable
// write of one group, or of one chunk of a group larger than the store's
// batch limit): appended events ÷ commits is the group size.
func (l *Log) Commits() uint64 { return l.commits.Load() }

// RollbacksDetected returns how often this Log found the stored log to
// have gone backwards (for the ward_audit_rollbacks_detected_total metric).
func (l *Log) RollbacksDetected() uint64 { return l.rollbacks.Load() }

// bodyOperation extracts the operation of an encoded event body, for logs.
func bodyOperation(body []byte) string {
	var e struct {
		Operation string `json:"operation"`
	}
	if json.Unmarshal(body, &e) != nil {
		return "?"
	}
	return e.Operation
}

// Head returns a signed checkpoint covering the stored head: its size is at
// least the stored size when Head was called, so it covers every event
// whose Append returned before (inclusion proofs, `ward audit verify`,
// reads up to the head, a federation peer's cosignature compared with this
// log). The head may include events appended by other authorities sharing
// the store. If the head holds no checkpoint for its full size by this
// Log's key (commits since the last scheduled signature, an interrupted
// multi-chunk commit, an empty log, a rotated key), one is signed for it;
// it serves again while the head stays the same. Concurrent callers share
// one signature in flight, so however many callers ask, Head signs at most
// once per stored head. Callers that only follow the log use Latest.
func (l *Log) Head(ctx context.Context) (checkpoint.Checkpoint, error) {
	h, err := l.storedHead(ctx)
	if err != nil {
		return checkpoint.Checkpoint{}, err
	}
	if c, err := l.known(h); c != nil || err != nil {
		return derefCP(c), err
	}
	cp, _, err := l.signShared(ctx, h.Size, false)
	return cp, err
}

// ErrCheckpointBehind is Latest's answer to a caller that knows a newer
// checkpoint than any this Log signed or stored within the checkpoint
// interval, once this Log's on-demand signature for the interval is spent:
// ask again later (nodeapi's Sync then sends no checkpoint; the agent keeps
// the one it has).
var ErrCheckpointBehind = errors.New("no audit checkpoint signed within the checkpoint interval reaches the size the caller knows; ask again later")

// Latest returns the newest signed checkpoint of this log for callers that
// witness or follow it (agents' Sync, federated peers fetching it to
// cosign): unlike Head it may lag the stored head by at most the checkpoint
// interval (WithCheckpointInterval: it was signed for the head's full size
// less than an interval ago), so callers in a loop cannot make the
// authority sign on demand. It never returns a checkpoint smaller than
// atLeast (the size the caller already verified) unless the stored head
// itself is smaller. It signs on demand (one signature shared by concurrent
// callers) only when nothing fresh is at hand, at most once per interval;
// past that budget it returns the newest it has if that reaches atLeast, or
// if the stored head is smaller than atLeast (the caller then sees the log
// went backwards), else ErrCheckpointBehind. With an interval of 0 it is
// Head.
func (l *Log) Latest(ctx context.Context, atLeast uint64) (checkpoint.Checkpoint, error) {
	if l.cpEvery == 0 {
		return l.Head(ctx)
	}
	h, err := l.storedHead(ctx)
	if err != nil {
		return checkpoint.Checkpoint{}, err
	}
	if c, err := l.known(h); c != nil || err != nil {
		return derefCP(c), err
	}
	need := min(atLeast, h.Size)
	newest := l.newest(h)
	if newest != nil && newest.Size >= need && l.fresh(newest) {
		return *newest, nil
	}
	cp, ok, err := l.signShared(ctx, h.Size, true)
	switch {
	case err != nil:
		return checkpoint.Checkpoint{}, err
	case ok:
		return cp, nil
	case newest != nil && newest.Size >= need:
		return *newest, nil
	case newest != nil && h.Size < atLeast:
		// The caller knows more of this log than its stored head holds
		// (a rollback, or a restore from an older backup): any checkpoint
		// of it smaller than atLeast is what lets a witness or an agent
		// see that, even one that lags the head. Refusing here would hide
		// a rollback from the witness for as long as other callers keep
		// spending the interval's signature (the head moves after an
		// unseal: each new size needs a new one).
		return *newest, nil
	}
	return checkpoint.Checkpoint{}, fmt.Errorf("audit head at size %d, caller knows size %d: %w", h.Size, atLeast, ErrCheckpointBehind)
}

// StoredSize is the size of the stored head (events appended by every
// authority sharing the store), read without signing anything.
func (l *Log) StoredSize(ctx context.Context) (uint64, error) {
	h, err := l.storedHead(ctx)
	if err != nil {
		return 0, err
	}
	return h.Size, nil
}

// OnDemandSignatures counts the checkpoints Head and Latest signed (the
// committer's scheduled ones not included).
func (l *Log) OnDemandSignatures() uint64 { return l.onDemand.Load() }

func derefCP(c *checkpoint.Checkpoint) checkpoint.Checkpoint {
	if c == nil {
		return checkpoint.Checkpoint{}
	}
	return *c
}

// storedHead loads the stored head (an empty one before the first commit).
func (l *Log) storedHead(ctx context.Context) (*headRecord, error) {
	h, _, err := l.loadHead(ctx)
	if err != nil {
		return nil, err
	}
	if h == nil {
		h = &headRecord{}
	}
	return h, nil
}

// known returns a checkpoint at hand that covers h exactly: the stored one,
// or the one last signed on demand for the same size and root (witnesses,
// agents and federated peers poll a head that did not move); nil if none.
func (l *Log) known(h *headRecord) (*checkpoint.Checkpoint, error) {
	if c := h.Checkpoint; l.covers(c, h.Size) {
		return c, nil
	}
	l.servedMu.Lock()
	c := l.served
	l.servedMu.Unlock()
	if !l.covers(c, h.Size) {
		return nil, nil
	}
	root, err := rootOf(h.Size, h.Hashes)
	if err != nil {
		return nil, fmt.Errorf("audit head at size %d: %w", h.Size, err)
	}
	if bytes.Equal(c.RootHash, root) {
		return c, nil
	}
	return nil, nil
}

// newest is the largest checkpoint of this Log's key at hand for h: the
// stored one or the last signed on demand (not past h's size).
func (l *Log) newest(h *headRecord) *checkpoint.Checkpoint {
	var best *checkpoint.Checkpoint
	if c := h.Checkpoint; c != nil && c.KeyID == l.keyID && c.Origin == l.origin {
		best = c
	}
	l.servedMu.Lock()
	c := l.served
	l.servedMu.Unlock()
	if c != nil && c.Size <= h.Size && (best == nil || c.Size > best.Size) {
		best = c
	}
	return best
}

// fresh reports whether c was signed less than a checkpoint interval ago
// (by its own signed time, on this Log's clock; a time ahead of the clock
// is not fresh).
func (l *Log) fresh(c *checkpoint.Checkpoint) bool {
	age := l.now().Sub(c.Time)
	return age >= 0 && age < l.cpEvery
}

// signFlight is one on-demand signature; every caller waiting for it
// shares its result.
type signFlight struct {
	done chan struct{}
	cp   checkpoint.Checkpoint
	err  error
}

// signShared returns a checkpoint of at least need events signed on demand,
// joining the signature in flight if there is one (at most one is). A
// flight loads the head when it starts, so it covers every caller whose own
// load came before; a caller that saw a larger head than the flight it
// joined waits for the next one. budgeted flights (Latest) start at most
// once per checkpoint interval: ok is false when the budget is spent.
func (l *Log) signShared(ctx context.Context, need uint64, budgeted bool) (cp checkpoint.Checkpoint, ok bool, err error) {
	for {
		l.servedMu.Lock()
		f, mine := l.flight, false
		if f == nil {
			if budgeted {
				if !l.latestSignAt.IsZero() && l.now().Sub(l.latestSignAt) < l.cpEvery {
					l.servedMu.Unlock()
					return checkpoint.Checkpoint{}, false, nil
				}
				l.latestSignAt = l.now()
			}
			f, mine = &signFlight{done: make(chan struct{})}, true
			l.flight = f
		}
		l.servedMu.Unlock()
		if mine {
			l.fly(ctx, f)
		}
		select {
		case <-f.done:
		case <-ctx.Done():
			return checkpoint.Checkpoint{}, false, ctx.Err()
		}
		if f.err != nil {
			return checkpoint.Checkpoint{}, false, f.err
		}
		// The flight this caller ran answers it even if the head went
		// backwards meanwhile (witnesses tell).
		if f.cp.Size >= need || mine {
			return f.cp, true, nil
		}
	}
}

// fly runs flight f: loads the head and signs a checkpoint for it unless
// one covering it is already at hand. It does not end with the context of
// the caller that started it (others wait on it), only after the commit
// timeout.
func (l *Log) fly(ctx context.Context, f *signFlight) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.commitTimeout)
	defer cancel()
	cp, err := func() (checkpoint.Checkpoint, error) {
		h, err := l.storedHead(ctx)
		if err != nil {
			return checkpoint.Checkpoint{}, err
		}
		if c, err := l.known(h); c != nil || err != nil {
			return derefCP(c), err
		}
		root, err := rootOf(h.Size, h.Hashes)
		if err != nil {
			return checkpoint.Checkpoint{}, fmt.Errorf("audit head at size %d: %w", h.Size, err)
		}
		l.onDemand.Add(1)
		cp, err := checkpoint.SignAs(l.signer, l.keyID, l.origin, h.Size, root, l.now())
		if err != nil {
			return checkpoint.Checkpoint{}, fmt.Errorf("signing the audit checkpoint: %w", err)
		}
		return cp, nil
	}()
	l.servedMu.Lock()
	if err == nil && (l.served == nil || cp.Size >= l.served.Size) {
		l.served = &cp
	}
	f.cp, f.err = cp, err
	l.flight = nil
	l.servedMu.Unlock()
	close(f.done)
}

// covers reports whether c is this Log's checkpoint (key and origin) for
// size.
func (l *Log) covers(c *checkpoint.Checkpoint, size uint64) bool {
	return c != nil && c.Size == size && c.KeyID == l.keyID && c.Origin == l.origin
}

// storedSize is the size of the stored head, or this Log's size if the
// head cannot be read (Read still streams what is there).
func (l *Log) storedSize(ctx context.Context) uint64 {
	size := l.Size()
	if h, _, err := l.loadHead(ctx); err == nil && h != nil && h.Size > size {
		size = h.Size
	}
	return size
}

// Read calls fn for every record with from <= Seq < to, in order, clamping
// to to the stored size. A record that cannot be read is passed with Err
// set and reading goes on; Read stops at the first error fn returns, when
// ctx ends, or when the store is closed.
func (l *Log) Read(ctx context.Context, from, to uint64, fn func(Record) error) error {
	if size := l.storedSize(ctx); to > size {
		to = size
	}
	return l.readRange(ctx, from, to, fn)
}

var blockSpans = [...]struct {
	span   uint64
	digits int
}{{1000, 3}, {100, 2}, {10, 1}}

func (l *Log) readRange(ctx context.Context, from, to uint64, fn func(Record) error) error {
	for seq := from; seq < to; {
		if err := ctx.Err(); err != nil {
			return err
		}
		span := uint64(1)
		listed := false
		for _, b := range blockSpans {
			if seq%b.span == 0 && to-seq >= b.span {
				span = b.span
				var err error
				if listed, err = l.listBlock(ctx, seq, b.span, b.digits, fn); err != nil {
					return err
				}
				break
			}
		}
		if !listed {
			// No aligned block, or listing it failed (e.g. one record in
			// it is unreadable): read record by record to say which.
			for i := seq; i < seq+span; i++ {
				r, err := l.getRecord(ctx, i)
				if err != nil {
					return err
				}
				if err := fn(r); err != nil {
					return err
				}
			}
		}
		seq += span
	}
	return nil
}

// listBlock lists the span records starting at seq (aligned) with one List.
// done is false when the List failed and the caller should fall back to Get.
func (l *Log) listBlock(ctx context.Context, seq, span uint64, digits int, fn func(Record) error) (bool, error) {
	key := l.eventKey(seq)
	prefix := key[:len(key)-digits]
	kvs, err := l.st.List(ctx, prefix)
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
			return false, fmt.Errorf("reading audit records %d..%d: %w", seq, seq+span-1, err)
		}
		return false, nil
	}
	leaves := make([][]byte, span)
	for _, kv := range kvs {
		suffix := kv.Key[len(prefix):]
		if len(suffix) != digits {
			continue
		}
		i, err := strconv.ParseUint(suffix, 10, 64)
		if err != nil || i >= span {
			continue
		}
		leaves[i] = kv.Value
	}
	for i, leaf := range leaves {
		r := Record{Seq: seq + uint64(i), Leaf: leaf}
		if leaf == nil {
			r.Err = missingErr(r.Seq, store.ErrNotFound)
		}
		if err := fn(r); err != nil {
			return true, err
		}
	}
	return true, nil
}

func (l *Log) getRecord(ctx context.Context, seq uint64) (Record, error) {
	kv, err := l.st.Get(ctx, l.eventKey(seq))
	switch {
	case err == nil:
		return Record{Seq: seq, Leaf: kv.Value}, nil
	case ctx.Err() != nil || errors.Is(err, store.ErrClosed):
		return Record{}, fmt.Errorf("reading audit record %d: %w", seq, err)
	case errors.Is(err, store.ErrNotFound):
		return Record{Seq: seq, Err: missingErr(seq, err)}, nil
	default:
		return Record{Seq: seq, Err: fmt.Errorf("audit record %d is unreadable (altered in storage?): %w", seq, err)}, nil
	}
}

// Wait blocks until the stored log holds more than size events (appended
// by this Log or another authority sharing the store) and returns the new
// size, or returns ctx's error. `ward audit tail -f` loops Wait + Read.
func (l *Log) Wait(ctx context.Context, size uint64) (uint64, error) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var watch <-chan store.Event
	for {
		if watch == nil {
			// Best effort: without a watch only this Log's appends wake us.
			if ch, err := l.st.Watch(wctx, l.headKey); err == nil {
				watch = ch
			}
		}
		l.stateMu.Lock()
		cur, changed := l.size, l.changed
		l.stateMu.Unlock()
		if cur > size {
			return cur, nil
		}
		if s := l.storedSize(wctx); s > size {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return size, ctx.Err()
		case <-changed:
		case _, ok := <-watch:
			if !ok {
				watch = nil
				if ctx.Err() == nil {
					// The backend dropped the watch; re-watch after a pause.
					select {
					case <-time.After(100 * time.Millisecond):
					case <-ctx.Done():
					}
				}
			}
		}
	}
}
