package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"

	"github.com/wardproject/ward/internal/authority/store"
)

// The journal's on-disk format (WithJournal). Two files sit next to the
// bbolt file, <path>.journal0 and <path>.journal1, each:
//
//	header   one 4096-byte block: "WARDJNL\n", format u32, crc32c of
//	         those 12 bytes u32 (big endian), zeros
//	frames   each at a 4096-byte boundary:
//	         payload length u32 | crc32c u32 | revision u64 | payload
//	         (the crc covers the length, the revision and the payload)
//	payload  uvarint op count, then per op: kind byte (1 put, 2 delete),
//	         uvarint key length, key, and for a put uvarint value length,
//	         value (the value exactly as bbolt stores it without its
//	         revision: barrier-sealed like everything bbolt holds)
//
// A frame is one write (one Put, Delete, CompareAndSwap or Batch) at one
// revision: the revisions of the frames written since a file was last
// reused follow each other without a gap. A file is reused (written again
// from its first frame) only after bbolt has synced every frame in it, so
// whatever follows the newest frames of a file (older frames, parts of
// them) holds revisions bbolt already has. Reading a file stops at
//   - a zero frame header (never written),
//   - a valid frame whose revision is not above the previous one (left
//     from before the file was reused),
//   - an invalid frame (bad length or crc: a torn last write) after which
//     no valid frame newer than both the previous frame and the store
//     follows; if one does follow, the invalid frame is corruption in the
//     middle and the journal is refused.
const (
	journalMagic   = "WARDJNL\n"
	journalFormat  = 1
	journalBlock   = 4096
	frameHeaderLen = 16
	// maxFramePayload bounds a frame's length field (a Batch of 10000
	// large values fits; a larger length is corruption).
	maxFramePayload = 1 << 30

	opPut    = 1
	opDelete = 2
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// journalHeader returns the header block's first 16 bytes.
func journalHeader() []byte {
	h := make([]byte, 16, journalBlock)
	copy(h, journalMagic)
	binary.BigEndian.PutUint32(h[8:], journalFormat)
	binary.BigEndian.PutUint32(h[12:], crc32.Checksum(h[:12], castagnoli))
	return h
}

// frame is one decoded journal frame.
type frame struct {
	rev int64
	ops []store.Event // EventPut (Key, Value) or EventDelete (Key)
	off int64         // where it starts in its file
}

// appendFrame encodes one frame of evs at rev onto buf; valAt, if not
// nil, gets where each put's value starts in the frame appended.
func appendFrame(buf []byte, rev int64, evs []store.Event, valAt []int) ([]byte, []int) {
	at := len(buf)
	buf = append(buf, make([]byte, frameHeaderLen)...)
	buf = binary.AppendUvarint(buf, uint64(len(evs)))
	for _, ev := range evs {
		if ev.Type == store.EventDelete {
			buf = append(buf, opDelete)
			buf = binary.AppendUvarint(buf, uint64(len(ev.Key)))
			buf = append(buf, ev.Key...)
			continue
		}
		buf = append(buf, opPut)
		buf = binary.AppendUvarint(buf, uint64(len(ev.Key)))
		buf = append(buf, ev.Key...)
		buf = binary.AppendUvarint(buf, uint64(len(ev.Value)))
		if valAt != nil {
			valAt = append(valAt, len(buf)-at)
		}
		buf = append(buf, ev.Value...)
	}
	h := buf[at:]
	binary.BigEndian.PutUint32(h[0:], uint32(len(h)-frameHeaderLen))
	binary.BigEndian.PutUint64(h[8:], uint64(rev))
	binary.BigEndian.PutUint32(h[4:], frameCRC(h))
	return buf, valAt
}

// frameCRC is the checksum of the frame f (header and payload).
func frameCRC(f []byte) uint32 {
	c := crc32.Update(0, castagnoli, f[0:4])
	return crc32.Update(c, castagnoli, f[8:])
}

// alignUp rounds n up to the next block boundary.
func alignUp(n int64) int64 { return (n + journalBlock - 1) &^ (journalBlock - 1) }

// validFrameAt reports whether a frame with a matching checksum starts at
// off, and returns its revision and payload.
func validFrameAt(b []byte, off int64) (int64, []byte, bool) {
	if off < 0 || off+frameHeaderLen > int64(len(b)) {
		return 0, nil, false
	}
	h := b[off:]
	n := int64(binary.BigEndian.Uint32(h[0:]))
	rev := int64(binary.BigEndian.Uint64(h[8:]))
	if n > maxFramePayload || n > int64(len(h))-frameHeaderLen || rev <= 0 {
		return 0, nil, false
	}
	f := h[:frameHeaderLen+n]
	if binary.BigEndian.Uint32(h[4:]) != frameCRC(f) {
		return 0, nil, false
	}
	return rev, f[frameHeaderLen:], true
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// errJournalCorrupt marks a journal that must not be replayed.
var errJournalCorrupt = errors.New("the store journal is corrupt")

// parseJournal reads the frames of one journal file's contents b (name is
// for errors). floor is the revision bbolt holds: an invalid frame is a
// torn tail (tolerated: nothing after it counts) unless a valid frame
// newer than both floor and the frame before it follows, which makes it
// corruption in the middle (an error). A header of another format is an
// error naming the file and what to do.
func parseJournal(name string, b []byte, floor int64) ([]frame, error) {
	if len(b) < 16 || allZero(b[:16]) {
		// Created, header not yet durable: nothing was written after it
		// (frames follow only a synced header).
		if later := newerFrame(b, journalBlock, floor); later >= 0 {
			return nil, fmt.Errorf("journal %s has no header but holds a record at offset %d: %w; restore the data directory from a backup", name, later, errJournalCorrupt)
		}
		return nil, nil
	}
	if string(b[:8]) != journalMagic {
		return nil, fmt.Errorf("%s is not a ward journal (it does not start with %q): move it out of the data directory if it does not belong there", name, journalMagic)
	}
	if v := binary.BigEndian.Uint32(b[8:]); v != journalFormat {
		return nil, fmt.Errorf("journal %s has format %d; this ward reads format %d: start the ward version that wrote it (it replays the journal into the store and removes it on a clean stop), then this one", name, v, journalFormat)
	}
	if binary.BigEndian.Uint32(b[12:]) != crc32.Checksum(b[:12], castagnoli) {
		return nil, fmt.Errorf("journal %s: header checksum mismatch: %w; restore the data directory from a backup", name, errJournalCorrupt)
	}
	var (
		out  []frame
		prev int64
	)
	for off := int64(journalBlock); off+frameHeaderLen <= int64(len(b)); {
		if allZero(b[off : off+frameHeaderLen]) {
			break
		}
		rev, payload, ok := validFrameAt(b, off)
		if !ok {
			if later := newerFrame(b, off+journalBlock, max(prev, floor)); later >= 0 {
				return nil, fmt.Errorf("journal %s: the record at offset %d is damaged but a newer record follows at offset %d: %w (not a torn last write); restore the data directory from a backup", name, off, later, errJournalCorrupt)
			}
			break // a torn last write
		}
		if prev != 0 && rev <= prev {
			break // left from before the file was reused
		}
		if prev != 0 && rev != prev+1 {
			return nil, fmt.Errorf("journal %s: record at offset %d has revision %d after %d: %w; restore the data directory from a backup", name, off, rev, prev, errJournalCorrupt)
		}
		ops, err := decodePayload(payload)
		if err != nil {
			return nil, fmt.Errorf("journal %s: record at offset %d (revision %d): %v: %w; restore the data directory from a backup", name, off, rev, err, errJournalCorrupt)
		}
		out = append(out, frame{rev: rev, ops: ops, off: off})
		prev = rev
		off = alignUp(off + frameHeaderLen + int64(len(payload)))
	}
	return out, nil
}

// newerFrame returns the offset of the first valid frame at a block
// boundary from from on with a revision above than, or -1.
func newerFrame(b []byte, from, than int64) int64 {
	for off := alignUp(from); off+frameHeaderLen <= int64(len(b)); off += journalBlock {
		if rev, _, ok := validFrameAt(b, off); ok && rev > than {
			return off
		}
	}
	return -1
}

func decodePayload(p []byte) ([]store.Event, error) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)) {
		return nil, errors.New("bad op count")
	}
	p = p[k:]
	evs := make([]store.Event, 0, n)
	field := func() ([]byte, error) {
		l, k := binary.Uvarint(p)
		if k <= 0 || l > uint64(len(p)-k) {
			return nil, errors.New("bad field length")
		}
		f := p[k : k+int(l)]
		p = p[k+int(l):]
		return f, nil
	}
	for range n {
		if len(p) == 0 {
			return nil, errors.New("truncated op")
		}
		kind := p[0]
		p = p[1:]
		key, err := field()
		if err != nil {
			return nil, err
		}
		if len(key) == 0 {
			return nil, errors.New("empty key")
		}
		switch kind {
		case opDelete:
			evs = append(evs, store.Event{Type: store.EventDelete, Key: string(key)})
		case opPut:
			val, err := field()
			if err != nil {
				return nil, err
			}
			evs = append(evs, store.Event{Type: store.EventPut, Key: string(key), Value: val})
		default:
			return nil, fmt.Errorf("unknown op kind %d", kind)
		}
	}
	if len(p) != 0 {
		return nil, fmt.Errorf("%d bytes after the last op", len(p))
	}
	return evs, nil
}
