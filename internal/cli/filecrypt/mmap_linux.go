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
