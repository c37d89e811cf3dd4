package audit

import (
	"slices"
	"strconv"
	"time"
)

// appendBody appends the JSON encoding of b to dst, byte for byte what
// json.Marshal(b) produces, without reflection. It handles the common case
// only: every string (values, field names and values) printable ASCII
// that JSON writes as is (no quote, backslash, <, > or &, which
// encoding/json escapes); ok is false otherwise and the caller uses
// json.Marshal. Issue 17: reflection and the deep stack of encoding/json
// were 15% of the CPU of 64 concurrent audited unary KMS calls.
func appendBody(dst []byte, b *eventBody) ([]byte, bool) {
	if !plain(b.RequestID) || !plain(b.Actor) || !plain(b.Operation) || !plain(b.Key) || !plain(b.Result) || !plain(b.Error) {
		return nil, false
	}
	for k, v := range b.Fields {
		if !plain(k) || !plain(v) {
			return nil, false
		}
	}
	if y := b.Time.Year(); y < 0 || y > 9999 {
		return nil, false // json.Marshal fails; let it say so
	}
	dst = append(dst, `{"time":"`...)
	dst = b.Time.AppendFormat(dst, time.RFC3339Nano)
	dst = append(dst, '"')
	dst = appendField(dst, "request_id", b.RequestID, true)
	dst = appendField(dst, "actor", b.Actor, true)
	dst = appendField(dst, "operation", b.Operation, false)
	dst = appendField(dst, "key", b.Key, true)
	if b.KeyVersion != 0 {
		dst = append(dst, `,"key_version":`...)
		dst = strconv.AppendUint(dst, uint64(b.KeyVersion), 10)
	}
	dst = appendField(dst, "result", b.Result, false)
	dst = appendField(dst, "error", b.Error, true)
	if len(b.Fields) > 0 {
		var buf [16]string
		keys := buf[:0]
		for k := range b.Fields {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		dst = append(dst, `,"fields":{`...)
		for i, k := range keys {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = append(dst, '"')
			dst = append(dst, k...)
			dst = append(dst, `":"`...)
			dst = append(dst, b.Fields[k]...)
			dst = append(dst, '"')
		}
		dst = append(dst, '}')
	}
	if b.Count != 0 {
		dst = append(dst, `,"count":`...)
		dst = strconv.AppendInt(dst, int64(b.Count), 10)
	}
	return append(dst, '}'), true
}

func appendField(dst []byte, name, v string, omitEmpty bool) []byte {
	if omitEmpty && v == "" {
		return dst
	}
	dst = append(dst, `,"`...)
	dst = append(dst, name...)
	dst = append(dst, `":"`...)
	dst = append(dst, v...)
	return append(dst, '"')
}

// plain reports whether json.Marshal writes s between quotes unchanged.
func plain(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}
