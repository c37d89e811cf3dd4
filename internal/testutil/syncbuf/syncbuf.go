// Package syncbuf is a buffer that goroutines may write and read at the same
// time: the sink tests give a logger, an access log or a child process's
// output while they read what arrived so far.
package syncbuf

import (
	"bytes"
	"encoding/json"
	"strings"
	"sync"
)

// Buffer is a bytes.Buffer behind a mutex. The zero value is ready to use.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String is everything written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Contains reports whether what was written so far holds sub.
func (s *Buffer) Contains(sub string) bool {
	return strings.Contains(s.String(), sub)
}

// Lines is what was written so far split at newlines, without empty lines.
func (s *Buffer) Lines() []string {
	var out []string
	for _, l := range strings.Split(s.String(), "\n") {
		if l != "" {
			out = append(out, l)
		}
	}
	return out
}

// JSONLines decodes every line that is a JSON object (what a JSON log
// handler wrote); other lines are skipped.
func (s *Buffer) JSONLines() []map[string]any {
	var out []map[string]any
	for _, l := range s.Lines() {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// Reset forgets everything written so far.
func (s *Buffer) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.b.Reset()
}
