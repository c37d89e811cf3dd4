//go:build !linux

package filecrypt

import "os"

// mapFile is not used outside Linux: files are read with ReadAt.
func mapFile(*os.File, int64) ([]byte, func(), bool) { return nil, nil, false }

func release([]byte) {}
