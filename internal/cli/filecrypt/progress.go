package filecrypt

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Progress draws a one-line progress bar (bytes, files, rate) on a
// terminal. A disabled Progress draws nothing and costs one atomic add.
type Progress struct {
	w          io.Writer
	label      string
	totalBytes int64
	totalFiles int
	bytes      atomic.Int64
	files      atomic.Int64
	start      time.Time
	stop       chan struct{}
	done       sync.WaitGroup
	enabled    bool
}

// NewProgress starts a progress bar on w if enabled (pass whether w is a
// terminal). totalBytes <= 0 means unknown.
func NewProgress(w io.Writer, enabled bool, label string, totalBytes int64, totalFiles int) *Progress {
	p := &Progress{w: w, label: label, totalBytes: totalBytes, totalFiles: totalFiles, start: time.Now(), stop: make(chan struct{}), enabled: enabled}
	if enabled {
		p.done.Add(1)
		go p.loop()
	}
	return p
}

func (p *Progress) loop() {
	defer p.done.Done()
	t := time.NewTicker(150 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-p.stop:
			fmt.Fprint(p.w, "\r\033[K")
			return
		case <-t.C:
			fmt.Fprint(p.w, "\r\033[K"+p.Line(time.Since(p.start)))
		}
	}
}

// Line renders the current state (exported for tests).
func (p *Progress) Line(elapsed time.Duration) string {
	b, f := p.bytes.Load(), p.files.Load()
	var sb strings.Builder
	sb.WriteString(p.label)
	if p.totalBytes > 0 {
		frac := min(1, float64(b)/float64(p.totalBytes))
		const width = 30
		fill := int(frac * width)
		fmt.Fprintf(&sb, " %3.0f%% [%s%s] %s/%s", frac*100, strings.Repeat("=", fill), strings.Repeat(" ", width-fill), HumanBytes(b), HumanBytes(p.totalBytes))
	} else {
		fmt.Fprintf(&sb, " %s", HumanBytes(b))
	}
	if p.totalFiles > 1 {
		fmt.Fprintf(&sb, " %d/%d files", f, p.totalFiles)
	}
	if s := elapsed.Seconds(); s > 0 {
		fmt.Fprintf(&sb, " %s/s", HumanBytes(int64(float64(b)/s)))
	}
	return sb.String()
}

// Add counts n processed bytes.
func (p *Progress) Add(n int64) { p.bytes.Add(n) }

// FileDone counts one finished file.
func (p *Progress) FileDone() { p.files.Add(1) }

// Reader counts bytes read through r.
func (p *Progress) Reader(r io.Reader) io.Reader { return &countingReader{r: r, p: p} }

// ReaderAt counts bytes read through r with ReadAt (safe for concurrent
// use, as r must be).
func (p *Progress) ReaderAt(r io.ReaderAt) io.ReaderAt { return &countingReaderAt{r: r, p: p} }

type countingReaderAt struct {
	r io.ReaderAt
	p *Progress
}

func (c *countingReaderAt) ReadAt(b []byte, off int64) (int, error) {
	n, err := c.r.ReadAt(b, off)
	c.p.Add(int64(n))
	return n, err
}

// Stop erases the bar. Safe to call more than once.
func (p *Progress) Stop() {
	if p.enabled {
		p.enabled = false
		close(p.stop)
		p.done.Wait()
	}
}

type countingReader struct {
	r io.Reader
	p *Progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.Add(int64(n))
	return n, err
}
