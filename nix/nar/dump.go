package nar

import (
	"fmt"
	"io"
	"os"
	"slices"
	"sync"
	"syscall"
)

// copyBufSize is the size of the buffers Dump and Restore stream file
// contents through: large enough that hashing a big file is not dominated
// by system calls.
const copyBufSize = 1 << 20

var copyBufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// Dump writes the NAR serialisation of the file system object at path to w,
// byte-identical to `nix-store --dump path` (mirrors archive.cc dump in Nix
// 2.8.0): objects are read with lstat, symlinks are not followed, a regular
// file is executable iff its owner execute bit is set, directory entries are
// sorted bytewise, and any other file type is an error. File contents are
// streamed through one reused buffer, so memory use does not depend on file
// sizes.
func Dump(w io.Writer, path string) error {
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	d := dumper{nw: NewWriter(w), buf: *bp}
	if err := d.dump(path, ""); err != nil {
		return err
	}
	return d.nw.Close()
}

type dumper struct {
	nw  *Writer
	buf []byte
}

func (d *dumper) dump(fsPath, narPath string) error {
	fi, err := os.Lstat(fsPath)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	switch mode := fi.Mode(); mode.Type() {
	case 0:
		return d.file(fsPath, narPath, fi.Size(), mode&0o100 != 0)
	case os.ModeSymlink:
		target, err := os.Readlink(fsPath)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		return d.header(fsPath, &Header{Path: narPath, Type: TypeSymlink, LinkTarget: target})
	case os.ModeDir:
		f, err := os.Open(fsPath)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		names, err := f.Readdirnames(-1)
		f.Close()
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		slices.Sort(names) // bytewise, like Nix's std::map<std::string>
		if err := d.header(fsPath, &Header{Path: narPath, Type: TypeDirectory}); err != nil {
			return err
		}
		for _, name := range names {
			child := name
			if narPath != "" {
				child = narPath + "/" + name
			}
			if err := d.dump(fsPath+"/"+name, child); err != nil {
				return err
			}
		}
		return nil
	default:
		return fmt.Errorf("nar: dump: file %q has an unsupported type", fsPath)
	}
}

func (d *dumper) header(fsPath string, h *Header) error {
	if err := d.nw.WriteHeader(h); err != nil {
		return fmt.Errorf("nar: dump %q: %w", fsPath, err)
	}
	return nil
}

func (d *dumper) file(fsPath, narPath string, size int64, exec bool) error {
	// O_NOFOLLOW: the object was a regular file at lstat time; refuse to
	// read through a symlink swapped in since.
	f, err := os.OpenFile(fsPath, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	defer f.Close()
	if err := d.header(fsPath, &Header{Path: narPath, Type: TypeRegular, Executable: exec, Size: size}); err != nil {
		return err
	}
	if err := copyContents(d.nw, f, size, d.buf); err != nil {
		return fmt.Errorf("nar: dump %q: %w", fsPath, err)
	}
	return nil
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
