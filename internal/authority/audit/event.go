// Package audit is ward's tamper-evident audit log: security events are
// appended (group-committed, fail closed) to an RFC 6962 Merkle tree kept in
// the store, every commit is sealed by a signed checkpoint, and a pure
// Verifier proves from streamed records that the log matches a signed head
// and extends an earlier checkpoint. Events never hold plaintext or key
// material; sensitive values are logged only as HMACs (see Hasher).
package audit

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Result values of an Event.
const (
	ResultOK      = "ok"
	ResultError   = "error"
	ResultDenied  = "denied"
	ResultStarted = "started" // first half of a two-event admin mutation
)

// Event is one audit record. Its JSON encoding (EncodeEvent) is
// deterministic and is the Merkle leaf, so it never changes once stored.
// Fields holds values that are safe to log (names, ids, HMACs from Hasher);
// plaintext, keys and shares must never be put in an Event.
type Event struct {
	Seq        uint64            `json:"seq"`
	Time       time.Time         `json:"time"`
	RequestID  string            `json:"request_id,omitempty"`
	Actor      string            `json:"actor,omitempty"`
	Operation  string            `json:"operation"`
	Key        string            `json:"key,omitempty"`
	KeyVersion uint32            `json:"key_version,omitempty"`
	Result     string            `json:"result"`
	Error      string            `json:"error,omitempty"`
	Fields     map[string]string `json:"fields,omitempty"`
	Count      int               `json:"count,omitempty"`

	// Context holds sensitive values (a KMS encryption context) that may
	// only reach the log as HMACs: a Recorder made by NewLogRecorder
	// replaces them by Fields "context.<key>" = Hasher.HashValue(value).
	// It is never encoded; an event still holding it is refused.
	Context map[string]string `json:"-"`
}

// eventBody is Event without Seq: appenders encode it in parallel, the
// committer prefixes the sequence number it assigns. The field order must
// match Event's so that the result equals json.Marshal(Event).
type eventBody struct {
	Time       time.Time         `json:"time"`
	RequestID  string            `json:"request_id,omitempty"`
	Actor      string            `json:"actor,omitempty"`
	Operation  string            `json:"operation"`
	Key        string            `json:"key,omitempty"`
	KeyVersion uint32            `json:"key_version,omitempty"`
	Result     string            `json:"result"`
	Error      string            `json:"error,omitempty"`
	Fields     map[string]string `json:"fields,omitempty"`
	Count      int               `json:"count,omitempty"`
}

// Validate reports what makes e unfit to be logged.
func (e *Event) Validate() error {
	if e.Operation == "" {
		return errors.New("audit event has no operation: set Operation (e.g. \"kms.encrypt\")")
	}
	switch e.Result {
	case ResultOK, ResultError, ResultDenied, ResultStarted:
	default:
		return fmt.Errorf("audit event %q has result %q: use ok, error, denied or started", e.Operation, e.Result)
	}
	if len(e.Context) > 0 {
		return fmt.Errorf("audit event %q holds context values in clear: record it through a Recorder (NewLogRecorder), which hashes them", e.Operation)
	}
	if e.Count < 0 {
		return fmt.Errorf("audit event %q has negative count %d", e.Operation, e.Count)
	}
	if y := e.Time.UTC().Year(); y < 1 || y > 9999 {
		return fmt.Errorf("audit event %q has time outside years 1..9999", e.Operation)
	}
	return nil
}

// encodeBody encodes everything but Seq, with Time in UTC. It returns
// JSON starting with `{"time":`.
func encodeBody(e *Event) ([]byte, error) { return appendEncodedBody(make([]byte, 0, 256), e) }

// appendEncodedBody is encodeBody appending to dst (a pooled buffer).
func appendEncodedBody(dst []byte, e *Event) ([]byte, error) {
	if err := e.Validate(); err != nil {
		return nil, err
	}
	body := eventBody{
		Time: e.Time.UTC().Round(0), RequestID: e.RequestID, Actor: e.Actor,
		Operation: e.Operation, Key: e.Key, KeyVersion: e.KeyVersion, Result: e.Result,
		Error: e.Error, Fields: e.Fields, Count: e.Count,
	}
	if b, ok := appendBody(dst, &body); ok {
		return b, nil
	}
	b, err := json.Marshal(body)
	if err != nil {
		return nil, fmt.Errorf("encoding audit event %q: %w", e.Operation, err)
	}
	return b, nil
}

const seqPrefix = `{"seq":`

// joinLeaf builds the leaf for body at seq: {"seq":N, + body without '{'.
func joinLeaf(seq uint64, body []byte) []byte {
	return appendLeaf(make([]byte, 0, leafLen(body)), seq, body)
}

// leafLen bounds the length of the leaf of body (any seq).
func leafLen(body []byte) int { return len(seqPrefix) + 21 + len(body) }

// appendLeaf appends the leaf for body at seq to dst.
func appendLeaf(dst []byte, seq uint64, body []byte) []byte {
	dst = append(dst, seqPrefix...)
	dst = strconv.AppendUint(dst, seq, 10)
	dst = append(dst, ',')
	return append(dst, body[1:]...)
}

// EncodeEvent returns the deterministic JSON encoding of e (the Merkle
// leaf): fields in declaration order, map keys sorted, Time in UTC
// RFC 3339 with nanoseconds. It equals json.Marshal of e with Time in UTC.
func EncodeEvent(e Event) ([]byte, error) {
	body, err := encodeBody(&e)
	if err != nil {
		return nil, err
	}
	return joinLeaf(e.Seq, body), nil
}

// DecodeEvent parses a leaf back into an Event. Leaves come from storage or
// the network: treat the result as untrusted until a Verifier accepted it.
func DecodeEvent(leaf []byte) (Event, error) {
	var e Event
	if err := json.Unmarshal(leaf, &e); err != nil {
		return Event{}, fmt.Errorf("decoding audit event: %w", err)
	}
	return e, nil
}

// leafSeq extracts the seq field a leaf claims. The fast path reads the
// canonical prefix {"seq":N, written by EncodeEvent; anything else is
// decoded as JSON. ok is false when no sequence number can be found.
func leafSeq(leaf []byte) (uint64, bool) {
	if rest, found := bytes.CutPrefix(leaf, []byte(seqPrefix)); found {
		n := 0
		for n < len(rest) && n < 21 && rest[n] >= '0' && rest[n] <= '9' {
			n++
		}
		if n > 0 && n < len(rest) && (rest[n] == ',' || rest[n] == '}') && (n == 1 || rest[0] != '0') {
			if v, err := strconv.ParseUint(string(rest[:n]), 10, 64); err == nil {
				return v, true
			}
		}
	}
	var probe struct {
		Seq *uint64 `json:"seq"`
	}
	if err := json.Unmarshal(leaf, &probe); err != nil || probe.Seq == nil {
		return 0, false
	}
	return *probe.Seq, true
}

// HashPrefix starts every value produced by Hasher.
const HashPrefix = "hmac-sha256:"

// Hasher turns sensitive values (encryption-context values, object names)
// into keyed HMAC-SHA256 digests, as Vault's audit devices do: equal values
// give equal digests, so an operator holding the key can search the log,
// but the log itself reveals nothing. Safe for concurrent use.
type Hasher struct {
	key []byte
}

// NewHasher returns a Hasher keyed with a copy of key (at least 32 bytes,
// from a CSPRNG or a KDF; keep it secret and stable across restarts).
func NewHasher(key []byte) (*Hasher, error) {
	if len(key) < 32 {
		return nil, fmt.Errorf("audit hasher key is %d bytes: need at least 32", len(key))
	}
	return &Hasher{key: bytes.Clone(key)}, nil
}

// HashValue returns "hmac-sha256:<hex>" of v.
func (h *Hasher) HashValue(v string) string {
	m := hmac.New(sha256.New, h.key)
	m.Write([]byte(v))
	var sum [sha256.Size]byte
	return HashPrefix + hex.EncodeToString(m.Sum(sum[:0]))
}

// HashContext returns a copy of ctx whose values are replaced by
// HashValue; keys are kept as they are. A nil or empty map gives nil.
func (h *Hasher) HashContext(ctx map[string]string) map[string]string {
	if len(ctx) == 0 {
		return nil
	}
	out := make(map[string]string, len(ctx))
	for k, v := range ctx {
		out[k] = h.HashValue(v)
	}
	return out
}
