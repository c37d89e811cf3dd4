package envelope

import (
	"context"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
)

// ordered runs do(k, buf) for the batches k = 0..n-1 on up to workers
// goroutines, each batch with its own buffer of bufSize bytes (reused),
// at most 2*workers batches ahead of emit. emit gets each batch's result
// in batch order on the calling goroutine: a batch that fails emits what
// do returned before the failure (it must be authenticated), then stops
// everything with do's error. The first error in batch order (of do or
// emit, or ctx ending) is returned, and only after every goroutine has
// finished with its buffer.
func ordered(ctx context.Context, workers, n, bufSize int, do func(k int, buf []byte) ([]byte, error), emit func([]byte) error) error {
	workers = max(1, min(workers, n))
	if n == 0 {
		return nil
	}
	if workers == 1 {
		buf := make([]byte, bufSize)
		for k := range n {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("stopped: %w", err)
			}
			res, err := do(k, buf)
			if len(res) > 0 {
				if eerr := emit(res); eerr != nil {
					return eerr
				}
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	type task struct {
		k        int
		buf, res []byte
		err      error
		done     chan struct{}
	}
	inflight := 2 * workers
	tasks := make(chan *task, inflight)
	var (
		wg   sync.WaitGroup
		stop atomic.Bool
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			for t := range tasks {
				if !stop.Load() {
					func() {
						defer recoverFault(&t.err)
						t.res, t.err = do(t.k, t.buf)
					}()
				}
				close(t.done)
			}
		}()
	}
	var (
		pending []*task
		free    [][]byte
		err     error
	)
	drain := func() {
		t := pending[0]
		pending = pending[1:]
		<-t.done
		if len(t.res) > 0 {
			err = emit(t.res)
		}
		if err == nil {
			err = t.err
		}
		free = append(free, t.buf)
	}
	for k := 0; k < n && err == nil; k++ {
		if cerr := ctx.Err(); cerr != nil {
			err = fmt.Errorf("stopped: %w", cerr)
			break
		}
		var b []byte
		if l := len(free); l > 0 {
			b, free = free[l-1], free[:l-1]
		} else {
			b = make([]byte, bufSize)
		}
		t := &task{k: k, buf: b, done: make(chan struct{})}
		tasks <- t
		pending = append(pending, t)
		if len(pending) >= inflight {
			drain()
		}
	}
	for len(pending) > 0 && err == nil {
		drain()
	}
	stop.Store(true)
	close(tasks)
	wg.Wait()
	return err
}

// recoverFault, deferred, turns a memory-fault panic (with
// debug.SetPanicOnFault on) into *err; other panics go on.
func recoverFault(err *error) {
	r := recover()
	if r == nil {
		return
	}
	if f, ok := r.(interface{ Addr() uintptr }); ok {
		*err = fmt.Errorf("%w: fault at address %#x (was a memory-mapped input file truncated while it was read?)", ErrInputFault, f.Addr())
		return
	}
	panic(r)
}
