package filecrypt

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/wardproject/ward/internal/testutil/benchcpu"
)

// BenchmarkCeiling is what ward's CLI can reach at best to /dev/null on
// this machine with this input (bench/envelope/run.sh compares the CLI
// against it): AES-256-GCM over 64 KiB segments on every core
// (GOMAXPROCS goroutines taking 1 MiB batches, as the envelope does),
//
//   - seal-hot, open-hot: from buffers hot in cache (the cipher alone);
//   - seal-mapped: sealing straight from a read-only mapping of the file
//     WARD_CEILING_IN, mapped and unmapped every pass (what `ward encrypt`
//     does with a file of 4 MiB or more);
//   - open-pread: one pread per 1 MiB batch of a ciphertext file, then
//     each segment opened into a plaintext buffer (what `ward decrypt`
//     does: ciphertext is never opened from a mapping). The ciphertext is
//     written next to WARD_CEILING_IN with 1 MiB writes (as ward writes
//     its output) and removed afterwards.
//
// No process start, key, header, ordering or output: only the cipher and
// the reading of the input. MB/cpu-s is per second of CPU time (user +
// system, all threads).
func BenchmarkCeiling(b *testing.B) {
	in := os.Getenv("WARD_CEILING_IN")
	if in == "" {
		b.Skip("set WARD_CEILING_IN to a file of 1 MiB or more (bench/envelope/run.sh does)")
	}
	const (
		seg   = 64 << 10
		per   = 16 // segments per batch
		batch = per * seg
		ctSeg = seg + 16
	)
	key := make([]byte, 32)
	rand.Read(key)
	blk, err := aes.NewCipher(key)
	if err != nil {
		b.Fatal(err)
	}
	aead, err := cipher.NewGCM(blk)
	if err != nil {
		b.Fatal(err)
	}
	nonce := func(nb *[12]byte, i int) []byte {
		binary.BigEndian.PutUint64(nb[4:], uint64(i))
		return nb[:]
	}
	st, err := os.Stat(in)
	if err != nil {
		b.Fatal(err)
	}
	nbatch := int(st.Size() / batch)
	if nbatch == 0 {
		b.Fatalf("%s is smaller than one batch (%d bytes)", in, batch)
	}
	size := int64(nbatch) * batch
	workers := runtime.GOMAXPROCS(0)
	// pass runs do(k, ct, pt) for every batch k on all workers; ct and pt
	// are each worker's own buffers, reused.
	pass := func(do func(k int, ct, pt []byte)) {
		var next atomic.Int64
		var wg sync.WaitGroup
		for range workers {
			wg.Go(func() {
				ct, pt := make([]byte, per*ctSeg), make([]byte, batch)
				for {
					k := int(next.Add(1) - 1)
					if k >= nbatch {
						return
					}
					do(k, ct, pt)
				}
			})
		}
		wg.Wait()
	}
	run := func(name string, setup func(), each func()) {
		b.Run(name, func(b *testing.B) {
			if setup != nil {
				setup()
			}
			b.SetBytes(size)
			b.ResetTimer()
			c0 := benchcpu.Process(b)
			for b.Loop() {
				each()
			}
			if c := (benchcpu.Process(b) - c0).Seconds(); c > 0 {
				b.ReportMetric(float64(b.N)*float64(size)/1e6/c, "MB/cpu-s")
			}
		})
	}

	hotPT := make([]byte, batch)
	rand.Read(hotPT)
	var hotCT []byte
	run("seal-hot", nil, func() {
		pass(func(k int, ct, pt []byte) {
			var nb [12]byte
			for i := range per {
				aead.Seal(ct[i*ctSeg:i*ctSeg], nonce(&nb, k*per+i), hotPT[i*seg:(i+1)*seg], nil)
			}
		})
	})
	run("open-hot", func() {
		if hotCT != nil {
			return
		}
		var nb [12]byte
		for i := range per {
			hotCT = aead.Seal(hotCT, nonce(&nb, i), hotPT[i*seg:(i+1)*seg], nil)
		}
	}, func() {
		pass(func(k int, ct, pt []byte) {
			var nb [12]byte
			for i := range per {
				if _, err := aead.Open(pt[i*seg:i*seg], nonce(&nb, i), hotCT[i*ctSeg:(i+1)*ctSeg], nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})

	f, err := os.Open(in)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	run("seal-mapped", nil, func() {
		m, unmap, ok := mapFile(f, size)
		if !ok {
			b.Fatal("could not map the input")
		}
		pass(func(k int, ct, pt []byte) {
			var nb [12]byte
			src := m[k*batch : (k+1)*batch]
			for i := range per {
				aead.Seal(ct[i*ctSeg:i*ctSeg], nonce(&nb, k*per+i), src[i*seg:(i+1)*seg], nil)
			}
		})
		unmap()
	})

	ctPath := in + ".ceiling-ct"
	defer os.Remove(ctPath)
	var cf *os.File
	run("open-pread", func() {
		if cf != nil {
			return
		}
		out, err := os.OpenFile(ctPath, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
		if err != nil {
			b.Fatal(err)
		}
		buf := make([]byte, 0, per*ctSeg)
		pt := make([]byte, batch)
		var nb [12]byte
		for k := range nbatch {
			if _, err := f.ReadAt(pt, int64(k)*batch); err != nil {
				b.Fatal(err)
			}
			buf = buf[:0]
			for i := range per {
				buf = aead.Seal(buf, nonce(&nb, k*per+i), pt[i*seg:(i+1)*seg], nil)
			}
			if _, err := out.Write(buf); err != nil {
				b.Fatal(err)
			}
		}
		if err := out.Close(); err != nil {
			b.Fatal(err)
		}
		if cf, err = os.Open(ctPath); err != nil {
			b.Fatal(err)
		}
	}, func() {
		pass(func(k int, ct, pt []byte) {
			if _, err := cf.ReadAt(ct, int64(k)*per*ctSeg); err != nil {
				b.Error(err)
				return
			}
			var nb [12]byte
			for i := range per {
				if _, err := aead.Open(pt[i*seg:i*seg], nonce(&nb, k*per+i), ct[i*ctSeg:(i+1)*ctSeg], nil); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	if cf != nil {
		cf.Close()
	}
}
