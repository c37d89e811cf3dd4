// Package wirecodec is the protobuf codec of ward's admin gRPC server:
// grpc-go's proto codec, except that every message is marshaled into a
// buffer of grpc's shared pool, which gRPC returns to the pool once the
// frame is written. grpc-go's codec pools only messages over 1 KiB and
// allocates a fresh slice (and its interface box) for each smaller one,
// which are nearly all of ward's replies (a KMS encrypt's is ~100 bytes):
// two allocations saved per reply. Decoding is grpc-go's.
//
// It is a server option only: a client forcing a codec sends the
// content-subtype "+proto", which costs a string per call on each side,
// and its default call options are combined per call, one more slice; the
// request's two saved allocations would be spent again.
package wirecodec

import (
	"fmt"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/protoadapt"
)

// Name is the codec's name, grpc-go's proto codec's.
const Name = "proto"

// pooledSize is the capacity asked of the pool for a small message:
// mem.NewBuffer returns buffers at or below gRPC's pooling threshold
// (1 KiB) to nobody, so a small message is written into the pool's
// smallest tier above it (4 KiB in grpc's default pool).
var pooledSize = func() int {
	lo, hi := 0, 1 // lo is below the threshold, hi is not
	for mem.IsBelowBufferPoolingThreshold(hi) {
		lo, hi = hi, hi*2
	}
	for hi-lo > 1 {
		if mid := (lo + hi) / 2; mem.IsBelowBufferPoolingThreshold(mid) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return hi
}()

// Codec is the codec (encoding.CodecV2).
type Codec struct{}

var _ encoding.CodecV2 = Codec{}

// ServerOption makes a gRPC server marshal with Codec.
func ServerOption() grpc.ServerOption { return grpc.ForceServerCodecV2(Codec{}) }

// Marshal encodes v into a pooled buffer.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	m := messageOf(v)
	if m == nil {
		return nil, fmt.Errorf("proto: cannot marshal %T: not a protobuf message", v)
	}
	// Size, then MarshalAppend with UseCachedSize: one walk of the message
	// for its size, none repeated (the message must not change meanwhile,
	// as grpc-go's own codec assumes).
	size := proto.Size(m)
	pool := mem.DefaultBufferPool()
	buf := pool.Get(max(size, pooledSize))
	out, err := proto.MarshalOptions{UseCachedSize: true}.MarshalAppend((*buf)[:0], m)
	if err != nil {
		pool.Put(buf)
		return nil, err
	}
	if len(out) != size || cap(out) != cap(*buf) { // the message changed while being encoded
		pool.Put(buf)
		return nil, fmt.Errorf("proto: %T changed while being marshaled", v)
	}
	*buf = out
	return mem.BufferSlice{mem.NewBuffer(buf, pool)}, nil
}

// grpcProto is grpc-go's proto codec (registered by the package
// imported), which decodes.
var grpcProto = encoding.GetCodecV2(grpcproto.Name)

// Unmarshal decodes data into v with grpc-go's codec (protobuf copies
// what it keeps, so data may be freed afterwards).
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	return grpcProto.Unmarshal(data, v)
}

// Name returns Name.
func (Codec) Name() string { return Name }

func messageOf(v any) proto.Message {
	switch v := v.(type) {
	case protoadapt.MessageV2:
		return v
	case protoadapt.MessageV1:
		return protoadapt.MessageV2Of(v)
	}
	return nil
}
