package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wardproject/ward/internal/authority/store/boltstore"
)

// TestAuditTamperingIsReported edits, deletes and swaps stored audit
// records directly in the bbolt file while the server is down, and checks
// that `ward audit verify` names each affected sequence number.
func TestAuditTamperingIsReported(t *testing.T) {
	cases := []struct {
		name   string
		tamper func(t *testing.T, st *boltstore.Store)
		want   []string
	}{
		{"edit", func(t *testing.T, st *boltstore.Store) { flip(t, st, 5) }, []string{"seq 5: unreadable"}},
		{"delete", func(t *testing.T, st *boltstore.Store) {
			if err := st.Delete(context.Background(), eventKey(7)); err != nil {
				t.Fatal(err)
			}
		}, []string{"seq 7: missing"}},
		{"swap", func(t *testing.T, st *boltstore.Store) {
			ctx := context.Background()
			a, _ := st.Get(ctx, eventKey(3))
			b, _ := st.Get(ctx, eventKey(4))
			st.Put(ctx, eventKey(3), b.Value)
			st.Put(ctx, eventKey(4), a.Value)
		}, []string{"seq 3:", "seq 4:"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := StartServer(t, dir, WriteConfig(t, dir, ""))
			shares := s.InitAndUnseal()
			MustWard(t, s.Addr, "", "key", "create", "k", "--classification", "internal")
			for i := 0; i < 10; i++ {
				MustWard(t, s.Addr, fmt.Sprint(i), "kms", "encrypt", "--key", "k")
			}
			MustWard(t, s.Addr, "", "audit", "verify")
			s.Stop()

			st, err := boltstore.Open(filepath.Join(dir, "ward.db"))
			if err != nil {
				t.Fatal(err)
			}
			c.tamper(t, st)
			st.Close()

			s.Start()
			s.Unseal(shares[:3])
			r := Ward(t, s.Addr, "", "audit", "verify")
			if r.Code == 0 {
				t.Fatalf("verify passed after %s:\n%s", c.name, r.Stdout)
			}
			for _, w := range c.want {
				if !strings.Contains(r.Stdout, w) {
					t.Errorf("verify output lacks %q:\n%s", w, r.Stdout)
				}
			}
		})
	}
}

func eventKey(seq uint64) string { return fmt.Sprintf("audit/e/%020d", seq) }

func flip(t *testing.T, st *boltstore.Store, seq uint64) {
	t.Helper()
	ctx := context.Background()
	kv, err := st.Get(ctx, eventKey(seq))
	if err != nil {
		t.Fatalf("stored event %d: %v", seq, err)
	}
	v := append([]byte(nil), kv.Value...)
	v[len(v)/2] ^= 0x01
	if _, err := st.Put(ctx, eventKey(seq), v); err != nil {
		t.Fatal(err)
	}
}
