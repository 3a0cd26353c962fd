package localstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"ferry/internal/storefs"
	"ferry/nix/hash"
	"ferry/nix/nar"
)

// copyChunk is the unit of the copy pipeline: the copier hands the hasher
// one chunk while it copies the next, and starts the chunk's writeback.
const copyChunk = 8 << 20

// copyRegular copies the regular file src to a temporary name, computing
// its NAR hash and size, and feeding its contents to content and its NAR
// to narExtra when they are not nil.
//
// Two goroutines overlap the work: one copies src to the temporary in
// chunks (copy_file_range, so the data never passes through user space)
// and starts each chunk's writeback (even with NoSync: a gigabyte of dirty
// pages slows everything after); the other reads every
// chunk back from the temporary, once it is complete, and hashes it. So
// the hash is of exactly the bytes that will be installed, even if src
// changes meanwhile (a src that shrinks is an error), and the time is the
// slower of the copy and the hash rather than their sum, with little left
// for the final fsync.
func (s *Store) copyRegular(ctx context.Context, src string, content, narExtra io.Writer) (tmp string, narHash hash.Hash, narSize uint64, err error) {
	in, err := os.Open(src)
	if err != nil {
		return "", narHash, 0, err
	}
	defer in.Close()
	st, err := in.Stat()
	if err != nil {
		return "", narHash, 0, err
	}
	if !st.Mode().IsRegular() {
		return "", narHash, 0, fmt.Errorf("flat hashing needs a regular file")
	}
	tmp, err = s.newTemp(ctx)
	if err != nil {
		return "", narHash, 0, err
	}
	exec := st.Mode()&0o100 != 0
	mode := os.FileMode(0o644)
	if exec {
		mode = 0o755
	}
	out, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return "", narHash, 0, err
	}
	size := st.Size()
	progress := make(chan int64, 4)
	stop := make(chan struct{})
	copyErr := make(chan error, 1)
	go func() {
		defer close(progress)
		copyErr <- copyRange(ctx, out, in, size, progress, stop)
	}()
	ch := &countingHash{h: sha256.New()}
	var narW io.Writer = ch
	if narExtra != nil {
		narW = io.MultiWriter(ch, narExtra)
	}
	var r io.Reader = &followReader{f: out, progress: progress}
	if content != nil {
		r = io.TeeReader(r, content)
	}
	err = nar.DumpRegular(narW, r, size, exec)
	close(stop)
	for range progress {
	}
	if cerr := <-copyErr; cerr != nil {
		err = cerr // the root cause of a short read
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		storefs.Delete(tmp)
		return "", narHash, 0, err
	}
	return tmp, hash.FromHasher(hash.SHA256, ch.h), ch.n, nil
}

// copyRange copies the first size bytes of in to out in chunks, sending
// the number of bytes complete after each chunk. It stops early when stop
// is closed.
func copyRange(ctx context.Context, out, in *os.File, size int64, progress chan<- int64, stop <-chan struct{}) error {
	var buf []byte // only for the read/write fallback
	kernel := true
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return err
		}
		want := min(size-off, copyChunk)
		var n int64
		for n < want {
			var k int
			var err error
			if kernel {
				inOff, outOff := off+n, off+n
				k, err = unix.CopyFileRange(int(in.Fd()), &inOff, int(out.Fd()), &outOff, int(want-n), 0)
				if err != nil && n == 0 && (errors.Is(err, unix.EXDEV) || errors.Is(err, unix.EINVAL) ||
					errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EOPNOTSUPP)) {
					kernel = false
					continue
				}
			} else {
				if buf == nil {
					buf = make([]byte, 1<<20)
				}
				k, err = in.ReadAt(buf[:min(int64(len(buf)), want-n)], off+n)
				if k > 0 {
					if _, werr := out.WriteAt(buf[:k], off+n); werr != nil {
						return werr
					}
				}
				if errors.Is(err, io.EOF) {
					err = nil
				}
			}
			if err != nil {
				return fmt.Errorf("copy: %w", err)
			}
			if k == 0 {
				return fmt.Errorf("copy: the file shrank while it was being added (%d of %d bytes)", off+n, size)
			}
			n += int64(k)
		}
		unix.SyncFileRange(int(out.Fd()), off, n, unix.SYNC_FILE_RANGE_WRITE)
		off += n
		select {
		case progress <- off:
		case <-stop:
			return nil
		}
	}
	return nil
}

// followReader reads a file that is still being written, up to the last
// offset received from progress; it ends when progress is closed.
type followReader struct {
	f        *os.File
	progress <-chan int64
	off, end int64
}

func (r *followReader) Read(p []byte) (int, error) {
	for r.off >= r.end {
		end, ok := <-r.progress
		if !ok {
			return 0, io.ErrUnexpectedEOF // copyRange says why
		}
		r.end = end
	}
	n, err := r.f.ReadAt(p[:min(int64(len(p)), r.end-r.off)], r.off)
	r.off += int64(n)
	if errors.Is(err, io.EOF) && n > 0 {
		err = nil
	}
	return n, err
}
