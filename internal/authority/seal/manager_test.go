package seal

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/wardproject/ward/internal/authority/barrier"
	"github.com/wardproject/ward/internal/authority/store"
	"github.com/wardproject/ward/internal/authority/store/memstore"
)

func newShamirManager(t testing.TB) (*Manager, *barrier.Barrier, *memstore.Store) {
	t.Helper()
	raw := memstore.New()
	b := barrier.New(raw)
	return NewManager(raw, b, NewShamir()), b, raw
}

func initShamir(t testing.TB, n, th int) (*Manager, *barrier.Barrier, *memstore.Store, []string) {
	t.Helper()
	m, b, raw := newShamirManager(t)
	res, err := m.Init(context.Background(), InitOptions{Shares: n, Threshold: th})
	if err != nil {
		t.Fatal(err)
	}
	return m, b, raw, res.Encoded()
}

func wantStatus(t *testing.T, got, want Status) {
	t.Helper()
	if got != want {
		t.Fatalf("status = %+v, want %+v", got, want)
	}
}

func TestShamirLifecycle(t *testing.T) {
	ctx := context.Background()
	m, b, raw := newShamirManager(t)
	st, err := m.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, st, Status{Sealed: true})

	res, err := m.Init(ctx, InitOptions{Shares: 5, Threshold: 3})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Shares) != 5 {
		t.Fatalf("%d shares", len(res.Shares))
	}
	shares := res.Encoded()
	st, _ = m.Status(ctx)
	wantStatus(t, st, Status{Initialized: true, Sealed: true, Type: TypeShamir, Threshold: 3, Shares: 5})

	// The stored config holds the hashes, and no share is stored anywhere.
	kv, err := raw.Get(ctx, ConfigKey)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ParseConfig(kv.Value)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range res.Shares {
		if cfg.ShareHashes[i] != shareHash(s) {
			t.Fatalf("hash %d mismatch", i)
		}
	}
	dump := raw.RawBytes()
	for i, s := range res.Shares {
		if bytes.Contains(dump, s[:16]) || bytes.Contains(dump, []byte(shares[i][:32])) {
			t.Fatalf("share %d found in the store", i+1)
		}
	}

	// Wrong inputs are refused and change nothing.
	unknown := make([]byte, 33)
	rand.Read(unknown)
	unknown[32] = 1
	typo := []byte(shares[0])
	typo[5] ^= 1 // flips a hex digit to another valid one ('0'<->'1' style)
	for _, tc := range []struct {
		name  string
		share string
		want  error
	}{
		{"empty", "", ErrBadShareEncoding},
		{"not hex", "zz" + shares[0][2:], ErrBadShareEncoding},
		{"odd length", shares[0][1:], ErrBadShareEncoding},
		{"unknown", EncodeShare(unknown), ErrUnknownShare},
		{"truncated", shares[0][:64], ErrUnknownShare},
	} {
		st, err := m.SubmitShare(ctx, tc.share)
		if !errors.Is(err, tc.want) {
			t.Fatalf("%s: err = %v, want %v", tc.name, err, tc.want)
		}
		if st.Progress != 0 || !st.Sealed {
			t.Fatalf("%s: status = %+v", tc.name, st)
		}
		if tc.share != "" && strings.Contains(err.Error(), tc.share[:10]) {
			t.Fatalf("%s: error repeats the share: %v", tc.name, err)
		}
	}
	if _, err := m.SubmitShare(ctx, string(typo)); !errors.Is(err, ErrUnknownShare) && !errors.Is(err, ErrBadShareEncoding) {
		t.Fatalf("typo'd share = %v", err)
	}

	// Whitespace and upper case are tolerated.
	st, err = m.SubmitShare(ctx, "  "+strings.ToUpper(shares[0][:30])+"\n"+shares[0][30:]+" ")
	if err != nil || st.Progress != 1 {
		t.Fatalf("share 1: %+v, %v", st, err)
	}
	if st, err = m.SubmitShare(ctx, shares[0]); !errors.Is(err, ErrRepeatedShare) || st.Progress != 1 {
		t.Fatalf("repeat: %+v, %v", st, err)
	}
	if st, err = m.SubmitShare(ctx, EncodeShare(unknown)); !errors.Is(err, ErrUnknownShare) || st.Progress != 1 {
		t.Fatalf("unknown after progress: %+v, %v", st, err)
	}
	if st, err = m.SubmitShare(ctx, shares[3]); err != nil || st.Progress != 2 || !st.Sealed {
		t.Fatalf("share 4: %+v, %v", st, err)
	}
	st, err = m.SubmitShare(ctx, shares[2])
	if err != nil {
		t.Fatal(err)
	}
	wantStatus(t, st, Status{Initialized: true, Sealed: false, Type: TypeShamir, Threshold: 3, Shares: 5})
	if b.Sealed() {
		t.Fatal("barrier still sealed")
	}
	if _, err := m.SubmitShare(ctx, shares[4]); !errors.Is(err, ErrAlreadyUnsealed) {
		t.Fatalf("submit while unsealed = %v", err)
	}
	if _, err := m.AutoUnseal(ctx); !errors.Is(err, ErrNotAutoSeal) {
		t.Fatalf("AutoUnseal on shamir = %v", err)
	}
	v := b.Store()
	if _, err := v.Put(ctx, "x", []byte("y")); err != nil {
		t.Fatal(err)
	}

	if err := m.Seal(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := v.Get(ctx, "x"); !errors.Is(err, barrier.ErrSealed) {
		t.Fatalf("Get after Seal = %v", err)
	}
	if err := m.Seal(ctx); err != nil {
		t.Fatalf("second Seal = %v", err)
	}

	// A restart (new barrier and manager over the same store) unseals with
	// another subset.
	b2 := barrier.New(raw)
	m2 := NewManager(raw, b2, NewShamir())
	for _, i := range []int{4, 1, 0} {
		if st, err = m2.SubmitShare(ctx, shares[i]); err != nil {
			t.Fatal(err)
		}
	}
	if st.Sealed || b2.Sealed() {
		t.Fatal("restart did not unseal")
	}
	if kv, err := b2.Store().Get(ctx, "x"); err != nil || string(kv.Value) != "y" {
		t.Fatalf("after restart Get = %v, %v", kv, err)
	}
}

func TestEveryThresholdSubsetUnseals(t *testing.T) {
	ctx := context.Background()
	m, b, _, shares := initShamir(t, 5, 3)
	n := 0
	for i := 0; i < 5; i++ {
		for j := i + 1; j < 5; j++ {
			for k := j + 1; k < 5; k++ {
				for step, s := range []int{k, i, j} { // order does not matter
					st, err := m.SubmitShare(ctx, shares[s])
					if err != nil {
						t.Fatalf("subset %d,%d,%d step %d: %v", i, j, k, step, err)
					}
					if st.Sealed != (step < 2) {
						t.Fatalf("subset %d,%d,%d step %d: sealed=%v", i, j, k, step, st.Sealed)
					}
				}
				if b.Sealed() {
					t.Fatal("barrier sealed after threshold")
				}
				m.Seal(ctx)
				n++
			}
		}
	}
	if n != 10 {
		t.Fatalf("tried %d subsets", n)
	}
}

func TestResetProgress(t *testing.T) {
	ctx := context.Background()
	m, _, _, shares := initShamir(t, 3, 3)
	m.SubmitShare(ctx, shares[0])
	m.SubmitShare(ctx, shares[1])
	m.ResetProgress()
	st, _ := m.Status(ctx)
	if st.Progress != 0 {
		t.Fatalf("progress after reset = %d", st.Progress)
	}
	// The same share counts again after a reset.
	if st, err := m.SubmitShare(ctx, shares[0]); err != nil || st.Progress != 1 {
		t.Fatalf("after reset: %+v, %v", st, err)
	}
	// Seal also resets progress.
	m.Seal(ctx)
	if st, _ := m.Status(ctx); st.Progress != 0 {
		t.Fatalf("progress after Seal = %d", st.Progress)
	}
}

func TestNotInitialized(t *testing.T) {
	ctx := context.Background()
	m, _, _ := newShamirManager(t)
	if _, err := m.SubmitShare(ctx, "00"); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("SubmitShare = %v", err)
	}
	if err := m.Seal(ctx); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Seal = %v", err)
	}
	km := NewManager(memstore.New(), barrier.New(memstore.New()), NewKeyFile(filepath.Join(t.TempDir(), "k")))
	if _, err := km.AutoUnseal(ctx); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("AutoUnseal = %v", err)
	}
}

func TestInitTwiceChangesNothing(t *testing.T) {
	ctx := context.Background()
	m, b, raw, _ := initShamir(t, 3, 2)
	before := raw.RawBytes()
	if _, err := m.Init(ctx, InitOptions{Shares: 3, Threshold: 2}); !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("second Init = %v", err)
	}
	// A fresh manager (another process) sees it too, and a racing one that
	// has not read the config loses at the store.
	m2 := NewManager(raw, b, NewShamir())
	if _, err := m2.Init(ctx, InitOptions{Shares: 3, Threshold: 2}); !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("Init from another manager = %v", err)
	}
	raw.Delete(ctx, ConfigKey) // keyring alone still blocks init
	before2 := raw.RawBytes()
	if _, err := NewManager(raw, b, NewShamir()).Init(ctx, InitOptions{Shares: 3, Threshold: 2}); !errors.Is(err, ErrAlreadyInitialized) {
		t.Fatalf("Init over an existing keyring = %v", err)
	}
	if !bytes.Equal(before2, raw.RawBytes()) {
		t.Fatal("failed Init wrote something")
	}
	if bytes.Equal(before, before2) {
		t.Fatal("test setup: delete did nothing")
	}
}

func TestInitOptionsValidation(t *testing.T) {
	ctx := context.Background()
	keyPath := filepath.Join(t.TempDir(), "seal.key")
	for _, tc := range []struct {
		name string
		seal Seal
		opts InitOptions
	}{
		{"shamir 1 of 1", NewShamir(), InitOptions{Shares: 1, Threshold: 1}},
		{"shamir zero", NewShamir(), InitOptions{}},
		{"shamir threshold above shares", NewShamir(), InitOptions{Shares: 3, Threshold: 4}},
		{"shamir threshold 1", NewShamir(), InitOptions{Shares: 3, Threshold: 1}},
		{"shamir too many shares", NewShamir(), InitOptions{Shares: 256, Threshold: 2}},
		{"keyfile with shares", NewKeyFile(keyPath), InitOptions{Shares: 3, Threshold: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := memstore.New()
			m := NewManager(raw, barrier.New(raw), tc.seal)
			if _, err := m.Init(ctx, tc.opts); !errors.Is(err, ErrBadOptions) {
				t.Fatalf("Init = %v, want ErrBadOptions", err)
			}
			if len(raw.RawBytes()) != 0 {
				t.Fatal("rejected Init wrote to the store")
			}
			if st, _ := m.Status(ctx); st.Initialized {
				t.Fatal("initialised after rejected Init")
			}
		})
	}
	if _, err := os.Stat(keyPath); err == nil {
		t.Fatal("rejected keyfile Init created the key file")
	}
}

func TestInitAtomicOnStoreFailure(t *testing.T) {
	ctx := context.Background()
	m, _, raw := newShamirManager(t)
	raw.SetBatchHook(func([]store.Op) error { return errors.New("backend unavailable") })
	if _, err := m.Init(ctx, InitOptions{Shares: 3, Threshold: 2}); err == nil || !strings.Contains(err.Error(), "backend unavailable") {
		t.Fatalf("Init on failing store = %v", err)
	}
	if len(raw.RawBytes()) != 0 {
		t.Fatal("failed Init left data")
	}
	if st, _ := m.Status(ctx); st.Initialized {
		t.Fatal("reported initialised after failed Init")
	}
	raw.SetBatchHook(nil)
	if _, err := m.Init(ctx, InitOptions{Shares: 3, Threshold: 2}); err != nil {
		t.Fatalf("Init after recovery = %v", err)
	}
	// Both records were written together.
	for _, k := range []string{ConfigKey, barrier.KeyringKey} {
		if _, err := raw.Get(ctx, k); err != nil {
			t.Fatalf("%s: %v", k, err)
		}
	}
}

func TestConcurrentInitOneWins(t *testing.T) {
	ctx := context.Background()
	raw := memstore.New()
	var wg sync.WaitGroup
	results := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := NewManager(raw, barrier.New(raw), NewShamir()).Init(ctx, InitOptions{Shares: 3, Threshold: 2})
			results <- err
		}()
	}
	wg.Wait()
	close(results)
	wins := 0
	for err := range results {
		switch {
		case err == nil:
			wins++
		case !errors.Is(err, ErrAlreadyInitialized):
			t.Fatalf("losing Init = %v", err)
		}
	}
	if wins != 1 {
		t.Fatalf("%d Inits succeeded", wins)
	}
}

func TestKeyringMismatchResetsProgress(t *testing.T) {
	ctx := context.Background()
	_, _, raw, shares := initShamir(t, 3, 2)
	_, _, other, _ := initShamir(t, 3, 2)
	// Simulate a partial restore: another initialisation's keyring.
	raw.RawPut(barrier.KeyringKey, other.Raw(barrier.KeyringKey))
	b := barrier.New(raw)
	m := NewManager(raw, b, NewShamir())
	m.SubmitShare(ctx, shares[0])
	st, err := m.SubmitShare(ctx, shares[1])
	if !errors.Is(err, ErrKeyringMismatch) {
		t.Fatalf("err = %v, want ErrKeyringMismatch", err)
	}
	if !strings.Contains(err.Error(), "progress was reset") {
		t.Fatalf("error does not say progress was reset: %v", err)
	}
	if st.Progress != 0 || !st.Sealed || !b.Sealed() {
		t.Fatalf("status = %+v", st)
	}
}

func TestSealTypeMismatch(t *testing.T) {
	ctx := context.Background()
	_, b, raw, _ := initShamir(t, 3, 2)
	m := NewManager(raw, b, NewKeyFile(filepath.Join(t.TempDir(), "k")))
	if _, err := m.Status(ctx); !errors.Is(err, ErrSealMismatch) {
		t.Fatalf("Status = %v", err)
	}
	if _, err := m.AutoUnseal(ctx); !errors.Is(err, ErrSealMismatch) {
		t.Fatalf("AutoUnseal = %v", err)
	}
	if _, err := m.Init(ctx, InitOptions{}); !errors.Is(err, ErrSealMismatch) {
		t.Fatalf("Init = %v", err)
	}
}

func TestManagerConcurrentUse(t *testing.T) {
	ctx := context.Background()
	m, b, _, shares := initShamir(t, 5, 3)
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	allowed := []error{ErrRepeatedShare, ErrAlreadyUnsealed}
	for g := 0; g < 5; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := 0; i < 50; i++ {
				_, err := m.SubmitShare(ctx, shares[(g+i)%5])
				if err != nil && !errors.Is(err, allowed[0]) && !errors.Is(err, allowed[1]) {
					errs <- err
					return
				}
				if st, err := m.Status(ctx); err != nil || st.Progress >= 3 {
					errs <- fmt.Errorf("status %+v, %v", st, err)
					return
				}
				switch i % 7 {
				case 3:
					m.ResetProgress()
				case 5:
					if err := m.Seal(ctx); err != nil {
						errs <- err
						return
					}
				}
				b.Sealed()
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	// It still works afterwards.
	m.Seal(ctx)
	for _, s := range shares[:3] {
		m.SubmitShare(ctx, s)
	}
	if b.Sealed() {
		t.Fatal("could not unseal after concurrent use")
	}
}

func TestShareEncoding(t *testing.T) {
	s := []byte{0x00, 0xab, 0xff, 0x10}
	enc := EncodeShare(s)
	if enc != "00abff10" {
		t.Fatalf("EncodeShare = %q", enc)
	}
	for _, in := range []string{enc, "00ABFF10", " 00ab\nff10\t", "00 ab ff 10"} {
		got, err := DecodeShare(in)
		if err != nil || !bytes.Equal(got, s) {
			t.Fatalf("DecodeShare(%q) = %x, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "   ", "0", "00", "0g", "00ab-ff10", strings.Repeat("0", 2000)} {
		if _, err := DecodeShare(in); !errors.Is(err, ErrBadShareEncoding) {
			t.Fatalf("DecodeShare(%q) = %v", in, err)
		}
	}
}

func TestParseConfig(t *testing.T) {
	h := strings.Repeat("ab", 32)
	h2 := strings.Repeat("cd", 32)
	for _, tc := range []struct {
		name string
		json string
		ok   bool
	}{
		{"shamir", `{"version":1,"type":"shamir","shares":2,"threshold":2,"share_hashes":["` + h + `","` + h2 + `"]}`, true},
		{"keyfile", `{"version":1,"type":"keyfile","wrapped":"AAAA"}`, true},
		{"version 2", `{"version":2,"type":"shamir"}`, false},
		{"no type", `{"version":1}`, false},
		{"unknown field", `{"version":1,"type":"keyfile","x":1}`, false},
		{"trailing", `{"version":1,"type":"keyfile"} {}`, false},
		{"threshold 1", `{"version":1,"type":"shamir","shares":1,"threshold":1,"share_hashes":["` + h + `"]}`, false},
		{"hash count", `{"version":1,"type":"shamir","shares":2,"threshold":2,"share_hashes":["` + h + `"]}`, false},
		{"dup hash", `{"version":1,"type":"shamir","shares":2,"threshold":2,"share_hashes":["` + h + `","` + h + `"]}`, false},
		{"short hash", `{"version":1,"type":"shamir","shares":2,"threshold":2,"share_hashes":["ab","` + h + `"]}`, false},
		{"upper hash", `{"version":1,"type":"shamir","shares":2,"threshold":2,"share_hashes":["` + strings.ToUpper(h) + `","` + h2 + `"]}`, false},
		{"not json", `nope`, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.json))
			if (err == nil) != tc.ok {
				t.Fatalf("ParseConfig = %v, want ok=%v", err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrBadConfig) {
				t.Fatalf("error does not wrap ErrBadConfig: %v", err)
			}
		})
	}
}

func FuzzDecodeShare(f *testing.F) {
	f.Add("00abff10")
	f.Add(" 0A b\n")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		b, err := DecodeShare(s)
		if err != nil {
			if !errors.Is(err, ErrBadShareEncoding) {
				t.Fatalf("unwrapped error %v", err)
			}
			if len(s) >= 8 && strings.Contains(err.Error(), s) {
				t.Fatalf("error repeats input")
			}
			return
		}
		if got, err := DecodeShare(EncodeShare(b)); err != nil || !bytes.Equal(got, b) {
			t.Fatalf("round trip %x -> %x, %v", b, got, err)
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(`{"version":1,"type":"shamir","shares":2,"threshold":2,"share_hashes":["` + strings.Repeat("ab", 32) + `","` + strings.Repeat("cd", 32) + `"]}`))
	f.Add([]byte(`{"version":1,"type":"keyfile","wrapped":"AAAA"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := ParseConfig(data)
		if err != nil {
			return
		}
		if c.Version != 1 || c.Type == "" || len(c.ShareHashes) != c.Shares {
			t.Fatalf("accepted invalid config %+v", c)
		}
	})
}

// FuzzSubmitShare: arbitrary input never panics, never unseals, and counts
// as progress only if it decodes to a genuine share.
func FuzzSubmitShare(f *testing.F) {
	m, b, _, shares := initShamir(f, 3, 2)
	f.Add(shares[0][:64] + "00")
	f.Add(shares[1])
	f.Add("zz")
	f.Fuzz(func(t *testing.T, s string) {
		defer m.ResetProgress()
		st, err := m.SubmitShare(context.Background(), s)
		if !b.Sealed() {
			t.Fatal("one share unsealed")
		}
		genuine := false
		if d, derr := DecodeShare(s); derr == nil {
			for _, real := range shares {
				genuine = genuine || EncodeShare(d) == real
			}
		}
		if (err == nil) != genuine || (st.Progress == 1) != genuine {
			t.Fatalf("share genuine=%v: %+v, %v", genuine, st, err)
		}
	})
}
