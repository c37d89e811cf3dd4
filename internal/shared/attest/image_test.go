package attest

import (
	"errors"
	"os"
	"strings"
	"testing"
)

func TestCheckEntrySelectors(t *testing.T) {
	hex64 := strings.Repeat("a", 64)
	for _, tc := range []struct {
		sel []string
		ok  bool
	}{
		{[]string{"unix:uid:1000"}, true},
		{[]string{"unix:gid:1000"}, true},
		{[]string{"k8s:ns:x"}, true},
		{[]string{"unix:uid:1000", "unix:path:/usr/bin/api"}, true},
		{[]string{"unix:gid:1000", "unix:sha256:" + hex64}, true},
		{[]string{"unix:uid:0", "unix:path:/usr/bin/api", "unix:sha256:" + hex64}, true},
		// The red-team entry: a binary alone.
		{[]string{"unix:path:/usr/bin/sleep"}, false},
		{[]string{"unix:sha256:" + hex64}, false},
		{[]string{"unix:path:/usr/bin/api", "unix:sha256:" + hex64}, false},
		// Supplementary groups are read from /proc at call time, not fixed at connect: they do not bind.
		{[]string{"unix:supplementary_gid:10", "unix:path:/usr/bin/api"}, false},
		{[]string{"k8s:ns:x", "unix:path:/usr/bin/api"}, false},
	} {
		sel := make([]Selector, 0, len(tc.sel))
		for _, s := range tc.sel {
			p, err := ParseSelector(s)
			if err != nil {
				t.Fatal(err)
			}
			sel = append(sel, p)
		}
		err := CheckEntrySelectors(sel)
		if (err == nil) != tc.ok {
			t.Errorf("CheckEntrySelectors(%v) = %v, want ok=%v", tc.sel, err, tc.ok)
		}
		if err != nil && (!errors.Is(err, ErrUnboundBinarySelector) || !errors.Is(err, ErrInvalidSelector) || !strings.Contains(err.Error(), "unix:uid")) {
			t.Errorf("error %q should wrap ErrUnboundBinarySelector and say to add unix:uid", err)
		}
		// ParseSelectors (entries) refuses the same sets, and Subset never matches them.
		if _, err := ParseSelectors(tc.sel); (err == nil) != tc.ok {
			t.Errorf("ParseSelectors(%v) = %v, want ok=%v", tc.sel, err, tc.ok)
		}
		have := append([]Selector{{"unix", "uid:1000"}, {"unix", "gid:1000"}, {"unix", "uid:0"}}, sel...)
		if got := Subset(Normalize(sel), Normalize(have)); got != tc.ok {
			t.Errorf("Subset(%v, caller with all of them) = %v, want %v", tc.sel, got, tc.ok)
		}
	}
}

func TestParseStartTime(t *testing.T) {
	tail := " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 424242 20 21\n"
	for _, tc := range []struct {
		in   string
		want uint64
		ok   bool
	}{
		{"123 (sleep)" + tail, 424242, true},
		{"123 (a) b) (c)" + tail, 424242, true},   // comm with ')' and spaces
		{"123 (x\n) 9 9 9)" + tail, 424242, true}, // last ')' wins
		{"123 sleep" + tail, 0, false},
		{"123 (sleep) S 1 2", 0, false},
		{"123 (sleep) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 -1 20", 0, false},
		{"", 0, false},
		{")", 0, false},
	} {
		got, err := ParseStartTime([]byte(tc.in))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("ParseStartTime(%q) = %d, %v; want %d ok=%v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func TestReadImageSelf(t *testing.T) {
	img, err := ReadImage("/proc", int32(os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	if img.IsZero() || img.StartTime == 0 {
		t.Fatalf("image of self: %+v", img)
	}
	if err := CheckImage("/proc", int32(os.Getpid()), img); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []Image{{}, {Dev: img.Dev, Ino: img.Ino + 1, StartTime: img.StartTime}} {
		if err := CheckImage("/proc", int32(os.Getpid()), bad); !errors.Is(err, ErrImageChanged) {
			t.Errorf("CheckImage(%v) = %v, want ErrImageChanged", bad, err)
		}
	}
	if _, err := ReadImage("/proc", 0); err == nil {
		t.Error("ReadImage(0) succeeded")
	}
}

func FuzzParseStartTime(f *testing.F) {
	f.Add([]byte("1 (init) S 0 1 1 0 -1 4194560 1 2 3 4 5 6 7 8 20 0 1 0 27 1000 10 18446744073709551615\n"))
	f.Add([]byte("9 (a) b) S"))
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := ParseStartTime(b)
		if err != nil {
			if v != 0 {
				t.Fatalf("error with value %d", v)
			}
			return
		}
		// Field 22 counted after the last ')': it must be there as a number.
		i := strings.LastIndexByte(string(b), ')')
		if i < 0 || len(strings.Fields(string(b[i+1:]))) < 20 {
			t.Fatalf("accepted %q", b)
		}
	})
}
