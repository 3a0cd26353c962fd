package nar

import (
	"errors"
	"fmt"
	"io"
	"math"
)

// maxKeyword bounds the length of a token that must be a keyword. The
// longest keyword is "nix-archive-1" (13 bytes).
const maxKeyword = 16

// readerState says what the Reader consumes on the next call to Next.
type readerState uint8

const (
	rsStart      readerState = iota // before the magic
	rsContents                      // inside a regular file's contents
	rsNodeClosed                    // the current node's ")" has been read
	rsDir                           // inside a directory, before "entry" or ")"
	rsDone                          // the root node has been closed
)

// dirFrame is an open directory while reading or writing.
type dirFrame struct {
	path string // path of the directory ("" for the root)
	prev string // the last entry name seen in it
}

// A Reader reads a NAR sequentially. Next advances to the next file system
// object (depth first, in archive order) and Read reads the contents of the
// current regular file.
//
// A Reader reads from the underlying reader in exactly the chunks the format
// needs and never past the final ")" of the archive, which it consumes on the
// call to Next that returns io.EOF. It keeps no buffer of its own, so a
// caller reading many small tokens from an unbuffered source should wrap it
// in a bufio.Reader.
//
// Errors are sticky: after the first error every method returns it again.
// A Reader is not safe for concurrent use.
type Reader struct {
	r     io.Reader
	off   int64 // bytes consumed from r
	err   error
	state readerState
	stack []dirFrame
	cur   string // path of the current object

	remaining int64 // contents bytes not yet read by Read
	pad       int   // padding after the contents

	buf  [MaxTargetLen + 1 + 8]byte // one token with its padding
	skip []byte                     // lazily allocated, for skipping contents
}

// NewReader returns a Reader reading a NAR from r.
func NewReader(r io.Reader) *Reader {
	return &Reader{r: r}
}

// Offset returns the number of bytes the Reader has consumed from its
// underlying reader. After Next returns io.EOF it is the archive's size.
func (r *Reader) Offset() int64 { return r.off }

// Next advances to the next object in the archive and returns its header.
// Any unread contents of the previous regular file are skipped (and their
// padding checked). At the end of the archive Next returns io.EOF.
func (r *Reader) Next() (*Header, error) {
	if r.err != nil {
		return nil, r.err
	}
	h, err := r.next()
	if err != nil {
		r.err = err
		return nil, err
	}
	return h, nil
}

func (r *Reader) next() (*Header, error) {
	for {
		switch r.state {
		case rsStart:
			if err := r.expect(magic); err != nil {
				return nil, err
			}
			r.cur = ""
			return r.node("")
		case rsContents:
			if err := r.skipContents(); err != nil {
				return nil, err
			}
			if err := r.expect(")"); err != nil {
				return nil, err
			}
			r.state = rsNodeClosed
		case rsNodeClosed:
			if len(r.stack) == 0 {
				r.state = rsDone
				return nil, io.EOF
			}
			// Close the "entry (" around the node.
			if err := r.expect(")"); err != nil {
				return nil, err
			}
			r.state = rsDir
		case rsDir:
			top := &r.stack[len(r.stack)-1]
			r.cur = top.path
			start := r.off
			tok, err := r.keyword()
			if err != nil {
				return nil, err
			}
			switch tok {
			case ")":
				r.stack = r.stack[:len(r.stack)-1]
				r.state = rsNodeClosed
				continue
			case "entry":
			default:
				return nil, r.errorf(start, `expected "entry" or ")", got %q`, tok)
			}
			if err := r.expect("("); err != nil {
				return nil, err
			}
			if err := r.expect("name"); err != nil {
				return nil, err
			}
			start = r.off
			name, err := r.str(MaxNameLen, "entry name")
			if err != nil {
				return nil, err
			}
			if msg := checkName(name); msg != "" {
				return nil, r.errorf(start, "%s", msg)
			}
			if name <= top.prev {
				if name == top.prev {
					return nil, r.errorf(start, "duplicate entry name %q", name)
				}
				return nil, r.errorf(start, "unsorted entry name %q after %q", name, top.prev)
			}
			top.prev = name
			if len(r.stack) > MaxDepth {
				return nil, r.errorf(start, "entry %q nested deeper than %d directories", name, MaxDepth)
			}
			p := name
			if top.path != "" {
				p = top.path + "/" + name
			}
			r.cur = p
			if err := r.expect("node"); err != nil {
				return nil, err
			}
			return r.node(p)
		case rsDone:
			return nil, io.EOF
		}
	}
}

// node reads an object from its "(" up to its header and sets the state.
func (r *Reader) node(path string) (*Header, error) {
	if err := r.expect("("); err != nil {
		return nil, err
	}
	if err := r.expect("type"); err != nil {
		return nil, err
	}
	start := r.off
	typ, err := r.keyword()
	if err != nil {
		return nil, err
	}
	h := &Header{Path: path}
	switch typ {
	case "regular":
		h.Type = TypeRegular
		start = r.off
		tok, err := r.keyword()
		if err != nil {
			return nil, err
		}
		if tok == "executable" {
			h.Executable = true
			start = r.off
			n, err := r.uint64()
			if err != nil {
				return nil, err
			}
			if n != 0 {
				return nil, r.errorf(start, `"executable" marker has a non-empty value of %d bytes`, n)
			}
			start = r.off
			if tok, err = r.keyword(); err != nil {
				return nil, err
			}
		}
		if tok != "contents" {
			if h.Executable {
				return nil, r.errorf(start, `expected "contents", got %q`, tok)
			}
			return nil, r.errorf(start, `expected "executable" or "contents", got %q`, tok)
		}
		start = r.off
		n, err := r.uint64()
		if err != nil {
			return nil, err
		}
		if n > math.MaxInt64 {
			return nil, r.errorf(start, "file size %d is too large", n)
		}
		h.Size = int64(n)
		h.ContentOffset = r.off
		r.remaining = h.Size
		r.pad = padLen(n)
		r.state = rsContents
	case "symlink":
		h.Type = TypeSymlink
		if err := r.expect("target"); err != nil {
			return nil, err
		}
		start = r.off
		target, err := r.str(MaxTargetLen, "symlink target")
		if err != nil {
			return nil, err
		}
		if msg := checkTarget(target); msg != "" {
			return nil, r.errorf(start, "%s", msg)
		}
		h.LinkTarget = target
		if err := r.expect(")"); err != nil {
			return nil, err
		}
		r.state = rsNodeClosed
	case "directory":
		h.Type = TypeDirectory
		r.stack = append(r.stack, dirFrame{path: path})
		r.state = rsDir
	default:
		return nil, r.errorf(start, "unknown file type %q", typ)
	}
	return h, nil
}

// Read reads from the contents of the current regular file. It returns
// (0, io.EOF) at the end of the contents, or when the current object is not
// a regular file. Large reads go straight to the underlying reader.
func (r *Reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	if r.state != rsContents || r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n, err := r.r.Read(p)
	r.off += int64(n)
	r.remaining -= int64(n)
	if err == io.EOF {
		if r.remaining > 0 {
			err = r.truncated(r.off, fmt.Sprintf("file contents truncated with %d bytes missing", r.remaining))
		} else {
			err = nil
		}
	}
	if err != nil {
		r.err = r.readErr(err)
		return n, r.err
	}
	return n, nil
}

// skipContents discards unread contents and checks the padding.
func (r *Reader) skipContents() error {
	for r.remaining > 0 {
		if r.skip == nil {
			r.skip = make([]byte, 64<<10)
		}
		b := r.skip
		if int64(len(b)) > r.remaining {
			b = b[:r.remaining]
		}
		if err := r.full(b, "file contents"); err != nil {
			return err
		}
		r.remaining -= int64(len(b))
	}
	if r.pad > 0 {
		start := r.off
		b := r.buf[:r.pad]
		r.pad = 0
		if err := r.full(b, "padding"); err != nil {
			return err
		}
		if !allZero(b) {
			return r.errorf(start, "non-zero padding after file contents")
		}
	}
	return nil
}

// full reads exactly len(b) bytes.
func (r *Reader) full(b []byte, what string) error {
	start := r.off
	n, err := io.ReadFull(r.r, b)
	r.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return r.truncated(start, "archive truncated while reading "+what)
	}
	if err != nil {
		return r.readErr(err)
	}
	return nil
}

func (r *Reader) uint64() (uint64, error) {
	b := r.buf[:8]
	if err := r.full(b, "an integer"); err != nil {
		return 0, err
	}
	return uint64(b[0]) | uint64(b[1])<<8 | uint64(b[2])<<16 | uint64(b[3])<<24 |
		uint64(b[4])<<32 | uint64(b[5])<<40 | uint64(b[6])<<48 | uint64(b[7])<<56, nil
}

// str reads a string token of at most max bytes.
func (r *Reader) str(max int, what string) (string, error) {
	start := r.off
	n, err := r.uint64()
	if err != nil {
		return "", err
	}
	if n > uint64(max) {
		return "", r.errorf(start, "%s of %d bytes is longer than %d", what, n, max)
	}
	total := int(n) + padLen(n)
	b := r.buf[:total]
	if err := r.full(b, what); err != nil {
		return "", err
	}
	if !allZero(b[n:]) {
		return "", r.errorf(start+8+int64(n), "non-zero padding after %s", what)
	}
	return string(b[:n]), nil
}

// keyword reads a token that must be one of the format's keywords.
func (r *Reader) keyword() (string, error) {
	return r.str(maxKeyword, "token")
}

// expect reads a token and checks that it is want.
func (r *Reader) expect(want string) error {
	start := r.off
	tok, err := r.keyword()
	if err != nil {
		var fe *FormatError
		if errors.As(err, &fe) && fe.Err == ErrFormat && start == 0 && want == magic {
			fe.Msg = "not a NAR: " + fe.Msg
		}
		return err
	}
	if tok != want {
		if want == magic {
			return r.errorf(start, "not a NAR: bad magic %q", tok)
		}
		return r.errorf(start, "expected %q, got %q", want, tok)
	}
	return nil
}

func (r *Reader) errorf(off int64, format string, args ...any) error {
	return &FormatError{Offset: off, Path: r.cur, Msg: fmt.Sprintf(format, args...), Err: ErrFormat}
}

func (r *Reader) truncated(off int64, msg string) error {
	return &FormatError{Offset: off, Path: r.cur, Msg: msg, Err: io.ErrUnexpectedEOF}
}

func (r *Reader) readErr(err error) error {
	var fe *FormatError
	if errors.As(err, &fe) {
		return err
	}
	return fmt.Errorf("nar: read archive at offset %d: %w", r.off, err)
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
