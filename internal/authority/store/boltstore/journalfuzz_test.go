package boltstore

import (
	"bytes"
	"testing"

	"github.com/wardproject/ward/internal/authority/store"
)

// FuzzParseJournal: any journal file contents either parse into frames
// whose revisions follow each other and whose re-encoding is the stored
// frame, or give an error; nothing panics.
func FuzzParseJournal(f *testing.F) {
	file := func(frames ...[]store.Event) []byte {
		b := append(journalHeader(), make([]byte, journalBlock-16)...)
		for i, evs := range frames {
			b, _ = appendFrame(b, int64(i+1), evs, nil)
			b = append(b, make([]byte, alignUp(int64(len(b)))-int64(len(b)))...)
		}
		return append(b, make([]byte, 64)...)
	}
	put := store.Event{Type: store.EventPut, Key: "audit/e/1", Value: []byte("sealed")}
	del := store.Event{Type: store.EventDelete, Key: "gone"}
	f.Add(file(), int64(0))
	f.Add(file([]store.Event{put}), int64(0))
	f.Add(file([]store.Event{put, del}, []store.Event{del}), int64(1))
	torn := file([]store.Event{put}, []store.Event{put, put})
	f.Add(torn[:journalBlock*2+20], int64(0))
	f.Fuzz(func(t *testing.T, b []byte, floor int64) {
		frames, err := parseJournal("fuzz", b, floor)
		if err != nil {
			return
		}
		for i, fr := range frames {
			if i > 0 && fr.rev != frames[i-1].rev+1 {
				t.Fatalf("frame %d has revision %d after %d", i, fr.rev, frames[i-1].rev)
			}
			if fr.off%journalBlock != 0 {
				t.Fatalf("frame at unaligned offset %d", fr.off)
			}
			enc, _ := appendFrame(nil, fr.rev, fr.ops, nil)
			if !bytes.Equal(enc, b[fr.off:fr.off+int64(len(enc))]) {
				t.Fatalf("frame %d at %d does not re-encode to its stored bytes", i, fr.off)
			}
		}
	})
}
