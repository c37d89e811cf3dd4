package wirecodec

import (
	"bytes"
	"testing"

	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"

	wardv1 "github.com/wardproject/ward/api/ward/v1"
)

func grpcCodec(t testing.TB) encoding.CodecV2 {
	c := encoding.GetCodecV2(grpcproto.Name)
	if c == nil {
		t.Fatal("grpc-go's proto codec is not registered")
	}
	return c
}

// TestMarshalMatchesGRPC: the same bytes as grpc-go's codec, small and
// large messages, and they decode back to the message.
func TestMarshalMatchesGRPC(t *testing.T) {
	for _, n := range []int{0, 1, 32, 1000, 1024, 1025, 4096, 70000} {
		m := &wardv1.EncryptRequest{Key: "bench", Plaintext: bytes.Repeat([]byte{7}, n), Context: map[string]string{"a": "b"}}
		got, err := Codec{}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		want, err := grpcCodec(t).Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got.Materialize(), want.Materialize()) {
			t.Fatalf("%d-byte plaintext: encoding differs from grpc-go's", n)
		}
		var back wardv1.EncryptRequest
		if err := (Codec{}).Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(&back, m) {
			t.Fatalf("%d-byte plaintext: round trip changed the message", n)
		}
		got.Free()
		want.Free()
	}
}

// TestSmallMessagesArePooled: a small reply's buffer goes back to the pool
// when gRPC frees it (mem.NewBuffer pools only buffers over the threshold).
func TestSmallMessagesArePooled(t *testing.T) {
	if !mem.IsBelowBufferPoolingThreshold(pooledSize-1) || mem.IsBelowBufferPoolingThreshold(pooledSize) {
		t.Fatalf("pooledSize %d is not just above gRPC's pooling threshold", pooledSize)
	}
	m := &wardv1.EncryptResponse{Ciphertext: make([]byte, 90), KeyVersion: 3}
	bs, err := Codec{}.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs) != 1 {
		t.Fatalf("%d buffers, want 1", len(bs))
	}
	if _, isSlice := bs[0].(mem.SliceBuffer); isSlice {
		t.Fatal("a small message was marshaled into an unpooled slice")
	}
	if bs.Len() != proto.Size(m) {
		t.Fatalf("length %d, want %d", bs.Len(), proto.Size(m))
	}
	bs.Free()
	allocs := testing.AllocsPerRun(100, func() {
		bs, err := Codec{}.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		bs.Free()
	})
	if allocs > 1 { // the BufferSlice's one-element array
		t.Fatalf("%v allocations per small marshal, want at most 1", allocs)
	}
}

func TestNotAMessage(t *testing.T) {
	if _, err := (Codec{}).Marshal("x"); err == nil {
		t.Fatal("marshaled a string")
	}
	var s string
	if err := (Codec{}).Unmarshal(mem.BufferSlice{mem.SliceBuffer("x")}, &s); err == nil {
		t.Fatal("unmarshaled into a string")
	}
}

// FuzzUnmarshal: what a peer sends is decoded exactly as grpc-go's codec
// decodes it (same error or same message), and what decodes re-encodes
// to the same message.
func FuzzUnmarshal(f *testing.F) {
	seed, _ := proto.Marshal(&wardv1.EncryptRequest{Key: "bench", Plaintext: []byte("hello"), Context: map[string]string{"k": "v"}})
	f.Add(seed)
	f.Add([]byte{})
	f.Add([]byte{0x0a, 0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		var got, want wardv1.EncryptRequest
		errGot := Codec{}.Unmarshal(mem.BufferSlice{mem.SliceBuffer(bytes.Clone(b))}, &got)
		errWant := grpcCodec(t).Unmarshal(mem.BufferSlice{mem.SliceBuffer(bytes.Clone(b))}, &want)
		if (errGot == nil) != (errWant == nil) {
			t.Fatalf("error %v, grpc-go's codec %v", errGot, errWant)
		}
		if errGot != nil {
			return
		}
		if !proto.Equal(&got, &want) {
			t.Fatal("decoded differently from grpc-go's codec")
		}
		enc, err := Codec{}.Marshal(&got)
		if err != nil {
			t.Fatal(err)
		}
		defer enc.Free()
		// Map entries are encoded in no fixed order: compare decoded.
		var again wardv1.EncryptRequest
		if err := proto.Unmarshal(enc.Materialize(), &again); err != nil || !proto.Equal(&again, &want) {
			t.Fatalf("re-encoding does not decode to the message: %v", err)
		}
	})
}
