package envelope_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log"
	"strings"

	"github.com/wardproject/ward/envelope"
)

func Example() {
	ctx := context.Background()
	// Offline: a local key. With an authority, use package client instead.
	kms, err := envelope.NewLocalKMS("example")
	if err != nil {
		log.Fatal(err)
	}

	var file bytes.Buffer
	w, err := envelope.NewWriter(ctx, &file, kms, kms.KeyName(),
		envelope.WithClassification("confidential"),
		envelope.WithMetadata(map[string]string{"owner": "payments"}))
	if err != nil {
		log.Fatal(err)
	}
	io.Copy(w, strings.NewReader("the quarterly numbers"))
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	r, err := envelope.NewReader(ctx, bytes.NewReader(file.Bytes()), kms)
	if err != nil {
		log.Fatal(err)
	}
	pt, err := io.ReadAll(r)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(pt))
	// Output: the quarterly numbers
}

func ExampleParseHeader() {
	ctx := context.Background()
	kms, _ := envelope.NewLocalKMS("example")
	var file bytes.Buffer
	w, _ := envelope.NewWriter(ctx, &file, kms, kms.KeyName(), envelope.WithClassification("internal"))
	w.Write([]byte("hello"))
	w.Close()

	h, err := envelope.ParseHeader(bytes.NewReader(file.Bytes()))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(h.KeyName, h.KeyVersion, h.Alg, h.SegmentSize, h.Classification)
	// Output: local/example 1 aes-256-gcm 65536 internal
}

func ExampleRewrap() {
	ctx := context.Background()
	kms, _ := envelope.NewLocalKMS("example")
	var file bytes.Buffer
	w, _ := envelope.NewWriter(ctx, &file, kms, kms.KeyName())
	w.Write([]byte("data that is never re-encrypted"))
	w.Close()

	kms.Rotate() // the master key rotates: version 2
	old, _ := envelope.ParseHeader(bytes.NewReader(file.Bytes()))
	nh, err := envelope.Rewrap(ctx, kms, old)
	if err != nil {
		log.Fatal(err)
	}
	rewrapped := append(nh.Encoded(), file.Bytes()[old.Len:]...)

	r, _ := envelope.NewReader(ctx, bytes.NewReader(rewrapped), kms)
	pt, _ := io.ReadAll(r)
	fmt.Println(old.KeyVersion, "->", nh.KeyVersion, string(pt))
	// Output: 1 -> 2 data that is never re-encrypted
}

func ExampleNewReaderAt() {
	ctx := context.Background()
	kms, _ := envelope.NewLocalKMS("example")
	var file bytes.Buffer
	w, _ := envelope.NewWriter(ctx, &file, kms, kms.KeyName(), envelope.WithSegmentSize(envelope.MinSegmentSize))
	w.Write(bytes.Repeat([]byte("0123456789"), 10000))
	w.Close()

	ra, err := envelope.NewReaderAt(ctx, bytes.NewReader(file.Bytes()), int64(file.Len()), kms)
	if err != nil {
		log.Fatal(err)
	}
	p := make([]byte, 5)
	ra.ReadAt(p, 54321) // opens only the segment holding these bytes
	fmt.Println(ra.Size(), string(p))
	// Output: 100000 12345
}
