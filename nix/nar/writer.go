package nar

import (
	"encoding/binary"
	"fmt"
	"io"
	"strings"
)

// writerBufSize is the size of the Writer's token buffer. Contents writes at
// least half this size bypass it.
const writerBufSize = 32 << 10

// A Writer writes a NAR. Call WriteHeader for each object in depth-first
// order with directory entries in bytewise increasing name order (the order
// of Reader.Next), Write for the contents of each regular file, and Close
// at the end. The output is byte-identical to `nix-store --dump`.
//
// A Writer buffers small tokens; its output is complete only after Close
// (or Flush). It never closes the underlying writer. Errors from the
// underlying writer are sticky. A Writer is not safe for concurrent use.
type Writer struct {
	w       io.Writer
	buf     []byte
	err     error
	started bool
	closed  bool
	stack   []dirFrame // open directories

	inFile    bool   // a regular file's contents are being written
	filePath  string // its path
	remaining int64  // its contents bytes still to be written
	pad       int    // its padding
}

// NewWriter returns a Writer writing a NAR to w.
func NewWriter(w io.Writer) *Writer {
	return &Writer{w: w, buf: make([]byte, 0, writerBufSize)}
}

// WriteHeader starts the next object. The first header must be the root
// (Path ""); each later one must be an entry of a directory written earlier
// and not yet finished, named after every earlier entry of that directory.
// Writing an entry of an outer directory finishes the inner ones. The
// previous regular file must have received all its contents.
func (w *Writer) WriteHeader(h *Header) error {
	if err := w.check(); err != nil {
		return err
	}
	if err := w.finishFile(); err != nil {
		return err
	}
	if !w.started {
		if h.Path != "" {
			return fmt.Errorf("%w: write %q: the first object must be the root, with path \"\"", ErrHeader, h.Path)
		}
		if err := w.checkNode(h); err != nil {
			return err
		}
		w.started = true
		w.token(magic)
		w.node(h)
		return w.err
	}
	if len(w.stack) == 0 {
		return fmt.Errorf("%w: write %q: the archive's root object is complete", ErrHeader, h.Path)
	}
	if strings.HasPrefix(h.Path, "/") {
		return fmt.Errorf("%w: write %q: path is not relative", ErrHeader, h.Path)
	}
	parent, name := "", h.Path
	if i := strings.LastIndexByte(h.Path, '/'); i >= 0 {
		parent, name = h.Path[:i], h.Path[i+1:]
	}
	if msg := checkName(name); msg != "" {
		return fmt.Errorf("%w: write %q: %s", ErrHeader, h.Path, msg)
	}
	i := len(w.stack) - 1
	for i >= 0 && w.stack[i].path != parent {
		i--
	}
	if i < 0 {
		return fmt.Errorf("%w: write %q: parent %q is not an open directory", ErrHeader, h.Path, parent)
	}
	if prev := w.stack[i].prev; name <= prev {
		return fmt.Errorf("%w: write %q: entry name %q is not after %q", ErrHeader, h.Path, name, prev)
	}
	if i+1 > MaxDepth {
		return fmt.Errorf("%w: write %q: nested deeper than %d directories", ErrHeader, h.Path, MaxDepth)
	}
	if err := w.checkNode(h); err != nil {
		return err
	}
	for len(w.stack) > i+1 {
		w.closeDir()
	}
	w.stack[i].prev = name
	w.token("entry")
	w.token("(")
	w.token("name")
	w.token(name)
	w.token("node")
	w.node(h)
	return w.err
}

func (w *Writer) checkNode(h *Header) error {
	switch h.Type {
	case TypeRegular:
		if h.Size < 0 {
			return fmt.Errorf("%w: write %q: negative size %d", ErrHeader, h.Path, h.Size)
		}
	case TypeSymlink:
		if msg := checkTarget(h.LinkTarget); msg != "" {
			return fmt.Errorf("%w: write %q: %s", ErrHeader, h.Path, msg)
		}
	case TypeDirectory:
	default:
		return fmt.Errorf("%w: write %q: unknown type %v", ErrHeader, h.Path, h.Type)
	}
	return nil
}

// node writes an object up to its contents; symlinks are closed at once.
func (w *Writer) node(h *Header) {
	w.token("(")
	w.token("type")
	switch h.Type {
	case TypeRegular:
		w.token("regular")
		if h.Executable {
			w.token("executable")
			w.token("")
		}
		w.token("contents")
		w.uint64(uint64(h.Size))
		w.inFile, w.filePath = true, h.Path
		w.remaining, w.pad = h.Size, padLen(uint64(h.Size))
	case TypeSymlink:
		w.token("symlink")
		w.token("target")
		w.token(h.LinkTarget)
		w.closeNode()
	case TypeDirectory:
		w.token("directory")
		w.stack = append(w.stack, dirFrame{path: h.Path})
	}
}

// closeNode writes the ")" of a node, and of its entry unless it is the root.
func (w *Writer) closeNode() {
	w.token(")")
	if len(w.stack) > 0 {
		w.token(")")
	}
}

func (w *Writer) closeDir() {
	w.stack = w.stack[:len(w.stack)-1]
	w.closeNode()
}

// finishFile closes the current regular file, if any.
func (w *Writer) finishFile() error {
	if !w.inFile {
		return nil
	}
	if w.remaining > 0 {
		return fmt.Errorf("nar: write %q: missed writing %d bytes of contents", w.filePath, w.remaining)
	}
	w.inFile = false
	var zero [8]byte
	w.raw(zero[:w.pad])
	w.closeNode()
	return w.err
}

// Write writes contents of the current regular file. Writing more than the
// header's Size returns ErrWriteTooLong after writing the part that fits.
func (w *Writer) Write(p []byte) (int, error) {
	if err := w.check(); err != nil {
		return 0, err
	}
	if !w.inFile {
		return 0, fmt.Errorf("nar: write contents: the current object is not a regular file")
	}
	var tooLong bool
	if int64(len(p)) > w.remaining {
		p, tooLong = p[:w.remaining], true
	}
	w.remaining -= int64(len(p))
	if len(p) >= cap(w.buf)/2 {
		if w.flush() == nil {
			if _, err := w.w.Write(p); err != nil {
				w.err = fmt.Errorf("nar: write archive: %w", err)
			}
		}
	} else {
		w.raw(p)
	}
	if w.err != nil {
		return 0, w.err
	}
	if tooLong {
		return len(p), fmt.Errorf("%w: %q is %d bytes", ErrWriteTooLong, w.filePath, w.remaining)
	}
	return len(p), nil
}

// Flush writes buffered output to the underlying writer. It does not
// finish the archive.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	return w.flush()
}

// Close finishes the archive: it closes every open directory and flushes.
// It fails if the archive has no root or a file is missing contents. It
// does not close the underlying writer.
func (w *Writer) Close() error {
	if w.closed {
		return nil
	}
	if w.err != nil {
		return w.err
	}
	if !w.started {
		return fmt.Errorf("%w: close: the archive has no root object", ErrHeader)
	}
	if err := w.finishFile(); err != nil {
		return err
	}
	for len(w.stack) > 0 {
		w.closeDir()
	}
	w.closed = true
	if err := w.flush(); err != nil {
		return err
	}
	w.err = ErrWriteAfterClose
	return nil
}

func (w *Writer) check() error {
	if w.err != nil {
		return w.err
	}
	if w.closed {
		return ErrWriteAfterClose
	}
	return nil
}

func (w *Writer) token(s string) {
	w.uint64(uint64(len(s)))
	w.rawString(s)
	var zero [8]byte
	w.raw(zero[:padLen(uint64(len(s)))])
}

func (w *Writer) uint64(n uint64) {
	if len(w.buf)+8 > cap(w.buf) {
		w.flush()
	}
	w.buf = binary.LittleEndian.AppendUint64(w.buf, n)
}

func (w *Writer) raw(p []byte) {
	for len(p) > 0 && w.err == nil {
		if len(w.buf) == cap(w.buf) {
			w.flush()
		}
		n := min(len(p), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, p[:n]...)
		p = p[n:]
	}
}

func (w *Writer) rawString(s string) {
	for len(s) > 0 && w.err == nil {
		if len(w.buf) == cap(w.buf) {
			w.flush()
		}
		n := min(len(s), cap(w.buf)-len(w.buf))
		w.buf = append(w.buf, s[:n]...)
		s = s[n:]
	}
}

func (w *Writer) flush() error {
	if w.err != nil {
		return w.err
	}
	if len(w.buf) > 0 {
		_, err := w.w.Write(w.buf)
		w.buf = w.buf[:0]
		if err != nil {
			w.err = fmt.Errorf("nar: write archive: %w", err)
		}
	}
	return w.err
}
