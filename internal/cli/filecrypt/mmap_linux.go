package filecrypt

import (
	"os"
	"syscall"
)

// mapFile maps the first size bytes of f read-only (shared: the page
// cache itself, no copy) for sequential reading, or returns ok false.
func mapFile(f *os.File, size int64) (b []byte, unmap func(), ok bool) {
	if size <= 0 || size != int64(int(size)) {
		return nil, nil, false
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, nil, false
	}
	var merr error
	if err := rc.Control(func(fd uintptr) {
		b, merr = syscall.Mmap(int(fd), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	}); err != nil || merr != nil {
		return nil, nil, false
	}
	_ = syscall.Madvise(b, syscall.MADV_SEQUENTIAL) // read ahead, drop behind
	return b, func() { _ = syscall.Munmap(b) }, true
}

// release drops the page-table entries of b, a sealed part of a mapping
// from mapFile, now rather than all at once when the mapping is unmapped
// (the file's pages stay in the page cache; touching b again would only
// fault them in again). With a file held in 4 KiB pages, tearing down a
// 1 GiB mapping takes tens of milliseconds on one core after everything
// else is done; released piece by piece it overlaps the sealing.
func release(b []byte) { _ = syscall.Madvise(b, syscall.MADV_DONTNEED) }
