package audit

import (
	"bytes"
	"crypto"
	"encoding/hex"
	"errors"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/shared/checkpoint"
)

// ProblemKind classifies what a Verifier found.
type ProblemKind string

// Problem kinds. Record-level kinds carry the sequence number.
const (
	ProblemUnreadable   ProblemKind = "unreadable"   // record could not be read (altered in storage)
	ProblemMissing      ProblemKind = "missing"      // record deleted, or absent from the stream
	ProblemReordered    ProblemKind = "reordered"    // event's own seq differs from its position
	ProblemMalformed    ProblemKind = "malformed"    // leaf holds no readable seq
	ProblemOrder        ProblemKind = "order"        // stream repeated or went back to a seq
	ProblemExtra        ProblemKind = "extra"        // records beyond the checkpoint's size
	ProblemSize         ProblemKind = "size"         // fewer records than the checkpoint's size
	ProblemRoot         ProblemKind = "root"         // records do not hash to the checkpoint's root
	ProblemUnverified   ProblemKind = "unverified"   // a check could not run (records missing)
	ProblemSignature    ProblemKind = "signature"    // checkpoint malformed, wrong key or bad signature
	ProblemOrigin       ProblemKind = "origin"       // checkpoint names another log
	ProblemInconsistent ProblemKind = "inconsistent" // head does not extend the earlier checkpoint
)

// Problem is one finding. Seq is the record concerned, or -1.
type Problem struct {
	Kind   ProblemKind
	Seq    int64
	Detail string
}

func (p Problem) String() string {
	if p.Seq < 0 {
		return fmt.Sprintf("%s: %s", p.Kind, p.Detail)
	}
	return fmt.Sprintf("seq %d: %s: %s", p.Seq, p.Kind, p.Detail)
}

// Report is a Verifier's verdict.
type Report struct {
	Records    uint64 // records consumed
	Size       uint64 // the head checkpoint's size
	RootOK     bool   // records hash to the head's root and its signature holds
	Consistent bool   // an Earlier checkpoint was given and proven to be a prefix
	Problems   []Problem
	Omitted    int // record-level problems beyond MaxProblems, not listed
}

// OK says whether verification found nothing wrong.
func (r *Report) OK() bool { return len(r.Problems) == 0 && r.Omitted == 0 && r.RootOK }

// VerifyOptions says what records must add up to.
type VerifyOptions struct {
	// Head is the signed checkpoint the records [0, Head.Size) must match.
	Head checkpoint.Checkpoint
	// PublicKey verifies Head (and Earlier unless EarlierKey is set).
	PublicKey crypto.PublicKey
	// Earlier, if set, is an older checkpoint the head must extend; the
	// Verifier proves it with an RFC 6962 consistency proof built from
	// the records.
	Earlier *checkpoint.Checkpoint
	// EarlierKey verifies Earlier when the signing key was rotated.
	EarlierKey crypto.PublicKey
	// Origin, if set, is the origin both checkpoints must name.
	Origin string
	// MaxProblems caps the record-level problems listed (default 1000).
	MaxProblems int
}

// Verifier checks a stream of records against a signed head checkpoint
// (and optionally an earlier one) in O(log n) memory: feed every record
// of [0, Head.Size) in order to Add, then call Finish. It is pure: no
// store, no network, so `ward audit verify` runs it on records streamed
// from the authority.
type Verifier struct {
	opts        VerifyOptions
	next        uint64 // position of the next record
	rng         *compact.Range
	broken      bool   // a leaf could not be hashed: roots cannot be computed
	brokenAt    uint64 // first such position
	earlierRoot []byte // root of the first Earlier.Size leaves, once hashed
	nodes       proof.Nodes
	want        map[compact.NodeID][]byte // consistency-proof nodes (nil = not seen yet)
	visit       compact.VisitFn
	extra       uint64
	firstExtra  uint64
	rep         Report
}

// NewVerifier returns a Verifier for opts.
func NewVerifier(opts VerifyOptions) *Verifier {
	if opts.MaxProblems <= 0 {
		opts.MaxProblems = 1000
	}
	v := &Verifier{opts: opts, rng: factory.NewEmptyRange(0)}
	v.rep.Size = opts.Head.Size
	if e := opts.Earlier; e != nil && e.Size > 0 && e.Size < opts.Head.Size {
		nodes, err := proof.Consistency(e.Size, opts.Head.Size)
		if err == nil {
			v.nodes = nodes
			v.want = make(map[compact.NodeID][]byte, len(nodes.IDs))
			for _, id := range nodes.IDs {
				v.want[id] = nil
			}
			v.visit = func(id compact.NodeID, hash []byte) {
				if h, ok := v.want[id]; ok && h == nil {
					v.want[id] = hash
				}
			}
		}
	}
	return v
}

func (v *Verifier) record(kind ProblemKind, seq uint64, format string, args ...any) {
	if len(v.rep.Problems) >= v.opts.MaxProblems {
		v.rep.Omitted++
		return
	}
	v.rep.Problems = append(v.rep.Problems, Problem{Kind: kind, Seq: int64(seq), Detail: fmt.Sprintf(format, args...)})
}

func (v *Verifier) global(kind ProblemKind, format string, args ...any) {
	v.rep.Problems = append(v.rep.Problems, Problem{Kind: kind, Seq: -1, Detail: fmt.Sprintf(format, args...)})
}

func (v *Verifier) breakAt(seq uint64) {
	if !v.broken {
		v.broken, v.brokenAt = true, seq
	}
}

// Add consumes the next record. Records must come in increasing Seq
// order; gaps are reported as missing.
func (v *Verifier) Add(r Record) {
	v.rep.Records++
	size := v.opts.Head.Size
	if r.Seq < v.next {
		v.record(ProblemOrder, r.Seq, "record received again or out of order (expected %d next); stream records in order", v.next)
		return
	}
	if r.Seq > v.next {
		if hi := min(r.Seq, size); v.next < hi {
			v.record(ProblemMissing, v.next, "records %d..%d absent from the stream", v.next, hi-1)
			v.breakAt(v.next)
		}
		v.next = r.Seq
	}
	seq := v.next
	v.next++
	if seq >= size {
		if v.extra == 0 {
			v.firstExtra = seq
		}
		v.extra++
		return
	}
	if r.Err != nil {
		kind := ProblemUnreadable
		if errors.Is(r.Err, store.ErrNotFound) {
			kind = ProblemMissing
		}
		v.record(kind, seq, "%v", r.Err)
		v.breakAt(seq)
		return
	}
	if s, ok := leafSeq(r.Leaf); !ok {
		v.record(ProblemMalformed, seq, "record holds no readable sequence number")
	} else if s != seq {
		v.record(ProblemReordered, seq, "record at position %d holds event %d (moved or renumbered)", seq, s)
	}
	if v.broken {
		return
	}
	// Append cannot fail on a range that starts at 0.
	_ = v.rng.Append(leafHash(r.Leaf), v.visit)
	if e := v.opts.Earlier; e != nil && v.rng.End() == e.Size {
		v.earlierRoot, _ = v.rng.GetRootHash(nil)
	}
}

// Finish runs the checks that need the whole stream and returns the report.
func (v *Verifier) Finish() Report {
	head := v.opts.Head
	sigOK := true
	if err := checkpoint.Verify(head, v.opts.PublicKey); err != nil {
		sigOK = false
		v.global(ProblemSignature, "head checkpoint: %v", err)
	}
	if v.opts.Origin != "" && head.Origin != v.opts.Origin {
		v.global(ProblemOrigin, "head checkpoint is for log %q, expected %q", head.Origin, v.opts.Origin)
	}
	if v.next < head.Size {
		v.global(ProblemSize, "stream ended after %d of the checkpoint's %d records: records %d..%d missing (log truncated?)", v.next, head.Size, v.next, head.Size-1)
		v.breakAt(v.next)
	}
	if v.extra > 0 {
		v.global(ProblemExtra, "%d records beyond the checkpoint's size %d (first at seq %d): verify against a newer checkpoint or stream only [0, size)", v.extra, head.Size, v.firstExtra)
	}
	rootOK := false
	if v.broken {
		v.global(ProblemUnverified, "root not checked: record %d could not be hashed", v.brokenAt)
	} else {
		root := th.EmptyRoot()
		if head.Size > 0 {
			root, _ = v.rng.GetRootHash(nil)
		}
		if bytes.Equal(root, head.RootHash) {
			rootOK = true
		} else {
			v.global(ProblemRoot, "the %d records hash to root %s but the checkpoint says %s: records were altered, reordered or replaced", head.Size, hex.EncodeToString(root), hex.EncodeToString(head.RootHash))
		}
	}
	v.rep.RootOK = rootOK && sigOK
	if v.opts.Earlier != nil {
		v.checkEarlier(rootOK)
	}
	return v.rep
}

func (v *Verifier) checkEarlier(rootOK bool) {
	head, e := v.opts.Head, v.opts.Earlier
	key := v.opts.EarlierKey
	if key == nil {
		key = v.opts.PublicKey
	}
	if err := checkpoint.Verify(*e, key); err != nil {
		v.global(ProblemSignature, "earlier checkpoint: %v", err)
		return
	}
	if e.Origin != head.Origin {
		v.global(ProblemInconsistent, "earlier checkpoint is for log %q, the head for %q", e.Origin, head.Origin)
		return
	}
	if e.Size > head.Size {
		v.global(ProblemInconsistent, "earlier checkpoint covers %d records but the head only %d: the log was truncated or rolled back", e.Size, head.Size)
		return
	}
	earlierRoot := v.earlierRoot
	if e.Size == 0 {
		earlierRoot = th.EmptyRoot()
	}
	if earlierRoot == nil {
		v.global(ProblemUnverified, "consistency with the earlier checkpoint at size %d not checked: record %d could not be hashed", e.Size, v.brokenAt)
		return
	}
	if !bytes.Equal(earlierRoot, e.RootHash) {
		v.global(ProblemInconsistent, "the first %d records hash to %s but the earlier checkpoint says %s: history before seq %d was rewritten", e.Size, hex.EncodeToString(earlierRoot), hex.EncodeToString(e.RootHash), e.Size)
		return
	}
	if !rootOK {
		v.global(ProblemUnverified, "consistency with the earlier checkpoint at size %d not proven: the records do not match the head", e.Size)
		return
	}
	var pf [][]byte
	if v.want != nil {
		hashes := make([][]byte, len(v.nodes.IDs))
		for i, id := range v.nodes.IDs {
			hashes[i] = v.want[id]
		}
		var err error
		if pf, err = v.nodes.Rehash(hashes, th.HashChildren); err != nil {
			v.global(ProblemUnverified, "building consistency proof %d -> %d: %v", e.Size, head.Size, err)
			return
		}
	}
	if err := proof.VerifyConsistency(th, e.Size, head.Size, pf, e.RootHash, head.RootHash); err != nil {
		v.global(ProblemInconsistent, "consistency proof %d -> %d does not verify: %v", e.Size, head.Size, err)
		return
	}
	v.rep.Consistent = true
}
