package filecrypt

import (
	"io"
	"os"
)

// writeBehindChunk is how much output writeBehind lets accumulate before
// it asks the kernel to start writing it to disk (0: never, the file is
// only written back by the final fsync). A variable for the benchmarks.
var writeBehindChunk int64 = 8 << 20

// writeBehind passes writes to f and, after every writeBehindChunk bytes,
// starts the kernel's writeback of the range just completed without
// waiting for it (sync_file_range(2) SYNC_FILE_RANGE_WRITE on Linux; a
// no-op elsewhere). The disk then writes while the next segments are
// encrypted, instead of all at once in the fsync that AtomicWrite makes
// before the rename: durability is unchanged (that fsync still waits for
// every byte), only the wait at the end shrinks.
type writeBehind struct {
	f       *os.File
	off     int64 // bytes written
	started int64 // writeback started for [0, started)
}

// WriteBehind wraps f, the output file of a large stream, so that its
// writeback starts while the stream is still being written; AtomicWrite
// still syncs the file before the rename.
func WriteBehind(f *os.File) io.Writer {
	if writeBehindChunk <= 0 {
		return f
	}
	return &writeBehind{f: f}
}

func (w *writeBehind) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.started >= writeBehindChunk {
		startWriteback(w.f, w.started, w.off-w.started)
		w.started = w.off
	}
	return n, err
}
