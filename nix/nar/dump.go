package nar

import (
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

const (
	// copyBufSize is the size of the buffers Dump and Restore stream
	// through: large enough that hashing a big file is not dominated by
	// system calls.
	copyBufSize = 1 << 20
	// dumpBufSize is the size of Dump's output buffers: a little over
	// 1 MiB, so that a 1 MiB bufio.Writer in front of w (as in front of
	// stdout) passes each full buffer straight through rather than
	// copying it.
	dumpBufSize = 1<<20 + 64<<10
	// directMin is the least free space Dump wants in its output buffer
	// before reading file contents straight into it; with less it flushes
	// first, so a small file is read with one system call.
	directMin = 64 << 10
	// pipelineMin is the size of a regular file large enough for Dump to
	// time its reads against w's writes. If w is the slower (a hash, say,
	// rather than a file or /dev/null), Dump hands full buffers to a second
	// goroutine from then on, so that reading the next buffer overlaps with
	// writing the last. Otherwise the handoffs would cost more than they
	// save.
	pipelineMin = 4 << 20
	// sampleBytes is how much of the contents of large files Dump times
	// before deciding.
	sampleBytes = 2 << 20
	// pipelineBufs is the number of buffers in flight while pipelining:
	// Dump's memory use stays pipelineBufs*copyBufSize whatever the sizes
	// of the files.
	pipelineBufs = 3
)

// pipelineAlways makes Dump pipeline at the first large file without
// timing; for tests.
var pipelineAlways = false

var (
	copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}
	dumpBufPool = sync.Pool{New: func() any { b := make([]byte, dumpBufSize); return &b }}
)

// NAR token sequences Dump writes whole (docs/store.md §3.2).
var (
	tokMagic      = tokens(magic)
	tokRegular    = tokens("(", "type", "regular", "contents")
	tokExecutable = tokens("(", "type", "regular", "executable", "", "contents")
	tokSymlink    = tokens("(", "type", "symlink", "target")
	tokDirectory  = tokens("(", "type", "directory")
	tokEntry      = tokens("entry", "(", "name")
	tokNode       = tokens("node")
	tokClose      = tokens(")")
)

func tokens(ss ...string) []byte {
	var b []byte
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

// appendString appends s as a NAR string: length, bytes, zero padding.
func appendString[S string | []byte](b []byte, s S) []byte {
	b = binary.LittleEndian.AppendUint64(b, uint64(len(s)))
	b = append(b, s...)
	var zero [8]byte
	return append(b, zero[:padLen(uint64(len(s)))]...)
}

// Dump writes the NAR serialisation of the file system object at path to w,
// byte-identical to `nix-store --dump path` (mirrors archive.cc dump in Nix
// 2.8.0): objects are read without following symlinks, a regular file is
// executable iff its owner execute bit is set, directory entries are sorted
// bytewise, and any other file type is an error.
//
// Memory use does not depend on file sizes: contents stream through at most
// a few buffers of about 1 MiB. Once Dump finds, on a large file, that w
// takes longer to write than the file system to read (as when w is a hash),
// it calls w.Write from a second goroutine, overlapping reading with
// writing; the calls never overlap each other and all have returned when
// Dump does.
func Dump(w io.Writer, path string) error {
	e := newEmitter(w)
	defer e.release()
	e.token(tokMagic)
	if err := dumpPath(e, path); err != nil {
		e.stop()
		return err
	}
	return e.finish()
}

// An emitter is Dump's output buffer: NAR tokens and file contents are
// appended to out, which goes to w when full, directly or through a writer
// goroutine (see pipeline).
type emitter struct {
	w   io.Writer
	out []byte
	err error // sticky error from w

	// Set while pipelining: full carries buffers to write to the writer
	// goroutine, free carries them back. werr is the goroutine's first
	// write error; it sets failed after werr, and the main goroutine reads
	// werr only once failed is set or done is closed.
	full, free chan []byte
	done       chan struct{}
	werr       error
	failed     atomic.Bool

	// While timing (see pipelineMin): the time spent reading and writing
	// sampled bytes of contents, and whether the choice is made.
	readTime, writeTime time.Duration
	sampled             int64
	timing, decided     bool
	bufs                []*[]byte // buffers from dumpBufPool, to return
}

func newEmitter(w io.Writer) *emitter {
	bp := dumpBufPool.Get().(*[]byte)
	return &emitter{w: w, out: (*bp)[:0], bufs: []*[]byte{bp}}
}

// token appends a short precomputed token sequence.
func (e *emitter) token(b []byte) {
	if cap(e.out)-len(e.out) < len(b) {
		e.flush()
	}
	e.out = append(e.out, b...)
}

// str appends s as a NAR string; s is at most a name or a symlink target
// long, far less than the buffer.
func (e *emitter) str(s []byte) {
	if cap(e.out)-len(e.out) < len(s)+16 {
		e.flush()
	}
	e.out = appendString(e.out, s)
}

func (e *emitter) uint64(n uint64) {
	if cap(e.out)-len(e.out) < 8 {
		e.flush()
	}
	e.out = binary.LittleEndian.AppendUint64(e.out, n)
}

// regular appends a regular file's node up to and including its contents,
// reading exactly size bytes from r. The caller closes the node.
func (e *emitter) regular(r io.Reader, size int64, exec bool) error {
	if exec {
		e.token(tokExecutable)
	} else {
		e.token(tokRegular)
	}
	e.uint64(uint64(size))
	if size >= pipelineMin && pipelineAlways && e.full == nil {
		e.pipeline()
	}
	e.timing = size >= pipelineMin && !e.decided
	defer func() { e.timing = false }()
	for left := size; left > 0; {
		if free := int64(cap(e.out) - len(e.out)); free < min(left, directMin) {
			if err := e.flush(); err != nil {
				return err
			}
		}
		b := e.out[len(e.out):cap(e.out)]
		if int64(len(b)) > left {
			b = b[:left]
		}
		var start time.Time
		if e.timing {
			start = time.Now()
		}
		n, err := io.ReadFull(r, b)
		if e.timing {
			e.readTime += time.Since(start)
			e.sampled += int64(n)
		}
		e.out = e.out[:len(e.out)+n]
		left -= int64(n)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return fmt.Errorf("file shrank while being read: %d bytes missing", left)
		}
		if err != nil {
			return err
		}
	}
	var zero [8]byte
	e.token(zero[:padLen(uint64(size))])
	return e.err
}

// flush hands the buffered output to w, or to the writer goroutine.
func (e *emitter) flush() error {
	if e.err != nil || len(e.out) == 0 {
		e.out = e.out[:0]
		return e.err
	}
	if e.full != nil {
		e.full <- e.out
		e.out = <-e.free
		if e.failed.Load() {
			e.err = e.werr
		}
		return e.err
	}
	var start time.Time
	if e.timing {
		start = time.Now()
	}
	_, e.err = e.w.Write(e.out)
	e.out = e.out[:0]
	if e.timing {
		e.writeTime += time.Since(start)
		if e.sampled >= sampleBytes {
			e.timing, e.decided = false, true
			if e.writeTime > e.readTime && e.err == nil {
				e.pipeline()
			}
		}
	}
	return e.err
}

// pipeline starts the writer goroutine. Each buffer comes back on free
// after its Write returns, so at most pipelineBufs are ever in use.
func (e *emitter) pipeline() {
	e.full = make(chan []byte, pipelineBufs)
	e.free = make(chan []byte, pipelineBufs)
	e.done = make(chan struct{})
	for range pipelineBufs - 1 {
		bp := dumpBufPool.Get().(*[]byte)
		e.bufs = append(e.bufs, bp)
		e.free <- (*bp)[:0]
	}
	go func() {
		defer close(e.done)
		for b := range e.full {
			if e.werr == nil {
				if _, err := e.w.Write(b); err != nil {
					e.werr = err
					e.failed.Store(true)
				}
			}
			e.free <- b[:0]
		}
	}()
}

// stop ends the writer goroutine, if any, after it has written everything
// handed to it.
func (e *emitter) stop() {
	if e.full == nil {
		return
	}
	close(e.full)
	<-e.done
	if e.werr != nil && e.err == nil {
		e.err = e.werr
	}
	e.full = nil
}

// finish flushes everything and waits for the writer goroutine.
func (e *emitter) finish() error {
	err := e.flush()
	e.stop()
	if err == nil {
		err = e.err
	}
	if err != nil {
		return fmt.Errorf("nar: write archive: %w", err)
	}
	return nil
}

// release returns the buffers; the writer goroutine must have stopped.
func (e *emitter) release() {
	for _, bp := range e.bufs {
		dumpBufPool.Put(bp)
	}
	e.bufs, e.out = nil, nil
}

// copyContents copies exactly size bytes from r to w through buf.
func copyContents(w io.Writer, r io.Reader, size int64, buf []byte) error {
	for size > 0 {
		b := buf
		if int64(len(b)) > size {
			b = b[:size]
		}
		n, err := io.ReadFull(r, b)
		if n > 0 {
			if _, werr := w.Write(b[:n]); werr != nil {
				return werr
			}
			size -= int64(n)
		}
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return fmt.Errorf("file shrank while being read: %d bytes missing", size)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// DumpBytes writes the NAR of a non-executable regular file holding data
// (Nix's dumpString, used for text store objects).
func DumpBytes(w io.Writer, data []byte) error {
	nw := NewWriter(w)
	if err := nw.WriteHeader(&Header{Type: TypeRegular, Size: int64(len(data))}); err != nil {
		return err
	}
	if _, err := nw.Write(data); err != nil {
		return err
	}
	return nw.Close()
}

// DumpRegular writes the NAR of a single regular file whose size bytes of
// contents are read from r.
func DumpRegular(w io.Writer, r io.Reader, size int64, executable bool) error {
	nw := NewWriter(w)
	if err := nw.WriteHeader(&Header{Type: TypeRegular, Executable: executable, Size: size}); err != nil {
		return err
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	if err := copyContents(nw, r, size, *bp); err != nil {
		return fmt.Errorf("nar: dump contents: %w", err)
	}
	return nw.Close()
}

// DumpContents writes what a content address of path hashes: the file's
// contents when flat (FileIngestionMethod::Flat), else its NAR (Nix's
// dumpPath or readFile for a store object's content address).
func DumpContents(w io.Writer, path string, flat bool) error {
	if !flat {
		return Dump(w, path)
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
