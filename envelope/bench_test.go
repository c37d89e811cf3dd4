package envelope

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"fmt"
	"io"
	"testing"
)

const benchSize = 64 << 20

// BenchmarkEncrypt measures streaming encryption throughput of a large
// input (b.SetBytes: MB/s is plaintext throughput).
func BenchmarkEncrypt(b *testing.B) {
	kms := newKMS(b)
	pt := randBytes(benchSize)
	for _, alg := range []Alg{AES256GCM, ChaCha20Poly1305} {
		for _, segSize := range []int{64 << 10, 1 << 20} {
			b.Run(fmt.Sprintf("%s/seg=%dK", alg, segSize>>10), func(b *testing.B) {
				b.SetBytes(benchSize)
				for b.Loop() {
					w, err := NewWriter(bg, io.Discard, kms, "local/test", WithAlgorithm(alg), WithSegmentSize(segSize))
					if err != nil {
						b.Fatal(err)
					}
					if _, err := io.Copy(w, bytes.NewReader(pt)); err != nil {
						b.Fatal(err)
					}
					if err := w.Close(); err != nil {
						b.Fatal(err)
					}
				}
			})
		}
	}
}

// BenchmarkDecrypt measures streaming decryption (authenticate + release).
func BenchmarkDecrypt(b *testing.B) {
	kms := newKMS(b)
	pt := randBytes(benchSize)
	for _, alg := range []Alg{AES256GCM, ChaCha20Poly1305} {
		ct := seal(b, kms, pt, WithAlgorithm(alg))
		b.Run(alg.String(), func(b *testing.B) {
			b.SetBytes(benchSize)
			for b.Loop() {
				r, err := NewReader(bg, bytes.NewReader(ct), kms)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := io.Copy(io.Discard, r); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReaderAt reads the whole plaintext through ReadAt.
func BenchmarkReaderAt(b *testing.B) {
	kms := newKMS(b)
	pt := randBytes(benchSize)
	ct := seal(b, kms, pt)
	p := make([]byte, benchSize)
	b.SetBytes(benchSize)
	for b.Loop() {
		ra, err := NewReaderAt(bg, bytes.NewReader(ct), int64(len(ct)), kms)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := ra.ReadAt(p, 0); err != nil && err != io.EOF {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawAESGCM is the single-core ceiling: Go's AES-256-GCM sealing
// 64 KiB segments in place, nothing else.
func BenchmarkRawAESGCM(b *testing.B) {
	blk, _ := aes.NewCipher(make([]byte, 32))
	g, _ := cipher.NewGCM(blk)
	buf := make([]byte, benchSize+benchSize/(64<<10)*16)
	nonce := make([]byte, 12)
	b.SetBytes(benchSize)
	for b.Loop() {
		for off := 0; off+(64<<10)+16 <= len(buf); off += (64 << 10) + 16 {
			g.Seal(buf[off:off], nonce, buf[off:off+(64<<10)], nil)
		}
	}
}

// BenchmarkRewrap is the header-only rewrap of one file (constant work).
func BenchmarkRewrap(b *testing.B) {
	kms := newKMS(b)
	ct := seal(b, kms, randBytes(1<<20))
	h, _ := ParseHeader(bytes.NewReader(ct))
	for b.Loop() {
		if _, err := Rewrap(bg, kms, h); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRawAESGCMParallel is the all-cores ceiling: every core sealing
// its own 8 MiB buffer of 64 KiB segments (MB/s summed over cores).
func BenchmarkRawAESGCMParallel(b *testing.B) {
	blk, _ := aes.NewCipher(make([]byte, 32))
	g, _ := cipher.NewGCM(blk)
	const seg = 64 << 10
	b.SetBytes(seg)
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 8<<20)
		nonce := make([]byte, 12)
		off := 0
		for pb.Next() {
			if off+seg+16 > len(buf) {
				off = 0
			}
			g.Seal(buf[off:off], nonce, buf[off:off+seg], nil)
			off += seg + 16
		}
	})
}
