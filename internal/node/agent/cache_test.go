package agent

import (
	"bytes"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func sampleState(n int) *cacheState {
	st := &cacheState{TrustDomain: "prod.example.org", Bundle: []byte(`{"keys":[]}`), BundleSequence: 7,
		LastSync: time.Unix(1700000000, 0).UTC(), UsedJoinToken: "ab"}
	for i := range n {
		id := string(rune('a' + i%26))
		st.Entries = append(st.Entries, cachedEntry{ID: id, SPIFFEID: "spiffe://prod.example.org/" + id, Selectors: []string{"unix:uid:1"}})
		st.SVIDs = append(st.SVIDs, cachedSVID{EntryID: id, Chain: [][]byte{bytes.Repeat([]byte{byte(i)}, 300)}, Key: []byte("secret-key-material")})
	}
	return st
}

func TestCacheRoundTripAndKeyFile(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	d, err := openDiskCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.Load(); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("Load before any Save: %v, want ErrNotExist", err)
	}
	fi, err := os.Stat(filepath.Join(dir, cacheKeyName))
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != 32 {
		t.Fatalf("key file: %v %v", fi, err)
	}
	if err := d.Save(sampleState(3)); err != nil {
		t.Fatal(err)
	}
	raw, _ := os.ReadFile(filepath.Join(dir, cacheFileName))
	if bytes.Contains(raw, []byte("secret-key-material")) || bytes.Contains(raw, []byte("prod.example.org")) {
		t.Fatal("cache file holds plaintext")
	}
	// A second opener reads the same key and the same state.
	d2, err := openDiskCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	st, err := d2.Load()
	if err != nil {
		t.Fatal(err)
	}
	if len(st.SVIDs) != 3 || st.BundleSequence != 7 || !st.LastSync.Equal(time.Unix(1700000000, 0)) || string(st.SVIDs[2].Key) != "secret-key-material" {
		t.Fatalf("round trip: %+v", st)
	}
}

func TestCacheTamperAndWrongKey(t *testing.T) {
	dir := t.TempDir()
	d, err := openDiskCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Save(sampleState(2)); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, cacheFileName)
	good, _ := os.ReadFile(path)
	for _, i := range []int{0, 7, 8, 19, 20, len(good) / 2, len(good) - 1} {
		bad := bytes.Clone(good)
		bad[i] ^= 0x01
		os.WriteFile(path, bad, 0o600)
		if _, err := d.Load(); !errors.Is(err, ErrCacheCorrupt) {
			t.Errorf("flipped byte %d: err = %v, want ErrCacheCorrupt", i, err)
		}
	}
	for _, n := range []int{0, 5, 20, len(good) - 1} {
		os.WriteFile(path, good[:n], 0o600)
		if _, err := d.Load(); !errors.Is(err, ErrCacheCorrupt) {
			t.Errorf("truncated to %d: err = %v, want ErrCacheCorrupt", n, err)
		}
	}
	os.WriteFile(path, good, 0o600)
	// Another key cannot read it.
	other, err := openDiskCache(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := other.open(good); !errors.Is(err, ErrCacheCorrupt) {
		t.Fatalf("other key: %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "secret") {
		t.Fatal("error leaks content")
	}
}

func TestCacheKeyFileProblems(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, cacheKeyName)
	os.WriteFile(key, make([]byte, 32), 0o644)
	if _, err := openDiskCache(dir); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Fatalf("group-readable key: %v", err)
	}
	os.Chmod(key, 0o600)
	os.WriteFile(key, make([]byte, 31), 0o600)
	if _, err := openDiskCache(dir); err == nil || !strings.Contains(err.Error(), "31 bytes") {
		t.Fatalf("short key: %v", err)
	}
}

// TestCacheAtomicReplace: readers racing a writer only ever see a complete
// old or new cache, and a crash that leaves a partial temp file changes
// nothing.
func TestCacheAtomicReplace(t *testing.T) {
	dir := t.TempDir()
	d, err := openDiskCache(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Save(sampleState(1)); err != nil {
		t.Fatal(err)
	}
	// A crashed writer's leftover temp file.
	os.WriteFile(filepath.Join(dir, ".cache.bin-123"), []byte("WARDAC1\npartial"), 0o600)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	errs := make(chan error, 1)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			st, err := d.Load()
			if err == nil && len(st.SVIDs) != 1 && len(st.SVIDs) != 40 {
				err = errors.New("saw a state that was never saved")
			}
			if err != nil {
				select {
				case errs <- err:
				default:
				}
				return
			}
		}
	}()
	for i := range 30 {
		if err := d.Save(sampleState(1 + 39*(i%2))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	select {
	case err := <-errs:
		t.Fatalf("reader during replace: %v", err)
	default:
	}
	ents, _ := os.ReadDir(dir)
	temps := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".cache.bin-") {
			temps++
		}
	}
	if temps != 1 { // only the crashed writer's file; Save leaves none
		t.Fatalf("temp files left: %d", temps)
	}
}

func FuzzCacheOpen(f *testing.F) {
	d, err := openDiskCache(f.TempDir())
	if err != nil {
		f.Fatal(err)
	}
	good, _ := d.seal([]byte(`{"version":1}`))
	f.Add(good)
	f.Add([]byte("WARDAC1\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		pt, err := d.open(b)
		if err != nil {
			if !errors.Is(err, ErrCacheCorrupt) {
				t.Fatalf("unwrapped error %v", err)
			}
			return
		}
		_, _ = decodeCacheState(pt)
	})
}

func FuzzDecodeCacheState(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[{"id":"x","spiffe_id":"spiffe://a/b","selectors":["unix:uid:1"]}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := decodeCacheState(b)
		if err != nil {
			return
		}
		for _, e := range st.Entries {
			_, _ = entryFromCache(trustDomainForFuzz, e)
		}
	})
}
