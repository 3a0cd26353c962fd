//go:build linux

package nar

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"syscall"
	"unsafe"
)

// Dump on Linux walks a tree through directory file descriptors: each
// directory is opened once and read with getdents, and its entries are
// reached with openat and readlinkat on their bare names, so the kernel
// never resolves a long path and no os.File is made per file. The entry
// type comes from getdents (an lstat only where the file system does not
// report it), a regular file's size and mode from fstat on the open file,
// and small contents are read with one read straight into the output
// buffer. After the first few directories nothing is allocated per entry.

// dirLevel holds the sorted entries of one directory being dumped; a walker
// keeps one per depth and reuses it for each directory at that depth.
type dirLevel struct {
	names []byte   // the entries' names, each followed by a NUL
	ents  []dirEnt // the entries, sorted by name
	cur   int      // the index of the entry being dumped, for error paths
}

// dirEnt is one directory entry: names[off:off+n] and its d_type.
type dirEnt struct {
	off, n uint32
	typ    uint8
}

func (lv *dirLevel) name(e dirEnt) []byte { return lv.names[e.off : e.off+e.n] }

// cname is the name with its terminating NUL, for system calls.
func (lv *dirLevel) cname(e dirEnt) []byte { return lv.names[e.off : e.off+e.n+1] }

type walker struct {
	e       *emitter
	root    string
	levels  []*dirLevel
	dirents []byte // getdents buffer
	link    []byte // readlinkat buffer
	fr      fdReader
}

// statEveryEntry makes the walk ignore d_type, as on a file system that
// does not fill it in; for tests.
var statEveryEntry = false

// dirent64 layout: d_ino (8 bytes), d_off (8), d_reclen (2), d_type (1),
// then the NUL-terminated name.
const (
	direntReclen = 16
	direntType   = 18
	direntName   = 19
)

func dumpPath(e *emitter, path string) error {
	fi, err := os.Lstat(path)
	if err != nil {
		return fmt.Errorf("nar: dump: %w", err)
	}
	w := &walker{e: e, root: path}
	switch fi.Mode().Type() {
	case 0:
		fd, err := syscall.Open(path, fileFlags, 0)
		if err != nil {
			return w.fail("open", 0, err)
		}
		return w.file(fd, 0)
	case os.ModeSymlink:
		target, err := os.Readlink(path)
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		return w.symlink([]byte(target), 0)
	case os.ModeDir:
		fd, err := syscall.Open(path, dirFlags, 0)
		if err != nil {
			return w.fail("open", 0, err)
		}
		return w.dir(fd, 0)
	}
	return fmt.Errorf("nar: dump: file %q has an unsupported type", path)
}

const (
	// O_NONBLOCK: should a FIFO replace a regular file after getdents,
	// opening it must not hang; fstat then rejects it.
	fileFlags = syscall.O_RDONLY | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_NOCTTY | syscall.O_CLOEXEC
	dirFlags  = syscall.O_RDONLY | syscall.O_DIRECTORY | syscall.O_NOFOLLOW | syscall.O_CLOEXEC
)

// path returns the file system path of the object at depth: the root
// joined with the current entry of each directory above it. Only for
// error messages.
func (w *walker) path(depth int) string {
	var b strings.Builder
	b.WriteString(w.root)
	for _, lv := range w.levels[:depth] {
		b.WriteByte('/')
		b.Write(lv.name(lv.ents[lv.cur]))
	}
	return b.String()
}

func (w *walker) fail(op string, depth int, err error) error {
	return fmt.Errorf("nar: dump: %w", &os.PathError{Op: op, Path: w.path(depth), Err: err})
}

func (w *walker) level(depth int) *dirLevel {
	for len(w.levels) <= depth {
		w.levels = append(w.levels, new(dirLevel))
	}
	return w.levels[depth]
}

// file dumps the regular file open as fd, and closes it.
func (w *walker) file(fd, depth int) error {
	defer syscall.Close(fd)
	var st syscall.Stat_t
	if err := syscall.Fstat(fd, &st); err != nil {
		return w.fail("fstat", depth, err)
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFREG {
		return fmt.Errorf("nar: dump: file %q has an unsupported type", w.path(depth))
	}
	w.fr.fd = fd
	if err := w.e.regular(&w.fr, st.Size, st.Mode&0o100 != 0); err != nil {
		return fmt.Errorf("nar: dump %q: %w", w.path(depth), err)
	}
	w.e.token(tokClose)
	return nil
}

func (w *walker) symlink(target []byte, depth int) error {
	if msg := checkTarget(string(target)); msg != "" {
		return fmt.Errorf("nar: dump %q: %s", w.path(depth), msg)
	}
	w.e.token(tokSymlink)
	w.e.str(target)
	w.e.token(tokClose)
	return nil
}

// dir dumps the directory open as fd, and closes it.
func (w *walker) dir(fd, depth int) error {
	defer syscall.Close(fd)
	lv := w.level(depth)
	if err := w.readDir(fd, lv); err != nil {
		return w.fail("readdirent", depth, err)
	}
	// Bytewise, like Nix's std::map<std::string>.
	slices.SortFunc(lv.ents, func(a, b dirEnt) int { return bytes.Compare(lv.name(a), lv.name(b)) })
	w.e.token(tokDirectory)
	for i, ent := range lv.ents {
		lv.cur = i
		if depth+1 > MaxDepth {
			return fmt.Errorf("nar: dump %q: nested deeper than %d directories", w.path(depth+1), MaxDepth)
		}
		name := lv.name(ent)
		if len(name) > MaxNameLen {
			return fmt.Errorf("nar: dump %q: entry name of %d bytes is longer than %d", w.path(depth+1), len(name), MaxNameLen)
		}
		w.e.token(tokEntry)
		w.e.str(name)
		w.e.token(tokNode)
		if err := w.entry(fd, lv, ent, depth+1); err != nil {
			return err
		}
		w.e.token(tokClose)
		if w.e.err != nil {
			return fmt.Errorf("nar: dump %q: %w", w.path(depth+1), w.e.err)
		}
	}
	w.e.token(tokClose)
	return nil
}

// readDir reads the entries of the directory fd into lv, skipping . and ..
func (w *walker) readDir(fd int, lv *dirLevel) error {
	if w.dirents == nil {
		w.dirents = make([]byte, 32<<10)
	}
	lv.names, lv.ents, lv.cur = lv.names[:0], lv.ents[:0], 0
	for {
		n, err := syscall.ReadDirent(fd, w.dirents)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n <= 0 {
			return nil
		}
		for b := w.dirents[:n]; len(b) > 0; {
			if len(b) < direntName {
				return syscall.EIO
			}
			reclen := int(binary.NativeEndian.Uint16(b[direntReclen:]))
			if reclen < direntName || reclen > len(b) {
				return syscall.EIO
			}
			typ, name := b[direntType], b[direntName:reclen]
			if statEveryEntry {
				typ = syscall.DT_UNKNOWN
			}
			b = b[reclen:]
			if i := bytes.IndexByte(name, 0); i >= 0 {
				name = name[:i]
			}
			if len(name) == 0 || string(name) == "." || string(name) == ".." {
				continue
			}
			lv.ents = append(lv.ents, dirEnt{off: uint32(len(lv.names)), n: uint32(len(name)), typ: typ})
			lv.names = append(lv.names, name...)
			lv.names = append(lv.names, 0)
		}
	}
}

// entry dumps the node of entry ent, at depth, of the directory dirfd.
func (w *walker) entry(dirfd int, lv *dirLevel, ent dirEnt, depth int) error {
	typ := ent.typ
	if typ == syscall.DT_UNKNOWN {
		fi, err := os.Lstat(w.path(depth))
		if err != nil {
			return fmt.Errorf("nar: dump: %w", err)
		}
		switch fi.Mode().Type() {
		case 0:
			typ = syscall.DT_REG
		case os.ModeDir:
			typ = syscall.DT_DIR
		case os.ModeSymlink:
			typ = syscall.DT_LNK
		}
	}
	switch typ {
	case syscall.DT_REG:
		fd, err := openat(dirfd, lv.cname(ent), fileFlags)
		if err != nil {
			return w.fail("open", depth, err)
		}
		return w.file(fd, depth)
	case syscall.DT_DIR:
		fd, err := openat(dirfd, lv.cname(ent), dirFlags)
		if err != nil {
			return w.fail("open", depth, err)
		}
		return w.dir(fd, depth)
	case syscall.DT_LNK:
		if w.link == nil {
			w.link = make([]byte, MaxTargetLen+1)
		}
		n, err := readlinkat(dirfd, lv.cname(ent), w.link)
		if err != nil {
			return w.fail("readlink", depth, err)
		}
		if n >= len(w.link) {
			return fmt.Errorf("nar: dump %q: symlink target is longer than %d bytes", w.path(depth), MaxTargetLen)
		}
		return w.symlink(w.link[:n], depth)
	}
	return fmt.Errorf("nar: dump: file %q has an unsupported type", w.path(depth))
}

// openat and readlinkat take a NUL-terminated name, so that the walk does
// not allocate a C string per entry as syscall's string wrappers would.
func openat(dirfd int, cname []byte, flags int) (int, error) {
	for {
		r, _, errno := syscall.Syscall6(syscall.SYS_OPENAT, uintptr(dirfd), uintptr(unsafe.Pointer(&cname[0])), uintptr(flags), 0, 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			return -1, errno
		}
		return int(r), nil
	}
}

func readlinkat(dirfd int, cname, buf []byte) (int, error) {
	for {
		r, _, errno := syscall.Syscall6(syscall.SYS_READLINKAT, uintptr(dirfd), uintptr(unsafe.Pointer(&cname[0])), uintptr(unsafe.Pointer(&buf[0])), uintptr(len(buf)), 0, 0)
		if errno == syscall.EINTR {
			continue
		}
		if errno != 0 {
			return 0, errno
		}
		return int(r), nil
	}
}

// fdReader reads a raw file descriptor.
type fdReader struct{ fd int }

func (r *fdReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		n, err := syscall.Read(r.fd, p)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n == 0 {
			return 0, io.EOF
		}
		return n, nil
	}
}
