package export

import (
	"errors"
	"fmt"
	"io"
	"slices"

	"ferry/nix/nar"
	"ferry/nix/storepath"
	"ferry/nix/wire"
)

// Wire constants (export-import.cc).
const (
	// Magic follows each NAR: EXPORT_MAGIC, "NIXE" in little-endian ASCII.
	Magic = 0x4558494e
	// markerPath precedes each path; markerEnd ends the stream.
	markerPath = 1
	markerEnd  = 0
)

// Limits on what a Reader accepts.
const (
	// MaxPathLen bounds the path and deriver strings.
	MaxPathLen = 4096
	// MaxReferences bounds the number of references of one path.
	MaxReferences = 1 << 20
	// MaxSignatureLen bounds the ignored legacy signature.
	MaxSignatureLen = 1 << 20
)

// ErrFormat is wrapped by errors about a stream that is not an export
// stream: a bad marker, magic or path.
var ErrFormat = errors.New("malformed export stream")

// FormatError describes a malformed stream. It matches ErrFormat with
// errors.Is. Where Nix has a message for the case, Msg is Nix's.
type FormatError struct {
	Msg string
	Err error // underlying cause, e.g. from storepath; may be nil
}

func (e *FormatError) Error() string {
	if e.Err != nil {
		return e.Msg + ": " + e.Err.Error()
	}
	return e.Msg
}
func (e *FormatError) Is(target error) bool { return target == ErrFormat }
func (e *FormatError) Unwrap() error        { return e.Err }

// Info is the metadata of one exported path.
type Info struct {
	Path storepath.Path
	// References are the paths Path refers to (possibly itself). A Writer
	// writes them sorted and without duplicates; a Reader returns them so.
	References []storepath.Path
	// Deriver is the derivation that produced Path, or empty.
	Deriver storepath.Path
}

// sortedRefs returns refs sorted by base name without duplicates.
func sortedRefs(refs []storepath.Path) []storepath.Path {
	out := slices.Clone(refs)
	storepath.Sort(out)
	return slices.Compact(out)
}

// narCopier yields the raw bytes of one NAR read from src while a nar.Reader
// validates them. The nar.Reader reads through tee, which keeps what it read
// until Read hands it out; so nothing past the NAR's final ")" is consumed.
type narCopier struct {
	tee     teeReader
	nr      *nar.Reader
	scratch []byte
	done    bool
}

type teeReader struct {
	src io.Reader
	buf []byte // read from src, not yet handed out
	pos int
}

func (t *teeReader) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	t.buf = append(t.buf, p[:n]...)
	return n, err
}

func newNARCopier(src io.Reader, scratch []byte) *narCopier {
	c := &narCopier{tee: teeReader{src: src}, scratch: scratch}
	c.nr = nar.NewReader(&c.tee)
	return c
}

// Read returns NAR bytes, then io.EOF after the end of the archive.
func (c *narCopier) Read(p []byte) (int, error) {
	for {
		if t := &c.tee; t.pos < len(t.buf) {
			n := copy(p, t.buf[t.pos:])
			t.pos += n
			return n, nil
		}
		c.tee.buf, c.tee.pos = c.tee.buf[:0], 0
		if c.done {
			return 0, io.EOF
		}
		// Advance the parser by one step; whatever it reads lands in tee.
		n, err := c.nr.Read(c.scratch)
		if n > 0 || err == nil {
			continue
		}
		if err != io.EOF {
			return 0, err
		}
		if _, err := c.nr.Next(); err == io.EOF {
			c.done = true
		} else if err != nil {
			return 0, err
		}
	}
}

// size is the number of NAR bytes consumed so far.
func (c *narCopier) size() int64 { return c.nr.Offset() }

const scratchSize = 64 << 10

// Reader reads an export stream. Call Next to advance to a path, Read to
// read its NAR, and Info for its metadata. Errors are sticky. A Reader is not
// safe for concurrent use.
type Reader struct {
	wr      *wire.Reader
	dir     storepath.Dir
	cur     *narCopier // NAR of the current path; nil if none
	info    *Info      // metadata of the current path, once read
	narSize int64
	count   int
	end     bool
	err     error
	scratch []byte
}

// ReaderOptions configures a Reader. A nil *ReaderOptions means defaults.
type ReaderOptions struct {
	// StoreDir is the store directory paths must lie in; "" means
	// storepath.DefaultDir.
	StoreDir storepath.Dir
}

// NewReader returns a Reader on r.
func NewReader(r io.Reader, opts *ReaderOptions) *Reader {
	dir := storepath.DefaultDir
	if opts != nil && opts.StoreDir != "" {
		dir = opts.StoreDir
	}
	return &Reader{wr: wire.NewReader(r), dir: dir}
}

func (r *Reader) fail(err error) error {
	r.err = fmt.Errorf("read export: %w", err)
	return r.err
}

// Next advances to the next path, skipping the rest of the current one. It
// returns io.EOF after the end marker. A stream that ends without the end
// marker is an error wrapping io.ErrUnexpectedEOF.
func (r *Reader) Next() error {
	if r.err != nil {
		return r.err
	}
	if r.end {
		return io.EOF
	}
	if r.cur != nil {
		if _, err := r.Info(); err != nil {
			return err
		}
	}
	m, err := r.wr.ReadUint64()
	if err != nil {
		return r.fail(fmt.Errorf("marker after path %d: %w", r.count, wire.NoEOF(err)))
	}
	switch m {
	case markerEnd:
		r.end, r.info = true, nil
		return io.EOF
	case markerPath:
	default:
		return r.fail(&FormatError{Msg: fmt.Sprintf("input doesn't look like something created by 'nix-store --export' (marker %d)", m)})
	}
	if r.scratch == nil {
		r.scratch = make([]byte, scratchSize)
	}
	r.cur, r.info, r.narSize = newNARCopier(r.wr, r.scratch), nil, 0
	r.count++
	return nil
}

// Read reads the NAR of the current path, verbatim. It returns io.EOF at the
// end of the NAR, and an error if the NAR is malformed.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.cur == nil || r.info != nil {
		return 0, io.EOF
	}
	n, err := r.cur.Read(p)
	if err != nil && err != io.EOF {
		return n, r.fail(fmt.Errorf("path %d: %w", r.count, err))
	}
	return n, err
}

// NARSize returns the size of the current path's NAR, once Info has
// returned.
func (r *Reader) NARSize() int64 { return r.narSize }

// Info reads the metadata of the current path, after skipping whatever of
// its NAR was not read. It may be called more than once.
func (r *Reader) Info() (*Info, error) {
	if r.err != nil {
		return nil, r.err
	}
	if r.info != nil {
		return r.info, nil
	}
	if r.cur == nil {
		return nil, errors.New("read export: Info called before Next")
	}
	if _, err := io.Copy(io.Discard, r); err != nil {
		return nil, err
	}
	r.narSize = r.cur.size()
	info, err := r.readTrailer()
	if err != nil {
		return nil, r.fail(fmt.Errorf("path %d: %w", r.count, err))
	}
	r.info = info
	return info, nil
}

func (r *Reader) readTrailer() (*Info, error) {
	magic, err := r.wr.ReadUint64()
	if err != nil {
		return nil, fmt.Errorf("magic: %w", wire.NoEOF(err))
	}
	if magic != Magic {
		return nil, &FormatError{Msg: fmt.Sprintf("Nix archive cannot be imported; wrong format (magic %#x)", magic)}
	}
	var info Info
	s, err := r.wr.ReadString(MaxPathLen)
	if err != nil {
		return nil, fmt.Errorf("path: %w", wire.NoEOF(err))
	}
	if info.Path, err = r.parsePath(s); err != nil {
		return nil, err
	}
	refs, err := r.wr.ReadStrings(MaxReferences, MaxPathLen)
	if err != nil {
		return nil, fmt.Errorf("references of %s: %w", info.Path, wire.NoEOF(err))
	}
	for _, s := range refs {
		p, err := r.parsePath(s)
		if err != nil {
			return nil, fmt.Errorf("references of %s: %w", info.Path, err)
		}
		info.References = append(info.References, p)
	}
	info.References = sortedRefs(info.References)
	s, err = r.wr.ReadString(MaxPathLen)
	if err != nil {
		return nil, fmt.Errorf("deriver of %s: %w", info.Path, wire.NoEOF(err))
	}
	if s != "" {
		if info.Deriver, err = r.parsePath(s); err != nil {
			return nil, fmt.Errorf("deriver of %s: %w", info.Path, err)
		}
	}
	// Legacy signature: Nix reads the flag with readInt and skips a string
	// when it is 1; any other value means none.
	flag, err := r.wr.ReadInt()
	if err != nil {
		return nil, fmt.Errorf("signature flag of %s: %w", info.Path, wire.NoEOF(err))
	}
	if flag == 1 {
		b, err := r.wr.OpenBytes(MaxSignatureLen)
		if err == nil {
			err = b.Discard()
		}
		if err != nil {
			return nil, fmt.Errorf("signature of %s: %w", info.Path, wire.NoEOF(err))
		}
	}
	return &info, nil
}

func (r *Reader) parsePath(s string) (storepath.Path, error) {
	p, err := r.dir.Parse(s)
	if err != nil {
		return "", &FormatError{Msg: "invalid store path", Err: err}
	}
	return p, nil
}

// Writer writes an export stream. For each path call either WritePath, or
// StartPath, Write (the NAR) and FinishPath; then Close. Errors are sticky.
// A Writer is not safe for concurrent use.
type Writer struct {
	w       *wire.Writer
	inPath  bool
	closed  bool
	err     error
	scratch []byte
}

// NewWriter returns a Writer on w. Output is buffered until Close or Flush.
func NewWriter(w io.Writer) *Writer { return &Writer{w: wire.NewWriter(w)} }

func (w *Writer) fail(err error) error {
	if w.err == nil {
		w.err = fmt.Errorf("write export: %w", err)
	}
	return w.err
}

// StartPath writes the marker that starts a path; the NAR follows via Write.
func (w *Writer) StartPath() error {
	if w.err != nil {
		return w.err
	}
	if w.closed || w.inPath {
		return w.fail(errors.New("StartPath out of order"))
	}
	w.inPath = true
	if err := w.w.WriteUint64(markerPath); err != nil {
		return w.fail(err)
	}
	return nil
}

// Write writes NAR bytes of the current path verbatim. The caller is
// trusted to write exactly one well-formed NAR (e.g. with nar.Dump).
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if !w.inPath {
		return 0, w.fail(errors.New("Write outside a path"))
	}
	n, err := w.w.Write(p)
	if err != nil {
		return n, w.fail(err)
	}
	return n, nil
}

// FinishPath writes the metadata that ends the current path.
func (w *Writer) FinishPath(info *Info) error {
	if w.err != nil {
		return w.err
	}
	if !w.inPath {
		return w.fail(errors.New("FinishPath without StartPath"))
	}
	if info.Path == "" {
		return w.fail(errors.New("path is empty"))
	}
	w.inPath = false
	refs := make([]string, 0, len(info.References))
	for _, p := range sortedRefs(info.References) {
		refs = append(refs, string(p))
	}
	w.w.WriteUint64(Magic)
	w.w.WriteString(string(info.Path))
	w.w.WriteStrings(refs)
	w.w.WriteString(string(info.Deriver))
	if err := w.w.WriteUint64(0); err != nil {
		return w.fail(err)
	}
	return nil
}

// WritePath writes one path whose NAR is read from nar. The NAR is checked
// as it is copied, and nar must end with it.
func (w *Writer) WritePath(info *Info, nar io.Reader) error {
	if err := w.StartPath(); err != nil {
		return err
	}
	if w.scratch == nil {
		w.scratch = make([]byte, scratchSize)
	}
	c := newNARCopier(nar, w.scratch)
	if _, err := io.CopyBuffer(writerOnly{w.w}, c, make([]byte, 32<<10)); err != nil {
		return w.fail(fmt.Errorf("NAR of %s: %w", info.Path, err))
	}
	if n, _ := nar.Read(w.scratch[:1]); n > 0 {
		return w.fail(fmt.Errorf("NAR of %s: trailing data after the archive", info.Path))
	}
	return w.FinishPath(info)
}

// writerOnly hides ReadFrom so io.CopyBuffer uses the given buffer.
type writerOnly struct{ io.Writer }

// Flush writes buffered output to the underlying writer.
func (w *Writer) Flush() error {
	if w.err != nil {
		return w.err
	}
	if err := w.w.Flush(); err != nil {
		return w.fail(err)
	}
	return nil
}

// Close writes the end marker and flushes. It does not close the
// underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		return w.err
	}
	if w.inPath {
		return w.fail(errors.New("Close inside a path"))
	}
	if w.closed {
		return nil
	}
	w.closed = true
	w.w.WriteUint64(markerEnd)
	return w.Flush()
}
