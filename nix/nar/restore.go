package nar

import (
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Restore recreates the NAR read from r at dest, like `nix-store --restore`
// (mirrors archive.cc restorePath in Nix 2.8.0). dest must not exist; its
// parent must. Directories are created with mode 0777 and regular files with
// 0666, both less the umask, and executable files then get every execute bit
// added, as Nix does. Symlinks are created verbatim and never followed.
//
// Every object below a directory root is created through an os.Root opened
// on dest, with O_EXCL, so nothing can be written outside dest even from a
// malicious archive. Restore reads r exactly to the end of the archive. On
// error the partial tree is left in place for the caller to remove. Nothing
// is synced to disk.
func Restore(r io.Reader, dest string) error {
	nr := NewReader(r)
	h, err := nr.Next()
	if err != nil {
		return fmt.Errorf("nar: restore %s: %w", dest, err)
	}
	bp := copyBufPool.Get().(*[]byte)
	defer copyBufPool.Put(bp)
	buf := *bp

	switch h.Type {
	case TypeRegular:
		// A plain open: os.OpenFile's poller set-up costs five system
		// calls, noticeable when adding many small paths.
		fd, err := syscall.Open(dest, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o666)
		if err != nil {
			return fmt.Errorf("nar: restore: %w", &os.PathError{Op: "open", Path: dest, Err: err})
		}
		f := os.NewFile(uintptr(fd), dest)
		if err := writeFile(f, nr, h, buf); err != nil {
			return fmt.Errorf("nar: restore %s: %w", dest, err)
		}
	case TypeSymlink:
		if err := os.Symlink(h.LinkTarget, dest); err != nil {
			return fmt.Errorf("nar: restore: %w", err)
		}
	case TypeDirectory:
		if err := os.Mkdir(dest, 0o777); err != nil {
			return fmt.Errorf("nar: restore: %w", err)
		}
		root, err := os.OpenRoot(dest)
		if err != nil {
			return fmt.Errorf("nar: restore: %w", err)
		}
		defer root.Close()
		for {
			h, err := nr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				return fmt.Errorf("nar: restore %s: %w", dest, err)
			}
			if err := restoreEntry(root, nr, h, buf); err != nil {
				return fmt.Errorf("nar: restore %s: %w", dest, err)
			}
		}
		return nil
	}
	// Consume the root's closing ")".
	if _, err := nr.Next(); err != io.EOF {
		if err == nil {
			err = errors.New("unexpected object after the root") // unreachable: the Reader ends the archive
		}
		return fmt.Errorf("nar: restore %s: %w", dest, err)
	}
	return nil
}

func restoreEntry(root *os.Root, nr *Reader, h *Header, buf []byte) error {
	switch h.Type {
	case TypeDirectory:
		return root.Mkdir(h.Path, 0o777)
	case TypeSymlink:
		return root.Symlink(h.LinkTarget, h.Path)
	case TypeRegular:
		f, err := root.OpenFile(h.Path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o666)
		if err != nil {
			return err
		}
		return writeFile(f, nr, h, buf)
	}
	return fmt.Errorf("unknown type %v", h.Type)
}

// writeFile copies the current file's contents from nr into f, sets the
// execute bits if needed, and closes f.
func writeFile(f *os.File, nr *Reader, h *Header, buf []byte) error {
	var w io.Writer = f
	if h.Size > writebackChunk {
		w = &writeback{f: f}
	}
	err := streamContents(w, nr, h.Size, buf)
	if err == nil && h.Executable {
		var fi os.FileInfo
		if fi, err = f.Stat(); err == nil {
			err = f.Chmod(fi.Mode().Perm() | 0o111)
		}
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %q: %w", h.Path, err)
	}
	return nil
}

// streamContents copies exactly size bytes from r to w, writing what each
// Read returns at once instead of filling buf first: when r is a pipe fed
// by a producer as busy as ferry (sshd decrypting a copy), keeping the
// pipe drained lets the two work at the same time. (copyContents fills the
// buffer: right for reading regular files.)
func streamContents(w io.Writer, r io.Reader, size int64, buf []byte) error {
	for size > 0 {
		b := buf
		if int64(len(b)) > size {
			b = b[:size]
		}
		n, err := r.Read(b)
		if n > 0 {
			if _, werr := w.Write(b[:n]); werr != nil {
				return werr
			}
			size -= int64(n)
		}
		if size > 0 && err == io.EOF {
			return io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			return err
		}
	}
	return nil
}

// writebackChunk is how often a big file being restored has its writeback
// started.
const writebackChunk = 8 << 20

// writeback writes to a file and asks the kernel to start writing each
// writebackChunk out as soon as it is complete (sync_file_range, which
// does not wait). Restoring a big NAR from the network then leaves little
// for a later fsync and never a gigabyte of dirty pages at once; without
// it a store that syncs before registering pays the whole write after the
// transfer instead of during it.
type writeback struct {
	f        *os.File
	off, syn int64
}

func (w *writeback) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	w.off += int64(n)
	if w.off-w.syn >= writebackChunk {
		unix.SyncFileRange(int(w.f.Fd()), w.syn, w.off-w.syn, unix.SYNC_FILE_RANGE_WRITE)
		w.syn = w.off
	}
	return n, err
}
